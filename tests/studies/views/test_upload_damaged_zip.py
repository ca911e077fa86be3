"""The upload page's door with a zip whose entry's compressed stream is damaged (issue 8 #9): DEFLATE, LZMA and
BZIP2 alike. It once answered 500 with no ingest item; it is one rejected item with the reason and an audit event,
and none of the zip's good entries is kept (a zip is taken whole or not at all)."""

from __future__ import annotations

import io
import struct
import uuid
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.events import EventType
from studies.dicom.synthetic import make_instance
from studies.models import Blob, IngestItem, Instance
from tenants.scoping import tenant_scope
from tests.tenants.helpers import last_event

FILES = "/t/north/upload/files/"
LOCAL_HEADER = 30


def damaged_zip(method: int) -> bytes:
    """A zip of two DICOM files whose second entry's compressed data is garbage (its headers are intact)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("study/IM0001.dcm", make_instance())
        archive.writestr("study/IM0002.dcm", make_instance())
    raw = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        info = archive.getinfo("study/IM0002.dcm")
    name_length, extra_length = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + LOCAL_HEADER + name_length + extra_length
    if method == zipfile.ZIP_DEFLATED:
        raw[start] = 0xFF  # block type 3: reserved, "invalid block type"
    elif method == zipfile.ZIP_LZMA:
        raw[start + 9 : start + 64] = b"\xff" * 55  # past the LZMA properties: corrupt input data
    else:
        raw[start + 4 : start + 64] = b"\xff" * 60  # past "BZh9": not a bzip2 block
    return bytes(raw)


@pytest.mark.parametrize(
    ("method", "error"),
    [(zipfile.ZIP_DEFLATED, "error"), (zipfile.ZIP_LZMA, "LZMAError"), (zipfile.ZIP_BZIP2, "OSError")],
    ids=["deflate", "lzma", "bzip2"],
)
def test_a_zip_with_a_damaged_entry_is_one_rejected_item_with_a_reason_and_an_audit_event(
    client_for, tenant_a, technologist_a, method, error
):
    batch = uuid.uuid4()
    upload = SimpleUploadedFile("scans.zip", damaged_zip(method), content_type="application/zip")

    response = client_for(technologist_a).post(FILES, {"batch": str(batch), "file": upload})

    assert response.status_code == 201
    [item] = response.json()["items"]
    assert (item["filename"], item["state"]) == ("scans.zip", "rejected")
    assert item["reason"].startswith("The zip is damaged at study/IM0002.dcm")
    assert error in item["reason"]
    with tenant_scope(tenant_a):
        stored = IngestItem.objects.get(public_id=item["id"])
        assert stored.batch == batch
        assert stored.actor == technologist_a
        assert not Instance.objects.exists()  # the good first entry went back with the rest
        assert not Blob.objects.filter(kind=Blob.Kind.QUARANTINE).exists()
    event = last_event(tenant_a, EventType.INGEST_REJECTED)
    assert event.actor_user == technologist_a
    assert event.outcome_description == item["reason"]
    assert event.extra["ingest_item"] == item["id"]
