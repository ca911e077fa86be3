"""STOW-RS with content that lies about itself (issue 8 #7, #8): integers out of range, pixel data that cannot be
decoded, and a fault of our own inside the pipeline. Each is a failed SOP with its reason and an item rejected
with a failure class, never a 500 and never an item left waiting.

Real PostgreSQL with real commits; the pipeline runs eagerly when the request's receipt commits.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.events import EventType
from studies.dicom.synthetic import make_instance
from studies.dicomweb import stow
from studies.models import IngestItem, Instance, Patient, Series, Study
from studies.services import ingest as ingest_service
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import (
    FAILURE_REASON,
    REFERENCED_SOP_INSTANCE,
    comment,
    failed,
    post_parts,
    referenced,
    value,
)
from tests.studies.hostile_dicom import (
    TEN_TO_THE_20,
    bits_stored_over_allocated,
    longer_pixel_data,
    odd_columns_ybr_422,
    out_of_range,
    zero_jpeg_fragment,
)
from tests.tenants.helpers import last_event

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:The value length"),
]

URL = "/dicomweb/north/studies"


def the_item(tenant) -> IngestItem:
    with tenant_scope(tenant):
        return IngestItem.objects.get()


@pytest.mark.parametrize(
    ("keyword", "number", "name"),
    [
        ("InstanceNumber", TEN_TO_THE_20, "Instance Number"),
        ("InstanceNumber", f"-{TEN_TO_THE_20}", "Instance Number"),
        ("SeriesNumber", TEN_TO_THE_20, "Series Number"),
        ("SeriesNumber", f"-{TEN_TO_THE_20}", "Series Number"),
        ("AcquisitionNumber", "2147483648", "Acquisition Number"),
        ("NumberOfFrames", TEN_TO_THE_20, "Number of Frames"),
    ],
)
def test_an_integer_out_of_range_fails_with_its_reason_not_a_500(
    api_client_for, tenant_a, radiologist_a, keyword, number, name
):
    data = out_of_range(keyword, number)

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [data])

    assert response.status_code == 409
    [part] = failed(response.json())
    assert value(part, REFERENCED_SOP_INSTANCE) == stow.identify(data).sop_instance_uid
    assert value(part, FAILURE_REASON) == stow.FAILURE_DOES_NOT_MATCH_SOP_CLASS
    assert name in comment(part)
    assert "range" in comment(part)
    item = the_item(tenant_a)
    assert (item.state, item.failure) == (IngestItem.State.REJECTED, IngestItem.Failure.INVALID)
    assert last_event(tenant_a, EventType.INGEST_REJECTED).outcome_description == item.reason
    with tenant_scope(tenant_a):
        # Nothing half-written: no patient, study, series or instance row from the refused object.
        assert not Instance.objects.exists()
        assert not Series.objects.exists()
        assert not Study.objects.exists()
        assert not Patient.objects.exists()


def test_one_refused_part_leaves_the_good_ones_stored(api_client_for, tenant_a, radiologist_a):
    good = make_instance()

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [good, out_of_range("SeriesNumber")])

    assert response.status_code == 202
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(response.json())] == [
        stow.identify(good).sop_instance_uid
    ]
    assert "Series Number" in comment(failed(response.json())[0])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (zero_jpeg_fragment, "is not a JPEG Baseline (Process 1) codestream"),
        (bits_stored_over_allocated, "Bits Stored must be from 1 to Bits Allocated"),
        (odd_columns_ybr_422, "needs an even number of Columns"),
        (longer_pixel_data, "where its attributes describe"),
    ],
    ids=["jpeg-fragment-of-zeros", "bits-stored-over-allocated", "odd-columns-ybr-422", "pixel-data-too-long"],
)
def test_pixel_data_that_cannot_be_decoded_is_refused_at_ingest_with_a_reason(
    api_client_for, tenant_a, radiologist_a, make, reason
):
    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [make()])

    assert response.status_code == 409
    [part] = failed(response.json())
    assert value(part, FAILURE_REASON) == stow.FAILURE_DOES_NOT_MATCH_SOP_CLASS
    assert reason in comment(part)
    item = the_item(tenant_a)
    assert (item.state, item.failure) == (IngestItem.State.REJECTED, IngestItem.Failure.INVALID)


def test_an_unexpected_error_inside_the_pipeline_rejects_the_item_as_internal(
    api_client_for, tenant_a, radiologist_a, monkeypatch
):
    def broken_index(**kwargs):
        raise RuntimeError("a fault nobody foresaw")

    monkeypatch.setattr(ingest_service, "_series_create", broken_index)
    data = make_instance()

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [data])

    assert response.status_code == 409
    [part] = failed(response.json())
    assert value(part, FAILURE_REASON) == stow.FAILURE_PROCESSING
    assert "internal error" in comment(part)
    assert "a fault nobody foresaw" not in comment(part)  # the class, never the message, is shown
    item = the_item(tenant_a)
    assert (item.state, item.failure) == (IngestItem.State.REJECTED, IngestItem.Failure.INTERNAL)
    assert item.quarantine_id is not None  # kept for review
    assert item.finished_at is not None
    with tenant_scope(tenant_a):
        assert not Instance.objects.exists()
    assert last_event(tenant_a, EventType.INGEST_REJECTED).extra["ingest_item"] == str(item.public_id)


def test_an_item_claimed_too_often_is_given_up_as_internal(tenant_a, settings, monkeypatch):
    """A worker that dies on an object (killed, out of memory) leaves it `processing`; the sweeper hands it to the
    next one. After INGEST_MAX_ATTEMPTS claims it is rejected instead of being handed on for ever."""
    from studies.tasks import ingest_process_task

    monkeypatch.setattr(ingest_process_task, "delay_on_commit", lambda **kwargs: None)  # receipt only
    with tenant_scope(tenant_a):
        item = ingest_service.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=make_instance())
        stale = timezone.now() - timedelta(seconds=settings.INGEST_STALE_SECONDS + 1)
        IngestItem.objects.filter(pk=item.pk).update(
            state=IngestItem.State.PROCESSING, attempts=settings.INGEST_MAX_ATTEMPTS, claimed_at=stale
        )

        ingest_service.ingest_process(item_id=item.pk)

        item.refresh_from_db()
        assert (item.state, item.failure) == (IngestItem.State.REJECTED, IngestItem.Failure.INTERNAL)
        assert f"after {settings.INGEST_MAX_ATTEMPTS} attempts" in item.reason
        assert not Instance.objects.exists()
