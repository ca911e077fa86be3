"""Thumbnails: one PNG per series, windowed from the pixel data of its first instance that can be drawn."""

from __future__ import annotations

import io
import logging

import pydicom
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from pydicom.errors import InvalidDicomError

from studies.dicom.render import RenderError, thumbnail_png
from studies.models import Blob, Instance, Series
from studies.storage.blobs import BlobUnreadable, blob_read, blob_write
from tenants.db.base import prepared_statements

logger = logging.getLogger(__name__)


# How many instances of a series are tried before it is left without a thumbnail.
THUMBNAIL_CANDIDATES = 20


def series_thumbnail_make(*, series: Series) -> Series:
    """Render and store the series thumbnail (encrypted like every blob). Idempotent: a series that has one keeps
    it. The first instance (in instance-number order) that can be drawn is used: one without pixels, or whose
    pixels cannot be decoded, is passed over, so one bad instance never leaves its series without a thumbnail.
    A series with nothing to draw gets none, which is not an error.

    Drawn before the series row is locked, which it is only to record the thumbnail: the ingest worker's batch
    updates the same row's counts, and waited while an instance was decrypted, decoded and drawn (py-spy of a
    STOW-RS run, session 7: 154 samples of the worker waiting on that lock in one set). Two runs for one series
    both draw; the second to lock finds the first's thumbnail and writes nothing.

    The row's thumbnail is recorded by an UPDATE, as the ingest worker records its counts: pipeline bookkeeping,
    not a change a person makes, so it has no django-auditlog entry (issue 10; the thumbnail's blob row, like every
    blob's, has none either: AUDITLOG_EXCLUDE_TRACKING_MODELS). With the entry, its seal and the series read
    twice, a thumbnail took 12 statements; now 6, prepared (docs/BENCHMARKS.md, session 15)."""
    # The same few statements for every series: parsed and planned once per connection (tenants.db).
    with prepared_statements():
        series = Series.objects.select_related("study").get(pk=series.pk)
    if series.thumbnail_id is not None:
        return series
    png = _thumbnail_drawn(series)
    if png is None:
        return series
    with transaction.atomic():
        with prepared_statements():
            thumbnail_id = Series.objects.select_for_update().values_list("thumbnail_id", flat=True).get(pk=series.pk)
        if thumbnail_id is not None:
            series.thumbnail_id = thumbnail_id
            return series
        # Wrapped by the study's key: a thumbnail is a picture of the patient and goes with the study.
        series.thumbnail = blob_write(
            kind=Blob.Kind.THUMBNAIL, data=png, study_instance_uid=series.study.study_instance_uid
        )
        series.updated_at = timezone.now()
        with prepared_statements():
            Series.objects.filter(pk=series.pk).update(thumbnail=series.thumbnail, updated_at=series.updated_at)
        return series


def thumbnail_candidates(series: Series) -> QuerySet[Instance]:
    """The instances tried for `series`' thumbnail, in order, with their blobs."""
    return (
        Instance.objects.filter(series=series, rows__isnull=False)
        .select_related("blob")
        .order_by("instance_number", "pk")[:THUMBNAIL_CANDIDATES]
    )


def _thumbnail_drawn(series: Series) -> bytes | None:
    """The PNG of the first of the series' instances that can be drawn (THUMBNAIL_CANDIDATES tried), or None."""
    with prepared_statements():
        candidates = list(thumbnail_candidates(series))
    for instance in candidates:
        try:
            dataset = pydicom.dcmread(io.BytesIO(blob_read(blob=instance.blob)))
            return thumbnail_png(dataset)
        except (
            BlobUnreadable,
            RenderError,
            InvalidDicomError,
            ValueError,
            AttributeError,
            KeyError,
            EOFError,
            OSError,
        ) as exc:
            logger.warning(
                "instance %s cannot be drawn for the thumbnail of series %s (%s)",
                instance.public_id,
                series.public_id,
                exc.__class__.__name__,
            )
    return None
