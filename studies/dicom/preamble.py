"""The 128-byte preamble of a Part-10 file: what it holds, and a copy of the file with it zeroed.

The preamble is free for applications, which lets one file be both a valid DICOM object and a runnable program
(the PE/DICOM polyglot, CVE-2019-11687). The archive never keeps a non-zero preamble.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREAMBLE_LENGTH = 128

# Header magic at offset 0, most specific first.
_EXECUTABLES: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "Windows PE (MZ)"),
    (b"\x7fELF", "ELF"),
    (b"\xfe\xed\xfa\xce", "Mach-O 32-bit (FE ED FA CE)"),
    (b"\xfe\xed\xfa\xcf", "Mach-O 64-bit (FE ED FA CF)"),
    (b"\xce\xfa\xed\xfe", "Mach-O 32-bit little-endian (CE FA ED FE)"),
    (b"\xcf\xfa\xed\xfe", "Mach-O 64-bit little-endian (CF FA ED FE)"),
    (b"\xca\xfe\xba\xbe", "Mach-O universal binary or Java class (CA FE BA BE)"),
    (b"#!", "script (#!)"),
)
# Dual-personality files the standard allows (PS3.10 7.5): a TIFF header in the preamble.
_KNOWN_HARMLESS: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF little-endian header"),
    (b"MM\x00*", "TIFF big-endian header"),
)


@dataclass(frozen=True)
class PreambleVerdict:
    kind: Literal["zero", "nonzero", "executable"]
    detail: str = ""


def inspect_preamble(data: bytes) -> PreambleVerdict:
    """Classify the first 128 bytes: all zero, an executable header, or some other non-zero content."""
    preamble = bytes(data[:PREAMBLE_LENGTH])
    if not preamble.strip(b"\x00"):
        return PreambleVerdict(kind="zero")
    for magic, name in _EXECUTABLES:
        if preamble.startswith(magic):
            return PreambleVerdict(kind="executable", detail=name)
    for magic, name in _KNOWN_HARMLESS:
        if preamble.startswith(magic):
            return PreambleVerdict(kind="nonzero", detail=name)
    return PreambleVerdict(kind="nonzero", detail="non-zero bytes")


def zero_preamble(data: bytes) -> bytes:
    """`data` with its first 128 bytes set to zero; every later byte is unchanged."""
    if len(data) < PREAMBLE_LENGTH:
        raise ValueError("data is shorter than a DICOM preamble")
    return b"".join((bytes(PREAMBLE_LENGTH), memoryview(data)[PREAMBLE_LENGTH:]))
