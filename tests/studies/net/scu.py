"""A real DICOM client for the listener tests: pynetdicom's SCU, sending Part-10 files as they are.

Its application entity is the listener's own kind (`PromptAE`): pynetdicom's, whose association cannot lose a quick
response to its own reactor (pynetdicom's pause race, `PromptAssociation._wait_at_checkpoint`), which had a C-STORE of
the scale-out test wait out its 30 s DIMSE timeout under load."""

from __future__ import annotations

import io
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from studies.net.reactor import PromptAE


@dataclass
class SendResult:
    established: bool
    rejected: bool
    diagnostic: int | None = None
    statuses: list[int] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


def _client(calling: str, files: Sequence[Path]) -> PromptAE:
    ae = PromptAE(ae_title=calling)
    ae.add_requested_context(Verification)
    seen = set()
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        key = (meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        if key not in seen:
            seen.add(key)
            ae.add_requested_context(*key)
    return ae


def write_files(directory: Path, blobs: Sequence[bytes], prefix: str = "obj") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, data in enumerate(blobs):
        path = directory / f"{prefix}{n:04d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def associate(
    *,
    port: int,
    calling: str,
    called: str,
    files: Sequence[Path] = (),
    during: Callable[[Association], Any] | None = None,
    tls: ssl.SSLContext | None = None,
) -> SendResult:
    """Open an association, send each file by C-STORE (the bytes as stored, not re-encoded), release.

    `during` is called with the open association before the first C-STORE (e.g. to look at its socket).
    """
    ae = _client(calling, files)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=(tls, "127.0.0.1") if tls else None)
    if not assoc.is_established:
        diagnostic = getattr(assoc.acceptor.primitive, "diagnostic", None) if assoc.is_rejected else None
        return SendResult(established=False, rejected=assoc.is_rejected, diagnostic=diagnostic)
    result = SendResult(established=True, rejected=False)
    try:
        if during is not None:
            during(assoc)
        for path in files:
            status = assoc.send_c_store(path)
            result.statuses.append(int(status.Status) if "Status" in status else -1)
            result.comments.append(str(status.get("ErrorComment", "")))
    finally:
        assoc.release()
    return result


def echo(*, port: int, calling: str, called: str, tls: ssl.SSLContext | None = None) -> int | None:
    """C-ECHO; None when no association was established. `tls`: the client's context for DICOM TLS."""
    ae = PromptAE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=(tls, "127.0.0.1") if tls else None)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def sop_instance_uid(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
