"""The browser door's service: plain files and zips into the pipeline, and every way a zip is refused whole."""

from __future__ import annotations

import io
import stat
import uuid
import zipfile

import pytest

from audit.events import EventType, Outcome
from studies.dicom.synthetic import make_instance, make_study
from studies.models import Blob, IngestItem, Instance, Series, Study
from studies.services import upload_receive
from tenants import access
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events

State = IngestItem.State


def zip_of(*entries: tuple[str | zipfile.ZipInfo, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.fixture
def receive(tenant_a, technologist_a, django_capture_on_commit_callbacks):
    """Upload as the technologist of tenant A; processing runs when the transaction commits, as in production."""

    def run(data, *, filename="upload", actor=technologist_a, batch=None):
        batch = batch or uuid.uuid4()
        with tenant_scope(tenant_a), django_capture_on_commit_callbacks(execute=True):
            items = upload_receive(actor=actor, batch=batch, filename=filename, data=data)
        with tenant_scope(tenant_a):
            return [IngestItem.objects.get(pk=item.pk) for item in items]

    return run


def counts(tenant):
    with tenant_scope(tenant):
        return {
            "items": IngestItem.objects.count(),
            "blobs": Blob.objects.count(),
            "instances": Instance.objects.count(),
        }


def test_a_good_zip_of_a_two_series_study_is_stored_whole(receive, tenant_a):
    files = make_study(series=2, instances_per_series=3, patient_name="ZIP^ALICE")
    entries = [(f"export/s{n // 3 + 1}/IM{n:04d}.dcm", data) for n, data in enumerate(files)]
    junk = [("__MACOSX/export/._IM0000.dcm", b"apple double"), ("export/.DS_Store", b"finder"), ("export/s1/", b"")]

    items = receive(zip_of(*junk, *entries), filename="export.zip")

    assert [item.state for item in items] == [State.STORED] * 6
    assert sorted(item.filename for item in items) == sorted(name for name, _ in entries)
    assert {item.source for item in items} == {IngestItem.Source.UPLOAD}
    assert len({item.batch for item in items}) == 1
    with tenant_scope(tenant_a):
        study = Study.objects.select_related("patient").get()
        assert study.patient.name == "ZIP^ALICE"
        assert (study.number_of_series, study.number_of_instances) == (2, 6)
        assert Series.objects.filter(thumbnail__isnull=False).count() == 2
        instances = sorted(str(public_id) for public_id in Instance.objects.values_list("public_id", flat=True))
    # The six items of one upload are one batch: one INSTANCES_STORED event for the study, naming all six.
    stored = events(tenant_a, EventType.INSTANCES_STORED)
    assert len(stored) == 1
    assert sorted(public_id for e in stored for public_id in e.extra["instances"]) == instances


def test_a_zip_stored_without_compression_works_too(receive):
    items = receive(zip_of(("a.dcm", make_instance()), method=zipfile.ZIP_STORED), filename="plain.zip")

    assert [(item.filename, item.state) for item in items] == [("a.dcm", State.STORED)]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("../evil.dcm", "The zip holds a path outside its folder: ../evil.dcm"),
        ("study/../../evil.dcm", "The zip holds a path outside its folder: study/../../evil.dcm"),
        ("/etc/evil.dcm", "The zip holds a path outside its folder: /etc/evil.dcm"),
        ("..\\evil.dcm", "The zip holds a path outside its folder: ..\\evil.dcm"),
        ("study\\..\\..\\evil.dcm", "The zip holds a path outside its folder: study\\..\\..\\evil.dcm"),
        ("\\\\server\\share\\evil.dcm", "The zip holds a path outside its folder: \\\\server\\share\\evil.dcm"),
        ("C:/Windows/evil.dcm", "The zip holds a path outside its folder: C:/Windows/evil.dcm"),
        ("c:evil.dcm", "The zip holds a path outside its folder: c:evil.dcm"),
        (symlink("link.dcm"), "The zip holds a symbolic link: link.dcm"),
    ],
)
def test_a_zip_with_an_entry_outside_its_folder_is_refused_whole(receive, tenant_a, entry, reason):
    good = make_instance()

    items = receive(zip_of(("first.dcm", good), (entry, good)), filename="evil.zip")

    assert len(items) == 1
    item = items[0]
    assert (item.filename, item.state, item.reason) == ("evil.zip", State.REJECTED, reason)
    assert item.quarantine is None
    assert counts(tenant_a) == {"items": 1, "blobs": 0, "instances": 0}
    event = events(tenant_a, EventType.INGEST_REJECTED)[-1]
    assert event.outcome == Outcome.MINOR_FAILURE
    assert event.outcome_description == reason
    assert event.target_id == str(item.public_id)
    # The one refusal shape of the three doors (studies.services.ingest_refusal_record).
    assert (event.extra["source"], event.extra["failure"], event.extra["ingest_item"]) == (
        "upload",
        item.failure,
        str(item.public_id),
    )


def test_too_many_entries_is_refused_before_extraction(receive, tenant_a, settings):
    settings.INGEST_ZIP_MAX_ENTRIES = 3

    items = receive(zip_of(*[(f"IM{n}.dcm", make_instance()) for n in range(4)]), filename="many.zip")

    assert [(item.state, item.reason) for item in items] == [
        (State.REJECTED, "Zip bomb: the zip holds 4 entries, more than the limit of 3.")
    ]
    assert counts(tenant_a) == {"items": 1, "blobs": 0, "instances": 0}


