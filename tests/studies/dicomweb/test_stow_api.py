"""STOW-RS, POST /dicomweb/<tenant>/studies[/{study}]: every instance through the one pipeline, and the Store
Instances Response Module back (PS3.18 10.5, Annex I).

Real PostgreSQL with real commits (transaction=True): the pipeline's task is queued on commit and runs eagerly,
so by the time the request polls, each item has its verdict, as a quick worker would give it.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom.uid import generate_uid

from audit.events import EventType
from audit.models import SecurityAlert
from studies.dicom.parse import InvalidDicom
from studies.dicom.synthetic import make_instance, make_study
from studies.dicomweb import stow
from studies.models import IngestItem, Instance, Study
from studies.scanning import eicar_test_bytes
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import (
    CONTENT_TYPE,
    FAILURE_REASON,
    REFERENCED_SOP_CLASS,
    REFERENCED_SOP_INSTANCE,
    RETRIEVE_URL,
    WARNING_REASON,
    comment,
    failed,
    multipart,
    post_parts,
    referenced,
    value,
)
from tests.tenants.helpers import events, last_event, problem

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/dicomweb/north/studies"
DICOM_JSON = "application/dicom+json"


def items(tenant):
    with tenant_scope(tenant):
        return list(IngestItem.objects.order_by("pk"))


def sop_uids(data: bytes) -> tuple[str, str]:
    identity = stow.identify(data)
    return identity.sop_class_uid, identity.sop_instance_uid


def test_a_two_series_study_is_stored_indexed_and_answered(api_client_for, tenant_a, radiologist_a):
    files = make_study(series=2, instances_per_series=3)
    study_uid = stow.identify(files[0]).study_instance_uid

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, files)

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == DICOM_JSON
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    study_url = f"http://testserver/dicomweb/north/studies/{study_uid}"  # the address the client reached
    assert value(body, RETRIEVE_URL) == study_url
    assert failed(body) == []
    refs = referenced(body)
    assert [(value(r, REFERENCED_SOP_CLASS), value(r, REFERENCED_SOP_INSTANCE)) for r in refs] == [
        sop_uids(f) for f in files
    ]
    for ref, data in zip(refs, files, strict=True):
        identity = stow.identify(data)
        assert value(ref, RETRIEVE_URL) == (
            f"{study_url}/series/{identity.series_instance_uid}/instances/{identity.sop_instance_uid}"
        )
        assert WARNING_REASON not in ref
    with tenant_scope(tenant_a):
        study = Study.objects.get(study_instance_uid=study_uid)
        assert (study.number_of_series, study.number_of_instances) == (2, 6)
        assert Instance.objects.filter(series__study=study).count() == 6
    received = items(tenant_a)
    assert {(i.state, i.source, i.actor_id) for i in received} == {
        (IngestItem.State.STORED, IngestItem.Source.STOWRS, radiologist_a.pk)
    }
    assert len({i.batch for i in received}) == 1  # one request, one batch
    # The request's parts are recorded together, so the worker stores them as one batch: one Instances
    # Transferred event for the study, listing all six.
    stored = events(tenant_a, EventType.INSTANCES_STORED)
    assert len(stored) == 1
    assert {e.actor_user_id for e in stored} == {radiologist_a.pk}
    assert {e.extra["source"] for e in stored} == {"stowrs"}
    assert stored[0].extra["count"] == 6
    (study_entry,) = [p for p in stored[0].participants if p.get("id") == study_uid]
    assert sorted(study_entry["detail"]["instances"]) == sorted(sop_uids(f)[1] for f in files)


def test_good_truncated_and_non_dicom_parts_give_202_with_reasons(api_client_for, tenant_a, technologist_a):
    good, whole = make_study(series=1, instances_per_series=2)
    truncated = whole[:-500]
    not_dicom = b"%PDF-1.4 this is a report, not an image\n" * 20

    response = post_parts(api_client_for(technologist_a, tenant_a), URL, [good, truncated, not_dicom])

    assert response.status_code == 202, response.content
    body = response.json()
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(body)] == [sop_uids(good)[1]]
    cut, junk = failed(body)
    assert value(cut, REFERENCED_SOP_INSTANCE) == sop_uids(whole)[1]  # named from its header, which is intact
    assert value(cut, FAILURE_REASON) == stow.FAILURE_DOES_NOT_MATCH_SOP_CLASS
    assert "truncated" in comment(cut)
    assert value(junk, REFERENCED_SOP_INSTANCE) is None
    assert value(junk, FAILURE_REASON) == stow.FAILURE_CANNOT_UNDERSTAND
    assert "not a DICOM Part-10 file" in comment(junk)
    assert RETRIEVE_URL not in cut
    assert [i.state for i in items(tenant_a)] == ["stored", "rejected", "rejected"]
    reasons = [e.outcome_description for e in events(tenant_a, EventType.INGEST_REJECTED)]
    assert len(reasons) == 2
    assert any("truncated" in r for r in reasons)


def test_nothing_stored_is_409(api_client_for, tenant_a, radiologist_a):
    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [b"junk one", make_instance()[:300]])

    assert response.status_code == 409
    body = response.json()
    assert referenced(body) == []
    assert len(failed(body)) == 2
    assert RETRIEVE_URL in body  # Type 2: present, empty
    assert value(body, RETRIEVE_URL) is None
    with tenant_scope(tenant_a):
        assert not Instance.objects.exists()


def test_an_executable_preamble_fails_and_raises_a_security_alert(api_client_for, tenant_a, radiologist_a):
    data = make_instance()
    polyglot = b"MZ" + b"\x90" * 126 + data[128:]

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [polyglot])

    assert response.status_code == 409
    [item] = failed(response.json())
    assert value(item, REFERENCED_SOP_INSTANCE) == sop_uids(data)[1]
    assert value(item, FAILURE_REASON) == stow.FAILURE_PROCESSING
    assert "executable header" in comment(item)
    with tenant_scope(tenant_a):
        alert = SecurityAlert.objects.get()
        assert not Instance.objects.exists()
        assert alert.event.actor_user == radiologist_a  # the alert's event, read in its tenant's scope
    assert alert.kind == "malware"


def test_eicar_inside_an_instance_fails_as_malware(api_client_for, tenant_a, radiologist_a):
    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [make_instance() + eicar_test_bytes()])

    assert response.status_code == 409
    [item] = failed(response.json())
    assert value(item, FAILURE_REASON) == stow.FAILURE_PROCESSING
    assert "Malware" in comment(item)
    with tenant_scope(tenant_a):
        assert SecurityAlert.objects.filter(kind="malware").count() == 1


def test_a_non_zero_preamble_is_zeroed_and_stored_with_a_warning(api_client_for, tenant_a, radiologist_a):
    data = make_instance()
    marked = b"hello from a vendor".ljust(128, b"\x00") + data[128:]

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [marked])

    assert response.status_code == 202
    [ref] = referenced(response.json())
    assert value(ref, WARNING_REASON) == stow.WARNING_COERCION
    assert "preamble" in comment(ref)


def test_sending_the_same_instance_again_is_a_success(api_client_for, tenant_a, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)
    data = make_instance()
    assert post_parts(client, URL, [data]).status_code == 200

    response = post_parts(client, URL, [data])

    assert response.status_code == 200
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(response.json())] == [sop_uids(data)[1]]
    assert [i.state for i in items(tenant_a)] == ["stored", "duplicate"]


def test_different_bytes_under_a_stored_uid_fail_as_a_conflict(api_client_for, tenant_a, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)
    uid = generate_uid()
    assert post_parts(client, URL, [make_instance(sop_uid=uid, pixel_seed=1)]).status_code == 200

    response = post_parts(client, URL, [make_instance(sop_uid=uid, pixel_seed=2)])

    assert response.status_code == 409
    [item] = failed(response.json())
    assert value(item, REFERENCED_SOP_INSTANCE) == uid
    assert value(item, FAILURE_REASON) == stow.FAILURE_DUPLICATE_SOP_INSTANCE
    assert "conflict" in comment(item) or "different content" in comment(item)


def test_an_instance_of_another_study_than_the_url_fails(api_client_for, tenant_a, radiologist_a):
    study_uid = generate_uid()
    mine = make_instance(study_uid=study_uid)
    other = make_instance()

    response = post_parts(api_client_for(radiologist_a, tenant_a), f"{URL}/{study_uid}", [mine, other, b"not dicom"])

    assert response.status_code == 202
    body = response.json()
    assert value(body, RETRIEVE_URL) == f"http://testserver{URL}/{study_uid}"
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(body)] == [sop_uids(mine)[1]]
    mismatch, unreadable = failed(body)
    assert value(mismatch, REFERENCED_SOP_INSTANCE) == sop_uids(other)[1]
    assert value(mismatch, FAILURE_REASON) == stow.FAILURE_STUDY_MISMATCH
    assert "another study" in comment(mismatch)
    assert value(unreadable, FAILURE_REASON) == stow.FAILURE_CANNOT_UNDERSTAND
    # Refused at the door: never quarantined, but on the audit trail.
    assert [i.state for i in items(tenant_a)] == ["stored"]
    refused = events(tenant_a, EventType.INGEST_REJECTED)
    assert len(refused) == 2
    assert refused[0].extra["door"]["sop_instance_uid"] == sop_uids(other)[1]
    assert (refused[0].extra["source"], refused[0].extra["failure"]) == ("stowrs", "study_mismatch")
    assert refused[0].actor_user == radiologist_a


def test_an_invalid_study_uid_in_the_url_is_a_bad_request(api_client_for, tenant_a, radiologist_a):
    response = post_parts(api_client_for(radiologist_a, tenant_a), f"{URL}/not-a-uid", [make_instance()])

    assert response.status_code == 400
    assert "study" in problem(response)["errors"]
    assert items(tenant_a) == []


def test_another_tenants_url_is_the_same_404_as_a_missing_tenant(api_client_for, tenant_a, tenant_b, radiologist_a):
    client = api_client_for(radiologist_a, tenant_a)
    data = make_instance()

    theirs = post_parts(client, "/dicomweb/south/studies", [data])
    nowhere = post_parts(client, "/dicomweb/nowhere/studies", [data])

    assert theirs.status_code == nowhere.status_code == 404
    assert problem(theirs) == problem(nowhere)
    assert items(tenant_a) == items(tenant_b) == []


def test_a_token_of_another_tenant_is_refused_there_too(api_client_for, tenant_a, tenant_b, outsider_b):
    response = post_parts(api_client_for(outsider_b, tenant_b), URL, [make_instance()])

    assert response.status_code == 404
    assert items(tenant_a) == []


def test_a_member_without_upload_permission_gets_403_and_an_audit_event(api_client_for, tenant_a, compliance_a):
    response = post_parts(api_client_for(compliance_a, tenant_a), URL, [make_instance()])

    assert response.status_code == 403
    assert problem(response)["status"] == 403
    event = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert event.actor_user == compliance_a
    assert items(tenant_a) == []


def test_no_credentials_is_401(client, tenant_a):
    response = client.generic("POST", URL, multipart([make_instance()]), content_type=CONTENT_TYPE)

    assert response.status_code == 401


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary="enclave-test-boundary"',
        "application/json",
    ],
)
def test_another_media_type_is_415(api_client_for, tenant_a, radiologist_a, content_type):
    response = api_client_for(radiologist_a, tenant_a).generic(
        "POST", URL, multipart([make_instance()]), content_type=content_type
    )

    assert response.status_code == 415
    assert problem(response)["status"] == 415
    assert items(tenant_a) == []


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ('multipart/related; type="application/dicom"', b"--x\r\n\r\nA\r\n--x--"),
        (CONTENT_TYPE, b"no boundary in here at all"),
        (CONTENT_TYPE, b"--enclave-test-boundary--\r\n"),
    ],
)
def test_a_garbled_body_is_400(api_client_for, tenant_a, radiologist_a, content_type, data):
    response = api_client_for(radiologist_a, tenant_a).generic("POST", URL, data, content_type=content_type)

    assert response.status_code == 400
    assert problem(response)["status"] == 400


def test_an_empty_body_is_400(api_client_for, tenant_a, radiologist_a):
    response = api_client_for(radiologist_a, tenant_a).generic("POST", URL, b"", content_type=CONTENT_TYPE)

    assert response.status_code == 400
    assert "empty" in problem(response)["detail"]


def test_a_body_over_the_limit_is_413(api_client_for, tenant_a, radiologist_a, settings):
    settings.DICOMWEB_STOW_MAX_REQUEST_BYTES = 10_000

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [make_instance(), make_instance()])

    assert response.status_code == 413
    assert items(tenant_a) == []


def test_a_part_over_the_object_limit_fails_alone(api_client_for, tenant_a, radiologist_a, settings):
    small = make_instance(rows=8, columns=8)
    large = make_instance(rows=128, columns=128)
    settings.INGEST_MAX_BYTES = len(small) + 100

    response = post_parts(api_client_for(radiologist_a, tenant_a), URL, [small, large])

    assert response.status_code == 202
    [item] = failed(response.json())
    assert value(item, REFERENCED_SOP_INSTANCE) == sop_uids(large)[1]
    assert value(item, FAILURE_REASON) == stow.FAILURE_OUT_OF_RESOURCES
    assert "larger than the limit" in comment(item)


def test_a_chunked_body_is_read_where_the_server_ends_it(api_client_for, tenant_a, radiologist_a):
    # gunicorn decodes a chunked body and sets wsgi.input_terminated; there is no Content-Length to go by.
    data = make_instance()

    response = api_client_for(radiologist_a, tenant_a).generic(
        "POST",
        URL,
        b"",
        content_type=CONTENT_TYPE,
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": BytesIO(multipart([data])), "wsgi.input_terminated": True},
    )

    assert response.status_code == 200, response.content
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(response.json())] == [sop_uids(data)[1]]


def test_a_chunked_body_the_server_cannot_end_is_411(api_client_for, tenant_a, radiologist_a):
    response = api_client_for(radiologist_a, tenant_a).generic(
        "POST",
        URL,
        b"",
        content_type=CONTENT_TYPE,
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": BytesIO(multipart([make_instance()]))},
    )

    assert response.status_code == 411
    assert "Content-Length" in problem(response)["detail"]


def _receipts(sql: list[str]) -> list[int]:
    """The positions of the statements that record received parts (blob rows and items)."""
    return [i for i, q in enumerate(sql) if 'INSERT INTO "studies_ingestitem"' in q]


def test_the_parts_of_a_request_are_recorded_together(api_client_for, tenant_a, radiologist_a):
    # One statement for the request's receipts: its blob rows and items, the study's key looked up once; so the
    # worker finds them waiting together and stores them as one batch.
    files = make_study(series=1, instances_per_series=4)

    with CaptureQueriesContext(connection) as queries:
        response = post_parts(api_client_for(radiologist_a, tenant_a), URL, files)

    assert response.status_code == 200, response.content
    sql = [q["sql"] for q in queries.captured_queries]
    receipts = _receipts(sql)
    assert len(receipts) == 1
    assert sql[receipts[0]].startswith('WITH b AS (INSERT INTO "studies_blob"')
    # No blob row written apart from its item (the worker, eager here, writes its own after the receipt).
    assert not any('INSERT INTO "studies_blob"' in q for q in sql[: receipts[0]])
    assert sum('FROM "studies_studykey"' in q for q in sql[: receipts[0]]) == 1
    received = items(tenant_a)
    assert [i.filename for i in received] == [f"STOW-RS part {n}" for n in range(1, 5)]
    assert {i.state for i in received} == {IngestItem.State.STORED}
    assert len(events(tenant_a, EventType.INSTANCES_STORED)) == 1


def test_parts_read_before_a_body_error_are_recorded_and_stored(api_client_for, tenant_a, radiologist_a):
    files = make_study(series=1, instances_per_series=2)
    body = multipart(files)[: -len(b"--enclave-test-boundary--\r\n")]  # no closing boundary: the body is cut
    body += b"--enclave-test-boundary\r\nContent-Type: application/dicom\r\n\r\n" + b"DICM" * 10

    response = api_client_for(radiologist_a, tenant_a).generic("POST", URL, body, content_type=CONTENT_TYPE)

    assert response.status_code == 400
    assert "2 part(s) before the error were received" in problem(response)["detail"]
    received = items(tenant_a)
    assert len(received) == 2
    assert {i.state for i in received} == {IngestItem.State.STORED}


def test_a_request_longer_than_a_batch_is_recorded_batch_by_batch(api_client_for, tenant_a, radiologist_a, settings):
    settings.INGEST_BATCH_SIZE = 2
    files = make_study(series=1, instances_per_series=5)

    with CaptureQueriesContext(connection) as queries:
        response = post_parts(api_client_for(radiologist_a, tenant_a), URL, files)

    assert response.status_code == 200, response.content
    assert len(_receipts([q["sql"] for q in queries.captured_queries])) == 3  # 2 + 2 + 1
    assert len(referenced(response.json())) == 5
    assert {i.state for i in items(tenant_a)} == {IngestItem.State.STORED}


def test_query_budget_of_the_door(api_client_for, tenant_a, radiologist_a, django_assert_max_num_queries):
    # Instances of another study are refused at the door: what is left is the door's own work (authentication,
    # membership, permission, one audit row per refusal), which must not grow with anything but the parts.
    client = api_client_for(radiologist_a, tenant_a)
    parts = [make_instance(), make_instance()]

    with django_assert_max_num_queries(25):
        response = post_parts(client, f"{URL}/{generate_uid()}", parts)

    assert response.status_code == 409


def test_query_budget_of_one_stored_instance(api_client_for, tenant_a, radiologist_a, django_assert_max_num_queries):
    # Mostly the pipeline, which runs eagerly inside the request here (quarantine, index, audit, thumbnail).
    client = api_client_for(radiologist_a, tenant_a)

    with django_assert_max_num_queries(150):
        response = post_parts(client, URL, [make_instance()])

    assert response.status_code == 200


# The answer for items the pipeline has not decided yet (a slow or stopped worker), built from their rows.


def test_items_still_processing_are_referenced_with_a_warning_and_202():
    data = make_instance()
    result = stow.PartResult(part=1, identity=stow.identify(data), item_id=1)
    stow._settle(result, stow.ItemVerdict(pk=1, state=IngestItem.State.PROCESSING))

    answer, status = stow.store_response([result], study_url=lambda uid: f"http://x/studies/{uid}", url_study=None)

    assert status == 202
    [ref] = referenced(answer)
    assert value(ref, WARNING_REASON) == stow.WARNING_STILL_PROCESSING
    assert value(ref, REFERENCED_SOP_INSTANCE) == result.identity.sop_instance_uid
    assert "still being processed" in comment(ref)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("not a DICOM Part-10 file: no DICM marker at offset 128", stow.FAILURE_CANNOT_UNDERSTAND),
        ("truncated: pixel data has 10 of 8192 bytes", stow.FAILURE_DOES_NOT_MATCH_SOP_CLASS),
        ("missing required attribute SOP Instance UID", stow.FAILURE_DOES_NOT_MATCH_SOP_CLASS),
        ("image too large: 65535 x 65535 x 1000 frames exceeds the limits", stow.FAILURE_OUT_OF_RESOURCES),
        ("unsupported transfer syntax 1.2.3", stow.FAILURE_TRANSFER_SYNTAX),
        ("unreadable DICOM data (KeyError)", stow.FAILURE_CANNOT_UNDERSTAND),
    ],
)
def test_parse_refusals_map_onto_ps3_18_codes(reason, code):
    assert stow.failure_reason(InvalidDicom(reason).kind) == code


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (IngestItem.Failure.MALWARE, stow.FAILURE_PROCESSING),
        (IngestItem.Failure.LOST, stow.FAILURE_PROCESSING),
        (IngestItem.Failure.CONFLICT, stow.FAILURE_DUPLICATE_SOP_INSTANCE),
        (IngestItem.Failure.TOO_LARGE, stow.FAILURE_OUT_OF_RESOURCES),
    ],
)
def test_pipeline_refusals_map_onto_ps3_18_codes(failure, code):
    assert stow.failure_reason(failure) == code


def test_an_mfa_verified_browser_session_may_store(client_for, tenant_a, radiologist_a):
    data = make_instance()

    response = post_parts(client_for(radiologist_a), URL, [data])

    assert response.status_code == 200
    assert [value(r, REFERENCED_SOP_INSTANCE) for r in referenced(response.json())] == [sop_uids(data)[1]]


def test_a_session_without_its_second_factor_may_not(client, tenant_a, radiologist_a):
    client.force_login(radiologist_a)

    response = post_parts(client, URL, [make_instance()])

    assert response.status_code == 401
    assert items(tenant_a) == []


@pytest.mark.parametrize("route", ["studies", "study"])
def test_stow_bodies_are_held_to_the_stow_limit_not_the_general_one(api_client_for, tenant_a, radiologist_a, settings,
                                                                    route):  # fmt: skip
    # Both STOW-RS URLs share their path with a GET (QIDO-RS, WADO-RS) through api_by_method: the middleware's
    # declared-length check must take the POST's own limit, or a study larger than REQUEST_MAX_BYTES was a 413.
    data = make_instance()
    url = URL if route == "studies" else f"{URL}/{stow.identify(data).study_instance_uid}"
    settings.REQUEST_MAX_BYTES = 1000
    settings.DICOMWEB_STOW_MAX_REQUEST_BYTES = 10 * len(data)
    client = api_client_for(radiologist_a, tenant_a)

    stored = post_parts(client, url, [data])
    settings.DICOMWEB_STOW_MAX_REQUEST_BYTES = 1000
    refused = post_parts(client, url, [make_instance()])

    assert stored.status_code == 200, stored.content
    assert referenced(stored.json())
    assert refused.status_code == 413
    assert "limit of 1000 bytes" in problem(refused)["detail"]
    assert [item.state for item in items(tenant_a)] == [IngestItem.State.STORED]
