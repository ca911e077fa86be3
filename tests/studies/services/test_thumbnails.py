"""The series thumbnail is drawn before its row is locked (the ingest worker's batch updates that row's counts and
must not wait on a picture being decrypted and drawn), and two runs for one series leave one thumbnail."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from pydicom.uid import generate_uid

from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import Blob, Series
from studies.services import thumbnails
from studies.storage.blobs import BlobUnreadable
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import ingest_files

pytestmark = pytest.mark.django_db(transaction=True)  # two connections: each sees what the other committed


def _series_without_thumbnail(tenant, instances: int = 2) -> Series:
    study_uid, series_uid = generate_uid(), generate_uid()
    ingest_files(tenant, [make_instance(study_uid=study_uid, series_uid=series_uid, instance_number=n + 1,
                                        sop_uid=generate_uid()) for n in range(instances)])  # fmt: skip
    with tenant_scope(tenant):
        series = Series.objects.get(series_instance_uid=series_uid)
        Blob.objects.filter(pk=series.thumbnail_id).delete()  # made on ingest; this test makes its own
        Series.objects.filter(pk=series.pk).update(thumbnail=None)
        return Series.objects.get(pk=series.pk)


def _in_another_connection(tenant, work) -> object:
    """`work()` in a thread of its own (its own database connection), inside `tenant`'s scope; its result, or the
    exception it raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            with tenant_scope(tenant):
                outcome.append(work())
        except BaseException as exc:  # reported to the test's thread
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert outcome, "the other connection did not finish"
    return outcome[0]


def test_the_series_row_is_not_locked_while_the_picture_is_drawn(tenant_a, monkeypatch):
    series = _series_without_thumbnail(tenant_a)
    drawn = thumbnails.thumbnail_png
    seen: list[object] = []

    def lock_taken_elsewhere() -> bool:
        with transaction.atomic():
            Series.objects.select_for_update(nowait=True).get(pk=series.pk)  # raises if the row is locked
        return True

    def drawing(dataset):
        seen.append(_in_another_connection(tenant_a, lock_taken_elsewhere))
        return drawn(dataset)

    monkeypatch.setattr(thumbnails, "thumbnail_png", drawing)
    with tenant_scope(tenant_a):
        made = services.series_thumbnail_make(series=series)

    assert seen == [True], seen  # on the row lock held while drawing: DatabaseError (could not obtain lock)
    assert made.thumbnail_id is not None
    with tenant_scope(tenant_a):
        assert Series.objects.get(pk=series.pk).thumbnail_id == made.thumbnail_id


def test_a_thumbnail_made_by_another_run_meanwhile_is_kept_and_none_is_written_twice(tenant_a, monkeypatch):
    series = _series_without_thumbnail(tenant_a)
    drawn = thumbnails.thumbnail_png
    other: list[object] = []

    def drawing(dataset):
        if not other:  # the first drawing: another run for the same series starts and finishes meanwhile
            other.append(None)
            other[0] = _in_another_connection(tenant_a, lambda: services.series_thumbnail_make(series=series))
        return drawn(dataset)

    monkeypatch.setattr(thumbnails, "thumbnail_png", drawing)
    with tenant_scope(tenant_a):
        made = services.series_thumbnail_make(series=series)
        thumbnails_stored = list(Blob.objects.filter(kind=Blob.Kind.THUMBNAIL).values_list("pk", flat=True))

    assert isinstance(other[0], Series), other
    assert other[0].thumbnail_id is not None
    assert made.thumbnail_id == other[0].thumbnail_id  # the first one's, kept
    assert thumbnails_stored == [made.thumbnail_id]  # and no second picture written


def test_an_instance_whose_copies_are_unreadable_is_passed_over(tenant_a, monkeypatch):
    series = _series_without_thumbnail(tenant_a)
    read = thumbnails.blob_read
    tried: list[int] = []

    def reading(*, blob):
        tried.append(blob.pk)
        if len(tried) == 1:
            raise BlobUnreadable("both copies fail their hash check")
        return read(blob=blob)

    monkeypatch.setattr(thumbnails, "blob_read", reading)
    with tenant_scope(tenant_a):
        made = services.series_thumbnail_make(series=series)

    assert len(tried) == 2
    assert made.thumbnail_id is not None
