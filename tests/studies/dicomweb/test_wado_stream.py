"""WADO-RS's bulk path (issue 10): the answer is the stored bytes framed exactly as before, sized when every
instance goes as stored, and a damaged instance never gives a byte of itself."""

from __future__ import annotations

import io
import threading

import pydicom
import pytest

from studies.dicom.synthetic import make_instance
from studies.dicomweb.negotiation import multipart_stream
from studies.dicomweb.wado import BODY_VIEWS, EXPLICIT
from studies.models import Instance
from studies.storage.blobs import (
    PRIMARY,
    READ_AHEAD,
    REPLICA,
    BlobUnreadable,
    blob_read,
    blob_sealed_put,
    blob_sealed_read,
)
from tenants.scoping import tenant_scope
from tests.security.test_phi_route_audit import audit_reads_refused  # noqa: F401 (a fixture)
from tests.studies.dicomweb.reading import ingest, ingest_files

pytestmark = pytest.mark.django_db(transaction=True)
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.91", "1.2.826.0.1.3680043.8.498.911"


@pytest.fixture
def client(api_client_for, radiologist_a, tenant_a):
    return api_client_for(radiologist_a, tenant_a)


def _series(tenant) -> list[tuple[Instance, bytes]]:
    """Three instances of one series, the second over 1 MiB (several envelope chunks), in retrieval order."""
    files = [
        make_instance(study_uid=STUDY, series_uid=SERIES, instance_number=n, rows=rows, columns=rows, frames=frames)
        for n, (rows, frames) in enumerate([(32, 1), (512, 3), (64, 1)], start=1)
    ]
    ingest_files(tenant, files)
    with tenant_scope(tenant):
        rows = list(Instance.objects.filter(series__series_instance_uid=SERIES).select_related("blob"))
        rows.sort(key=lambda row: row.instance_number)
        return [(row, blob_read(blob=row.blob)) for row in rows]


def _boundary(response) -> str:
    return response["Content-Type"].split("boundary=")[1]


def _retrieved_and_framed(client, stored, *, views=False):
    """The series retrieved (200), its body, and the stored bytes framed by the generic multipart writer. `views`:
    as gunicorn serves it (BODY_VIEWS), each item written out (here: copied) before the next is taken."""
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*",
        **({BODY_VIEWS: True} if views else {}),
    )  # fmt: skip
    assert response.status_code == 200
    body = b"".join([bytes(item) for item in response.streaming_content])
    expected = b"".join(
        multipart_stream(
            [(f"application/dicom; transfer-syntax={row.transfer_syntax_uid}", data) for row, data in stored],
            _boundary(response),
        )
    )
    return response, body, expected


def _sent_until_unreadable(client, *, views=False):
    """The series retrieved until a part cannot be read (BlobUnreadable, as the stream raises it): the response and
    what it had sent by then (`views`: as `_retrieved_and_framed`)."""
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*",
        **({BODY_VIEWS: True} if views else {}),
    )  # fmt: skip
    sent: list[bytes] = []
    with pytest.raises(BlobUnreadable):
        sent.extend(bytes(item) for item in response.streaming_content)
    return response, b"".join(sent)


@pytest.mark.parametrize("views", [False, True])
def test_a_series_is_the_stored_bytes_framed_as_before_with_its_exact_length(client, tenant_a, views):
    stored = _series(tenant_a)
    assert stored[1][0].blob.size > 1 << 20
    response, body, expected = _retrieved_and_framed(client, stored, views=views)
    assert body == expected  # byte for byte what the generic multipart writer makes
    assert int(response["Content-Length"]) == len(body)


def test_an_instance_rewritten_to_the_default_syntax_goes_without_a_length(client, tenant_a):
    study = ingest(tenant_a, transfer_syntax=pydicom.uid.RLELossless)
    response = client.get(f"/dicomweb/north/studies/{study.study_instance_uid}", HTTP_ACCEPT=DICOM_MULTIPART)
    assert response.status_code == 200
    assert not response.has_header("Content-Length")  # its size is known only once it is rewritten
    assert b"".join(response.streaming_content).count(_boundary(response).encode()) == 2


