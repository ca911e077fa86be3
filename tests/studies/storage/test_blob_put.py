"""Copies written to a folder store in one write (studies.storage.blobs._file_put), as the ingest path does."""

from __future__ import annotations

import uuid

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import storages

from studies.storage.blobs import PRIMARY, blob_sealed_put


def test_a_copy_put_twice_under_one_name_is_replaced_whole_and_leaves_no_temporary_file():
    storage = storages[PRIMARY]
    folder = f"t0/test/{uuid.uuid4().hex[:8]}"
    name = f"{folder}/{uuid.uuid4().hex}"
    blob_sealed_put(store=PRIMARY, name=name, sealed=b"first")
    blob_sealed_put(store=PRIMARY, name=name, sealed=b"second, longer copy")
    with storage.open(name) as handle:
        assert handle.read() == b"second, longer copy"
    assert storage.listdir(folder)[1] == [name.rsplit("/", 1)[1]]
    storage.delete(name)


def test_a_name_outside_the_store_is_refused():
    with pytest.raises(SuspiciousFileOperation):
        blob_sealed_put(store=PRIMARY, name="../outside", sealed=b"x")


def _quarantined(sealed: bytes) -> str:
    from studies.storage.blobs import QUARANTINE

    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    blob_sealed_put(store=QUARANTINE, name=name, sealed=sealed)
    return name


def test_a_promoted_copy_is_the_quarantined_file_linked_not_written_again_and_a_second_attempt_replaces_it():
    """Issue 10: the primary copy of a promoted blob is a hard link to the checked quarantine file."""
    import os

    from studies.storage.blobs import QUARANTINE, _file_link

    source = _quarantined(b"sealed bytes")
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    blob_sealed_put(store=PRIMARY, name=name, sealed=b"a first attempt's copy")
    assert _file_link(source=(QUARANTINE, source), store=PRIMARY, name=name, size=len(b"sealed bytes"))
    primary, quarantine = storages[PRIMARY], storages[QUARANTINE]
    assert os.stat(primary.path(name)).st_ino == os.stat(quarantine.path(source)).st_ino
    # A retry after a worker died with the link made (its transaction rolled back): the same name, no temporary.
    assert _file_link(source=(QUARANTINE, source), store=PRIMARY, name=name, size=len(b"sealed bytes"))
    quarantine.delete(source)  # as on commit: the archive's name stays
    with primary.open(name) as handle:
        assert handle.read() == b"sealed bytes"
    folder, base = name.rsplit("/", 1)
    assert primary.listdir(folder)[1] == [base]  # no temporary name left
    primary.delete(name)


def test_a_link_that_cannot_be_made_or_a_file_of_another_size_is_left_to_the_writer(monkeypatch):
    import os

    from studies.storage import blobs

    source = _quarantined(b"sealed bytes")
    name = f"t0/test/{uuid.uuid4().hex[:8]}/{uuid.uuid4().hex}"
    assert not blobs._file_link(source=(blobs.QUARANTINE, source), store=PRIMARY, name=name, size=3)

    def no_link(*args: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert not blobs._file_link(source=(blobs.QUARANTINE, source), store=PRIMARY, name=name, size=12)
    assert not storages[PRIMARY].exists(name)
    storages[blobs.QUARANTINE].delete(source)
