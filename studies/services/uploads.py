"""The browser door: files, folders and zips a member uploads, into the one ingest pipeline.

A zip is checked whole before a single entry is read: any entry that names a path outside the zip's folder
(absolute, `..`, backslash traversal, a drive letter) or is a symbolic link, and any sign of a zip bomb (too many
entries, too many bytes once unpacked, a compression ratio no DICOM file has), rejects the whole zip. Entry names
are only ever recorded as text: quarantine names are generated (studies.storage.blobs), so no entry can be written
anywhere, let alone outside the tenant's quarantine. Every entry is read with a size cap, whatever its header says.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import stat
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from studies.models import IngestItem
from studies.services.ingest import Rejected, ingest_receive
from studies.services.refusals import ingest_refusal_record
from tenants import access
from tenants.scoping import current_tenant

# A zip starts with a local file header, or is an empty archive (end of central directory only).
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
DICOM_MAGIC_OFFSET = 128
# Entries that operating systems add to archives, never images.
JUNK_FOLDERS = frozenset({"__MACOSX"})
JUNK_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# Below this size an entry cannot be a bomb however well it compresses (small text files reach ratios of 100).
RATIO_FLOOR_BYTES = 64 * 1024
READ_CHUNK = 1024 * 1024
SUPPORTED_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
# What reading a damaged entry raises: zipfile's own errors, and those of the decompressors under it (a corrupt
# DEFLATE stream raises zlib.error, a corrupt LZMA one lzma.LZMAError, BZIP2 OSError), none of them a ValueError.
DAMAGED_ENTRY_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    RuntimeError,
    ValueError,
    NotImplementedError,
)

Upload = bytes | IO[bytes]


class ZipRefused(Exception):
    """The whole zip is refused; `reason` is shown to the person who sent it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Reading an upload that is either bytes or a (seekable) file Django streamed to disk
# ------------------------------------------------------------------------------


def _as_file(data: Upload) -> IO[bytes]:
    return io.BytesIO(data) if isinstance(data, bytes | bytearray) else data


