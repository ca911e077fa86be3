"""Thumbnails: one PNG per series, windowed from its first instance's pixel data."""

from __future__ import annotations

import io
import logging

import pydicom
from django.db import transaction

from studies.dicom.render import thumbnail_png
from studies.models import Blob, Instance, Series
from studies.storage.blobs import blob_read, blob_write

logger = logging.getLogger(__name__)


@transaction.atomic
def series_thumbnail_make(*, series: Series) -> Series:
    """Render and store the series thumbnail (encrypted like every blob). Idempotent: a series that has one keeps
    it. A series whose first instance has no pixels (a report, say) gets none, which is not an error."""
    series = Series.objects.select_for_update().get(pk=series.pk)
    if series.thumbnail_id is not None:
        return series
    instance = (
        Instance.objects.filter(series=series, rows__isnull=False)
        .select_related("blob")
        .order_by("instance_number", "pk")
        .first()
    )
    if instance is None:
        return series
    dataset = pydicom.dcmread(io.BytesIO(blob_read(blob=instance.blob)))
    try:
        png = thumbnail_png(dataset)
    except (ValueError, AttributeError, NotImplementedError, RuntimeError) as exc:
        logger.warning("no thumbnail for series %s: %s", series.public_id, exc.__class__.__name__)
        return series
    series.thumbnail = blob_write(kind=Blob.Kind.THUMBNAIL, data=png)
    series.save(update_fields=["thumbnail", "updated_at"])
    return series