@pytest.mark.parametrize("views", [False, True])
@pytest.mark.parametrize(
    ("damaged_at", "cut"),
    [
        (1, slice(None, 4096)),  # two envelope chunks, damaged in the last: its first chunk alone would decrypt
        (2, slice(-4096, None)),  # one envelope chunk (a CT slice): the part's header rides in front of it
    ],
)
def test_an_instance_damaged_in_both_copies_sends_nothing_of_itself(client, tenant_a, damaged_at, cut, views):
    """Damaged in its last chunk and not yet found by the fixity job: the answer stops before that instance's
    part; the parts before it are whole and right."""
    stored = _series(tenant_a)
    damaged = stored[damaged_at][0].blob
    with tenant_scope(tenant_a):
        for store in (PRIMARY, REPLICA):
            sealed = bytearray(blob_sealed_read(store=store, name=damaged.storage_name))
            sealed[-20] ^= 0x01
            blob_sealed_put(store=store, name=damaged.storage_name, sealed=bytes(sealed))
    response, body = _sent_until_unreadable(client, views=views)
    assert body.endswith(stored[damaged_at - 1][1])  # the instances before it, whole
    assert body.count(_boundary(response).encode()) == damaged_at  # and no header of the damaged one
    assert stored[damaged_at][1][cut] not in body


def test_a_part_leaves_with_its_header_in_the_write_of_its_first_chunk(client, tenant_a):
    """A part's header goes at the head of its instance's first chunk, so a part of one envelope chunk (a CT
    slice) is one item of the answer, which gunicorn writes with one sendall, and an instance of several chunks
    adds one item per chunk more."""
    stored = _series(tenant_a)
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*"
    )
    items = list(response.streaming_content)
    head = f"--{_boundary(response)}\r\nContent-Type: application/dicom; transfer-syntax=".encode()
    assert items[0].startswith(head)
    assert items[0].endswith(stored[0][1])
    assert items[1].startswith(b"\r\n" + head)
    assert items[1].endswith(stored[1][1][: 1 << 20])
    assert items[2] == stored[1][1][1 << 20 :]  # the large instance's second chunk
    assert items[3].startswith(b"\r\n" + head)
    assert items[3].endswith(stored[2][1])
    assert len(items) == 5  # and the tail


def test_with_a_server_that_writes_views_a_ct_slice_leaves_from_the_buffer_it_was_decrypted_into(client, tenant_a):
    """BODY_VIEWS in the environ (gunicorn as portal/gunicorn_conf.py configures it): a part of one envelope chunk
    is one view of the thread's plaintext buffer, its header then its instance, copied nowhere, and the next read
    reuses that buffer (so the server must write it before taking the next item, as gunicorn does); an instance
    of several chunks still goes as copies. Without BODY_VIEWS (another server, the test client) every item is
    bytes."""
    stored = _series(tenant_a)
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*",
        **{BODY_VIEWS: True},
    )  # fmt: skip
    items = iter(response.streaming_content)
    first = next(items)
    assert type(first) is memoryview
    written = bytes(first)
    head = f"--{_boundary(response)}\r\nContent-Type: application/dicom; transfer-syntax=".encode()
    assert written.startswith(head)
    assert written.endswith(stored[0][1])
    large = [next(items), next(items)]  # the instance over 1 MiB, two chunks, read through the same buffers
    assert all(type(item) is bytes for item in large)
    third = next(items)
    assert type(third) is memoryview
    assert bytes(third).endswith(stored[2][1])
    assert third.obj is not first.obj  # the reads ahead use their buffers in turn (BlobReadAhead)
    plain = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*"
    )
    assert all(type(item) is bytes for item in plain.streaming_content)


def _ct_series(tenant, count: int) -> list[tuple[Instance, bytes]]:
    """`count` one-chunk instances of one series (CT slices), in retrieval order."""
    files = [
        make_instance(study_uid=STUDY, series_uid=SERIES, instance_number=n, rows=64, columns=64)
        for n in range(1, count + 1)
    ]
    ingest_files(tenant, files)
    with tenant_scope(tenant):
        rows = list(Instance.objects.filter(series__series_instance_uid=SERIES).select_related("blob"))
        rows.sort(key=lambda row: row.instance_number)
        return [(row, blob_read(blob=row.blob)) for row in rows]


def _ahead_threads() -> set[threading.Thread]:
    """The read-ahead threads alive now. A test compares them with those alive before its request: a response an
    earlier test of the same process left unread and unclosed (the test client, unlike a server, does not close a
    body) keeps its thread until the collector finalizes its generator."""
    return {thread for thread in threading.enumerate() if thread.name == "blob-read-ahead"}