def _size(handle: IO[bytes]) -> int:
    handle.seek(0, io.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    return size


def _sha256(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    while chunk := handle.read(READ_CHUNK):
        digest.update(chunk)
    handle.seek(0)
    return digest.hexdigest()


def _read_capped(handle: IO[bytes], cap: int) -> bytes | None:
    """At most `cap` bytes of `handle`, or None when it holds more."""
    data = handle.read(cap + 1)
    return None if len(data) > cap else data


def _is_zip(handle: IO[bytes]) -> bool:
    """By magic, never by name. A DICOM file whose preamble starts like a zip (a polyglot) stays a DICOM file:
    the pipeline inspects its preamble."""
    head = handle.read(DICOM_MAGIC_OFFSET + 4)
    handle.seek(0)
    if head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return False
    return head[:4] in ZIP_MAGICS


# Zip checks: all of them before anything is extracted
# ------------------------------------------------------------------------------


def _path_problem(name: str) -> bool:
    """True when the entry name reaches outside the zip's folder, under POSIX or Windows rules."""
    if not name or name.startswith(("/", "\\")) or DRIVE_LETTER.match(name):
        return True
    return any(part == ".." for part in re.split(r"[/\\]", name))


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _is_junk(info: zipfile.ZipInfo) -> bool:
    parts = [part for part in re.split(r"[/\\]", info.filename) if part]
    return info.is_dir() or not parts or parts[0] in JUNK_FOLDERS or parts[-1] in JUNK_FILES


def _too_many_entries(count: int) -> ZipRefused:
    return ZipRefused(
        f"Zip bomb: the zip holds {count} entries, more than the limit of {settings.INGEST_ZIP_MAX_ENTRIES}."
    )


def _check_declared_entries(handle: IO[bytes]) -> None:
    """The entry count from the end-of-archive record, before zipfile reads the whole central directory into
    memory (millions of tiny entries would exhaust it). The private helper is the stdlib's own reader of that
    record, zip64 included."""
    try:
        record = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
    except OSError as exc:
        raise ZipRefused("The zip is damaged or incomplete.") from exc
    finally:
        handle.seek(0)
    if record is None:
        raise ZipRefused("The zip is damaged or incomplete.")
    if record[zipfile._ECD_ENTRIES_TOTAL] > settings.INGEST_ZIP_MAX_ENTRIES:  # type: ignore[attr-defined]
        raise _too_many_entries(record[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]


def _check_zip(archive: zipfile.ZipFile, *, size: int) -> list[zipfile.ZipInfo]:
    """The entries to ingest, once every entry has passed; else ZipRefused with the first problem found."""
    entries = archive.infolist()
    if len(entries) > settings.INGEST_ZIP_MAX_ENTRIES:
        raise _too_many_entries(len(entries))
    unpacked = 0
    for info in entries:
        if _path_problem(info.filename):
            raise ZipRefused(f"The zip holds a path outside its folder: {info.filename[:200]}")
        if _is_symlink(info):
            raise ZipRefused(f"The zip holds a symbolic link: {info.filename[:200]}")
        if info.flag_bits & 0x1:
            raise ZipRefused(f"The zip holds an encrypted entry, which cannot be checked: {info.filename[:200]}")
        if info.compress_type not in SUPPORTED_METHODS:
            raise ZipRefused(f"The zip uses a compression method that is not supported: {info.filename[:200]}")
        if info.file_size > settings.INGEST_MAX_BYTES:
            raise ZipRefused(
                f"The zip holds an entry larger than the limit of {settings.INGEST_MAX_BYTES} bytes: "
                f"{info.filename[:200]}"
            )
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > info.compress_size * settings.INGEST_ZIP_MAX_RATIO:
            raise ZipRefused(
                f"Zip bomb: an entry unpacks to more than {settings.INGEST_ZIP_MAX_RATIO} times its packed size: "
                f"{info.filename[:200]}"
            )
        unpacked += info.file_size
        if unpacked > settings.INGEST_ZIP_MAX_UNPACKED_BYTES:
            raise ZipRefused(
                f"Zip bomb: the zip unpacks to more than the limit of {settings.INGEST_ZIP_MAX_UNPACKED_BYTES} bytes."
            )
    if unpacked > RATIO_FLOOR_BYTES and unpacked > size * settings.INGEST_ZIP_MAX_RATIO:
        raise ZipRefused(f"Zip bomb: the zip unpacks to more than {settings.INGEST_ZIP_MAX_RATIO} times its size.")
    wanted = [info for info in entries if not _is_junk(info)]
    if not wanted:
        raise ZipRefused("The zip holds no files.")
    return wanted


def _entries(archive: zipfile.ZipFile, wanted: list[zipfile.ZipInfo]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each checked entry. Sizes are counted as the bytes come, never taken from the headers,
    which may lie; a damaged entry refuses the whole zip."""
    budget = settings.INGEST_ZIP_MAX_UNPACKED_BYTES
    for info in wanted:
        cap = min(settings.INGEST_MAX_BYTES, budget)
        try:
            with archive.open(info) as entry:
                data = _read_capped(entry, cap)
        except DAMAGED_ENTRY_ERRORS as exc:
            raise ZipRefused(f"The zip is damaged at {info.filename[:200]} ({exc.__class__.__name__}).") from exc
        if data is None:
            raise ZipRefused(f"Zip bomb: {info.filename[:200]} unpacks to more than its header says.")
        budget -= len(data)
        yield info.filename, data


# Services
# ------------------------------------------------------------------------------


@transaction.atomic
def upload_reject(
    *,
    actor: Any,
    batch: uuid.UUID,
    filename: str,
    reason: str,
    size: int,
    sha256: str,
    failure: str = IngestItem.Failure.INVALID,
) -> IngestItem:
    """Record an upload refused at the door (a zip that failed its checks, a file over the size limit) as one
    ingest item in state `rejected` with `reason`, so the person sees it beside the rest of the batch, and put the
    refusal on the audit trail (INGEST_REJECTED). Nothing is kept in quarantine. Requires
    `tenants.upload_studies` in the current tenant."""
    tenant = current_tenant()
    access.require(actor, "tenants.upload_studies", tenant)
    item = IngestItem(
        tenant=tenant,
        state=IngestItem.State.REJECTED,
        source=IngestItem.Source.UPLOAD,
        batch=batch,
        filename=filename[:255],
        size=size,
        sha256=sha256,
        actor=actor,
        reason=reason[:300],
        failure=failure,
        finished_at=timezone.now(),
    )
    item.full_clean()
    item.save()
    ingest_refusal_record(
        source=item.source,
        reason=reason,
        failure=failure,
        actor=actor,
        batch=batch,
        item=item,
        detail={"filename": item.filename, "size": size, "sha256": sha256},
    )
    return item


def upload_receive(
    *, actor: Any, batch: uuid.UUID, filename: str, data: Upload, source_address: str | None = None
) -> list[IngestItem]:
    """Receive one uploaded file (bytes, or a seekable file such as Django's uploaded file) into the current
    tenant's pipeline and return the ingest items it made.

    Requires `tenants.upload_studies` on the tenant (Forbidden otherwise). A plain file is one item. A zip (told
    by its magic bytes) is checked whole first and, if it passes, is one item per entry, named after the entry; a
    zip refused by a check, or a file over the size limit, is one item in state `rejected` with the reason and
    nothing else is kept. The entries of a zip are received in one transaction: all of them or none. Processing
    is queued when the transaction commits (studies.services.ingest).
    """
    tenant = current_tenant()
    access.require(actor, "tenants.upload_studies", tenant)
    handle = _as_file(data)
    size = _size(handle)
    if _is_zip(handle):
        return _receive_zip(
            actor=actor, batch=batch, filename=filename, handle=handle, size=size, source_address=source_address
        )
    if size > settings.INGEST_MAX_BYTES:
        reason = f"The file is larger than the limit of {settings.INGEST_MAX_BYTES} bytes."
        return [
            upload_reject(
                actor=actor,
                batch=batch,
                filename=filename,
                reason=reason,
                size=size,
                sha256=_sha256(handle),
                failure=IngestItem.Failure.TOO_LARGE,
            )
        ]
    content = _read_capped(handle, settings.INGEST_MAX_BYTES) or b""
    try:
        item = ingest_receive(
            source=IngestItem.Source.UPLOAD,
            batch=batch,
            data=content,
            filename=filename,
            actor=actor,
            source_address=source_address,
        )
    except Rejected as exc:
        return [
            upload_reject(
                actor=actor,
                batch=batch,
                filename=filename,
                reason=exc.reason,
                size=size,
                sha256=hashlib.sha256(content).hexdigest(),
                failure=exc.failure,
            )
        ]
    return [item]


def _receive_zip(
    *, actor: Any, batch: uuid.UUID, filename: str, handle: IO[bytes], size: int, source_address: str | None
) -> list[IngestItem]:
    try:
        if size > max(settings.INGEST_MAX_BYTES, settings.INGEST_ZIP_MAX_UNPACKED_BYTES):
            raise ZipRefused("The zip is larger than the upload limit.")
        _check_declared_entries(handle)
        try:
            archive = zipfile.ZipFile(handle)
        except DAMAGED_ENTRY_ERRORS as exc:
            raise ZipRefused("The zip is damaged or incomplete.") from exc
        with archive:
            wanted = _check_zip(archive, size=size)
            with transaction.atomic():
                items = []
                for name, content in _entries(archive, wanted):
                    try:
                        items.append(
                            ingest_receive(
                                source=IngestItem.Source.UPLOAD,
                                batch=batch,
                                data=content,
                                filename=name,
                                actor=actor,
                                source_address=source_address,
                            )
                        )
                    except Rejected as exc:
                        raise ZipRefused(f"{exc.reason} ({name[:200]})") from exc
                return items
    except ZipRefused as refused:
        return [
            upload_reject(
                actor=actor, batch=batch, filename=filename, reason=refused.reason, size=size, sha256=_sha256(handle)
            )
        ]