def test_a_ratio_bomb_is_refused_before_extraction(receive, tenant_a):
    items = receive(zip_of(("first.dcm", make_instance()), ("zeros.dcm", bytes(20 * 1024 * 1024))), filename="b.zip")

    assert [item.state for item in items] == [State.REJECTED]
    assert items[0].reason == "Zip bomb: an entry unpacks to more than 100 times its packed size: zeros.dcm"
    assert counts(tenant_a) == {"items": 1, "blobs": 0, "instances": 0}


def test_many_small_entries_that_unpack_far_beyond_the_zip_are_a_bomb(receive, tenant_a):
    """Each entry is below the size where its own ratio is checked; together they are still a bomb."""
    items = receive(zip_of(*[(f"z{n}.dcm", bytes(60 * 1024)) for n in range(30)]), filename="many-small.zip")

    assert [(item.state, item.reason) for item in items] == [
        (State.REJECTED, "Zip bomb: the zip unpacks to more than 100 times its size.")
    ]
    assert counts(tenant_a) == {"items": 1, "blobs": 0, "instances": 0}


def test_too_many_unpacked_bytes_is_refused_before_extraction(receive, tenant_a, settings):
    settings.INGEST_ZIP_MAX_UNPACKED_BYTES = 10_000

    items = receive(zip_of(("a.dcm", make_instance()), ("b.dcm", make_instance())), filename="big.zip")

    assert items[0].state == State.REJECTED
    assert items[0].reason == "Zip bomb: the zip unpacks to more than the limit of 10000 bytes."
    assert counts(tenant_a) == {"items": 1, "blobs": 0, "instances": 0}


def test_an_entry_bigger_than_its_header_says_is_refused(receive, tenant_a):
    """The header is not trusted: a size that lies makes the read fail its check, and the zip is refused."""
    data = bytearray(zip_of(("a.dcm", make_instance()), method=zipfile.ZIP_STORED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.infolist()[0]
    # Shrink the recorded size in both the local header and the central directory.
    small = (info.file_size - 100).to_bytes(4, "little")
    for offset in (22, data.rindex(b"PK\x01\x02") + 24):
        data[offset : offset + 4] = small

    items = receive(bytes(data), filename="liar.zip")

    assert [item.state for item in items] == [State.REJECTED]
    assert items[0].reason.startswith("The zip is damaged at a.dcm")
    assert counts(tenant_a) == {"items": 1, "blobs": 0, "instances": 0}


def test_a_damaged_zip_is_refused(receive):
    good = zip_of(("a.dcm", make_instance()))

    items = receive(good[: len(good) // 2], filename="cut.zip")

    assert [(item.state, item.reason) for item in items] == [(State.REJECTED, "The zip is damaged or incomplete.")]


def test_an_empty_zip_is_refused(receive):
    items = receive(zip_of(("folder/", b""), ("__MACOSX/._a", b"x")), filename="empty.zip")

    assert [(item.state, item.reason) for item in items] == [(State.REJECTED, "The zip holds no files.")]


def test_a_nested_zip_is_not_expanded(receive, tenant_a):
    inner = zip_of(("inner.dcm", make_instance()))

    items = receive(zip_of(("outer.dcm", make_instance()), ("inner.zip", inner)), filename="outer.zip")

    by_name = {item.filename: item for item in items}
    assert by_name["outer.dcm"].state == State.STORED
    assert by_name["inner.zip"].state == State.REJECTED
    assert by_name["inner.zip"].reason
    with tenant_scope(tenant_a):
        assert Instance.objects.count() == 1


def test_a_plain_dicom_file_is_stored(receive, tenant_a, technologist_a):
    items = receive(make_instance(patient_name="PLAIN^BOB"), filename="IM0001.dcm")

    assert [(item.filename, item.state, item.actor_id) for item in items] == [
        ("IM0001.dcm", State.STORED, technologist_a.pk)
    ]


def test_a_dicom_file_whose_preamble_looks_like_a_zip_stays_a_dicom_file(receive):
    data = bytearray(make_instance())
    data[:4] = b"PK\x03\x04"

    items = receive(bytes(data), filename="polyglot.dcm")

    assert [item.filename for item in items] == ["polyglot.dcm"]
    assert "zip" not in items[0].reason.lower()


def test_a_non_dicom_file_and_a_truncated_dicom_file_are_rejected_with_reasons(receive, tenant_a):
    text = receive(b"These are my notes, not an image.\n" * 10, filename="notes.txt")
    cut = receive(make_instance()[:-500], filename="cut.dcm")

    for items, name in ((text, "notes.txt"), (cut, "cut.dcm")):
        assert [(item.filename, item.state) for item in items] == [(name, State.REJECTED)]
        assert items[0].reason
    assert text[0].reason != cut[0].reason
    with tenant_scope(tenant_a):
        assert Instance.objects.count() == 0
    assert len(events(tenant_a, EventType.INGEST_REJECTED)) == 2


def test_a_file_over_the_size_limit_is_rejected_at_the_door(receive, tenant_a, settings):
    settings.INGEST_MAX_BYTES = 1000

    items = receive(make_instance(), filename="big.dcm")

    assert [(item.state, item.reason) for item in items] == [
        (State.REJECTED, "The file is larger than the limit of 1000 bytes.")
    ]
    assert counts(tenant_a) == {"items": 1, "blobs": 0, "instances": 0}


def test_a_file_object_is_read_like_bytes(receive):
    items = receive(io.BytesIO(zip_of(("a.dcm", make_instance()))), filename="a.zip")

    assert [item.state for item in items] == [State.STORED]


def test_a_member_without_the_permission_is_refused(receive, tenant_a, compliance_a):
    with pytest.raises(access.Forbidden):
        receive(make_instance(), actor=compliance_a)

    assert counts(tenant_a) == {"items": 0, "blobs": 0, "instances": 0}