@pytest.mark.parametrize("views", [False, True])
def test_an_instance_altered_mid_series_stops_the_answer_before_its_part_though_read_ahead(client, tenant_a, views):
    """The instances after the one being written are read on a thread of their own (READ_AHEAD of them): one
    altered in both copies is found while an earlier part is still going out, and the answer still ends right
    before its part, every part before it whole, and the thread is gone."""
    stored = _ct_series(tenant_a, 8)
    damaged = 5
    before = _ahead_threads()
    with tenant_scope(tenant_a):
        for store in (PRIMARY, REPLICA):
            name = stored[damaged][0].blob.storage_name
            sealed = bytearray(blob_sealed_read(store=store, name=name))
            sealed[len(sealed) // 2] ^= 0x01
            blob_sealed_put(store=store, name=name, sealed=bytes(sealed))
    response, body = _sent_until_unreadable(client, views=views)
    framed = b"".join(
        multipart_stream(
            [(f"application/dicom; transfer-syntax={row.transfer_syntax_uid}", data) for row, data in stored],
            _boundary(response),
        )
    )
    assert framed.startswith(body)  # the answer's own bytes, up to
    assert body.endswith(stored[damaged - 1][1])  # the end of the part before the damaged one, whole,
    assert body.count(_boundary(response).encode()) == damaged  # and no header of the damaged one
    assert not _ahead_threads() - before


def test_a_client_gone_part_way_leaves_no_read_ahead_thread(client, tenant_a):
    """The server closes the body when the client disconnects (WSGI: gunicorn calls close() in its finally): the
    read-ahead thread is stopped and joined then, its reads not started skipped."""
    stored = _ct_series(tenant_a, 6)
    before = _ahead_threads()
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*",
        **{BODY_VIEWS: True},
    )  # fmt: skip
    items = iter(response.streaming_content)
    assert bytes(next(items)).endswith(stored[0][1])
    assert _ahead_threads() - before  # the next instances are being read meanwhile
    response.close()
    assert not _ahead_threads() - before


def test_a_long_series_keeps_a_fixed_number_of_read_buffers(client, tenant_a):
    """Memory flat in the length of a series: its parts come from READ_AHEAD + 1 buffers, used in turn."""
    stored = _ct_series(tenant_a, 10)
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*",
        **{BODY_VIEWS: True},
    )  # fmt: skip
    buffers, sent = set(), []
    for item in response.streaming_content:
        if type(item) is memoryview and item.obj is not None:
            buffers.add(id(item.obj))
        sent.append(bytes(item))
    assert b"".join(sent).count(stored[9][1]) == 1
    assert len(buffers) == READ_AHEAD + 1


def test_a_damaged_last_chunk_of_the_primary_copy_is_served_whole_from_the_replica(client, tenant_a):
    stored = _series(tenant_a)
    row, data = stored[1]
    with tenant_scope(tenant_a):
        sealed = bytearray(blob_sealed_read(store=PRIMARY, name=row.blob.storage_name))
        sealed[-20] ^= 0x01
        blob_sealed_put(store=PRIMARY, name=row.blob.storage_name, sealed=bytes(sealed))
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}/instances/{row.sop_instance_uid}",
        HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*",
    )
    body = b"".join(response.streaming_content)
    assert data in body
    assert int(response["Content-Length"]) == len(body)


@pytest.mark.parametrize("accept", [f"{DICOM_MULTIPART}; transfer-syntax=*", DICOM_MULTIPART])
def test_a_series_costs_the_statements_of_one_instance(client, tenant_a, accept):
    """The retrieval reads its instances and blobs as columns (selectors.storage.retrieval_rows): a column it
    left out but used would be loaded by one more query per instance, as the body is sent."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    stored = _series(tenant_a)
    series_url = f"/dicomweb/north/studies/{STUDY}/series/{SERIES}"

    def statements(url: str) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, HTTP_ACCEPT=accept)
            assert response.status_code == 200
            body = b"".join(response.streaming_content)
        assert all(data in body for row, data in stored if row.sop_instance_uid in url or url == series_url)
        return len(queries)

    instance_url = f"{series_url}/instances/{stored[2][0].sop_instance_uid}"
    # The study key is opened once, then cached; each shape's rows statement is compiled at its first retrieval,
    # then read with the bearer token's (studies.selectors.storage.retrieval_statement_ahead).
    statements(series_url)
    statements(instance_url)
    assert statements(series_url) == statements(instance_url)


def test_the_retrieval_event_names_the_role_the_request_was_let_in_by_without_asking_again(client, tenant_a):
    """The membership that let the request in gives the event its role: the audit writer, under the chain's
    lock, does not read it again (one statement fewer per retrieval)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audit.events import EventType
    from tests.studies.dicomweb.reading import events

    _series(tenant_a)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=DICOM_MULTIPART)
        b"".join(response.streaming_content)
    assert response.status_code == 200
    assert events(tenant_a, EventType.INSTANCES_RETRIEVED)[-1].actor_role == "radiologist"
    statements = [q["sql"] for q in queries]
    lock = next(n for n, sql in enumerate(statements) if '"audit_auditchain"' in sql and "FOR UPDATE" in sql)
    # Outside a transaction the event's BEGIN rides in front of the lock's statement (audit.services, a short
    # transaction), so the transaction starts at the lock; inside one, at the BEGIN logged before it.
    begin = max((n for n, sql in enumerate(statements[:lock]) if sql.strip().upper() == "BEGIN"), default=lock)
    assert not [sql for sql in statements[begin:] if '"tenants_membership"' in sql]  # the event's transaction


def test_a_retrieval_reads_its_study_and_instances_in_one_statement_and_audits_them_as_before(client, tenant_a):
    """The study's visibility, the study and patient the event names, and each instance with its blob: one
    SELECT; the event's participants are those the Study object gives (`study_participants`)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audit.events import EventType
    from studies.services.reads import study_participants
    from tests.studies.dicomweb.reading import events

    stored = _series(tenant_a)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(
            f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*"
        )
        body = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert all(data in body for _, data in stored)
    reads = [q["sql"] for q in queries if '"studies_instance"' in q["sql"] or '"studies_study"' in q["sql"]]
    assert len(reads) == 1, reads
    assert '"studies_blob"' in reads[0]
    assert '"studies_patient"' in reads[0]
    with tenant_scope(tenant_a):
        study = Instance.objects.select_related("series__study__patient").get(pk=stored[0][0].pk).series.study
        expected = study_participants(study)
    (event,) = events(tenant_a, EventType.INSTANCES_RETRIEVED)
    assert event.participants == expected
    assert event.extra["count"] == 3


def test_a_study_key_not_in_the_cache_is_read_for_the_rows_blobs(client, tenant_a):
    """A process that has not opened the study's key yet (or dropped it from its cache) reads the key's row
    through the blob's columns (`BlobRef.study_key`), in the request's tenant scope."""
    from studies.storage.keys import study_key_cache

    stored = _series(tenant_a)
    study_key_cache.clear()
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*"
    )
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert all(data in body for _, data in stored)


def test_a_series_not_in_the_study_or_a_study_not_visible_is_the_same_404_and_a_recorded_failure(
    client, tenant_a, tenant_b, api_client_for, outsider_b
):
    from audit.events import EventType
    from audit.models import AuditEvent

    _series(tenant_a)
    accept = f"{DICOM_MULTIPART}; transfer-syntax=*"
    missing_series = client.get(f"/dicomweb/north/studies/{STUDY}/series/1.2.3.4", HTTP_ACCEPT=accept)
    south = api_client_for(outsider_b, tenant_b)
    theirs = south.get(f"/dicomweb/south/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=accept)
    made_up = south.get(f"/dicomweb/south/studies/1.2.3.4.5/series/{SERIES}", HTTP_ACCEPT=accept)
    assert missing_series.status_code == theirs.status_code == made_up.status_code == 404
    assert missing_series.json() == theirs.json() == made_up.json()
    for tenant, uids in ((tenant_a, [STUDY]), (tenant_b, [STUDY, "1.2.3.4.5"])):
        with tenant_scope(tenant):
            refused = AuditEvent.objects.filter(event_type=EventType.INSTANCES_ACCESSED, outcome=4)
            assert [e.participants[0]["id"] for e in refused.order_by("sequence")] == uids
            assert not AuditEvent.objects.filter(event_type=EventType.INSTANCES_RETRIEVED).exists()


def test_a_series_read_in_several_prepared_batches_is_the_same_answer_and_one_event(client, tenant_a, monkeypatch):
    """The instances' reads are prepared (keys, paths) a batch at a time just before their parts: with batches
    of two, the three-instance series is still the stored bytes framed as before, with its length, and one
    retrieval event for the three."""
    from audit.events import EventType
    from studies.dicomweb import wado
    from tests.studies.dicomweb.reading import events

    monkeypatch.setattr(wado, "PREPARED_READS", 2)
    stored = _series(tenant_a)
    response, body, expected = _retrieved_and_framed(client, stored)
    assert body == expected
    assert int(response["Content-Length"]) == len(body)
    (event,) = events(tenant_a, EventType.INSTANCES_RETRIEVED)
    assert event.extra["count"] == 3


def test_an_instance_whose_key_cannot_be_opened_in_a_later_batch_sends_nothing_of_itself(client, tenant_a, monkeypatch):
    """A data key that does not open is found when its batch is prepared but fails only its own part, as a
    damaged copy does: the parts before it (the first batch's included) are whole, none of its bytes go."""
    from studies.dicomweb import wado
    from studies.models import Blob

    monkeypatch.setattr(wado, "PREPARED_READS", 2)
    stored = _series(tenant_a)
    broken = stored[2][0].blob
    with tenant_scope(tenant_a):
        wrapped = bytearray(broken.wrapped_key)
        wrapped[-1] ^= 0x01
        Blob.objects.filter(pk=broken.pk).update(wrapped_key=bytes(wrapped))
    response, body = _sent_until_unreadable(client)
    assert body.endswith(stored[1][1])
    assert body.count(_boundary(response).encode()) == 2
    assert stored[2][1][-4096:] not in body


def test_a_series_partly_rewritten_to_the_default_syntax_reads_each_instance_once(client, tenant_a, monkeypatch):
    """Rows rewritten to the default syntax are not prepared (each is read whole, then rewritten); the rows sent
    as stored around them are, batch by batch. Every instance is answered, in order, in the default syntax."""
    from studies.dicomweb import wado

    monkeypatch.setattr(wado, "PREPARED_READS", 2)
    syntaxes = [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.RLELossless, pydicom.uid.ExplicitVRLittleEndian]
    files = [
        make_instance(study_uid=STUDY, series_uid=SERIES, instance_number=n, transfer_syntax=syntax)
        for n, syntax in enumerate(syntaxes, start=1)
    ]
    ingest_files(tenant_a, files)
    response = client.get(f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=DICOM_MULTIPART)
    assert response.status_code == 200
    assert not response.has_header("Content-Length")
    body = b"".join(response.streaming_content)
    delimiter = f"--{_boundary(response)}".encode()
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n")
    parts = [part.removesuffix(b"\r\n").split(b"\r\n\r\n", 1) for part in body.split(delimiter)[1:-1]]
    assert [head.strip() for head, _ in parts] == [
        f"Content-Type: application/dicom; transfer-syntax={EXPLICIT}".encode()
    ] * 3
    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, data in parts]
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3]
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {EXPLICIT}


def test_a_series_first_reads_are_under_way_while_its_audit_event_is_written(client, tenant_a, monkeypatch):
    """The read-ahead thread is started, the first reads submitted, before the retrieval's event is written, so that
    reading and decrypting them overlap the event's round trip and commit (docs/BENCHMARKS.md, "h2 branch, session
    12"); the answer is the same bytes, and no thread is left."""
    from studies.dicomweb import wado

    stored = _ct_series(tenant_a, 6)
    before = _ahead_threads()
    reading: list[int] = []
    record = wado.instances_retrieved_record

    def recorded(**kwargs):
        reading.append(len(_ahead_threads() - before))
        record(**kwargs)

    monkeypatch.setattr(wado, "instances_retrieved_record", recorded)
    _, body, expected = _retrieved_and_framed(client, stored, views=True)
    assert body == expected
    assert reading == [1]  # one read-ahead thread at work when the event was written
    assert not _ahead_threads() - before


def test_a_series_whose_event_cannot_be_written_sends_nothing_and_leaves_no_thread(client, tenant_a, request):
    """The first reads start before the event; when the audit store refuses it, the answer is an error with nothing
    of the series (not even a 200's header block), and the read-ahead is closed: its thread joined, its reads
    dropped."""
    stored = _ct_series(tenant_a, 6)
    request.getfixturevalue("audit_reads_refused")
    client.raise_request_exception = False
    before = _ahead_threads()
    response = client.get(
        f"/dicomweb/north/studies/{STUDY}/series/{SERIES}", HTTP_ACCEPT=f"{DICOM_MULTIPART}; transfer-syntax=*",
        **{BODY_VIEWS: True},
    )  # fmt: skip
    assert response.status_code == 500
    assert not response.streaming
    assert not any(data[-256:] in response.content for _, data in stored)
    assert not _ahead_threads() - before
