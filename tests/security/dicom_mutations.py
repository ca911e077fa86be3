"""Hypothesis strategies for hostile DICOM Part-10 files (issue 14): valid synthetic files from
studies.dicom.synthetic, then mutated the ways senders and attackers break them: bit flips, truncations, huge and
undefined lengths, wrong VRs, deeply nested sequences, bogus transfer syntaxes, garbage preambles, inserted and
deleted bytes.

`mutated_files(keep_meta=True)` leaves the file meta information alone, for the C-STORE door: over DIMSE only the
data set travels (the meta is rebuilt by the receiver from the presentation context), so the sending client must be
able to read the meta to negotiate at all.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import cache

import pydicom
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from studies.dicom.synthetic import make_instance
from tests.studies.hostile_dicom import lenient

# The patient data of every base file: no refusal reason may repeat it.
PATIENT_NAME = "FUZZ^PATIENT"
PATIENT_ID = "FUZZ-PID-1"
ACCESSION = "FUZZACC1"
PATIENT_DATA = (PATIENT_NAME, PATIENT_ID, ACCESSION)

# Tags whose element headers the mutations aim at (group, element): identifying attributes, UIDs, the image
# geometry and the pixel data, so that lengths and VRs are broken where the parser must look.
TARGET_TAGS = [
    (0x0008, 0x0016), (0x0008, 0x0018), (0x0008, 0x0050), (0x0008, 0x0060), (0x0010, 0x0010), (0x0010, 0x0020),
    (0x0020, 0x000D), (0x0020, 0x000E), (0x0020, 0x0013), (0x0028, 0x0002), (0x0028, 0x0010), (0x0028, 0x0011),
    (0x0028, 0x0100), (0x0028, 0x0101), (0x0040, 0xA730), (0x7FE0, 0x0010),
]  # fmt: skip
VRS = [b"AE", b"CS", b"DS", b"IS", b"LO", b"OB", b"OW", b"PN", b"SQ", b"UI", b"UL", b"UN", b"US", b"UT", b"\x00\x00"]
HUGE_LENGTHS = [0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0x10000000, 0xFFFF, 0xFFFE]
BOGUS_SYNTAXES = [
    b"1.2.840.10008.1.2.2",  # explicit big endian (retired)
    b"1.2.840.10008.1.2.4.100",  # MPEG2: not accepted
    b"1.2.840.10008.1.2.1.99",  # deflated, but the body is not
    b"1.2.840.10008.1.2",  # implicit, but the body is explicit
    b"9.9.9",
    b"not a uid at all!!!",
    b"",
    b"\x00" * 20,
]
EXECUTABLE_PREAMBLES = [b"MZ\x90\x00", b"\x7fELF", b"#!/bin/sh\n"]


@dataclass(frozen=True)
class Base:
    name: str
    data: bytes
    meta_end: int  # offset of the first byte after the file meta information
    valid: bool = True  # False: refused as it is (one sequence past the parser's nesting limit)


def _meta_end(data: bytes) -> int:
    """Where the file meta information ends, by its group length (of the base file; after a mutation it may
    lie, so the result is clamped to the file)."""
    if len(data) < 144:
        return len(data)
    (group_length,) = struct.unpack_from("<I", data, 132 + 8)
    return min(144 + group_length, len(data))


def _with_sequences(depth: int) -> bytes:
    """A valid instance carrying a nest of `depth` Content Sequences (0040,A730) before its pixel data."""
    data = _instance()
    with lenient():
        ds = pydicom.dcmread(io.BytesIO(data))
        inner = Dataset()
        inner.TextValue = "leaf"
        for _ in range(depth):
            outer = Dataset()
            outer.ContentSequence = Sequence([inner])
            inner = outer
        ds.ContentSequence = inner.ContentSequence
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()


def _instance(**kw: object) -> bytes:
    kw = {"patient_name": PATIENT_NAME, "patient_id": PATIENT_ID, "accession": ACCESSION, "rows": 32, "columns": 32,
          **kw}  # fmt: skip
    return make_instance(**kw)  # type: ignore[arg-type]


def _deflated() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(_instance(bits=8)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@cache
def bases() -> list[Base]:
    """The valid files every mutation starts from: each transfer syntax family the archive accepts, and nested
    sequences (shallow, at the parser's depth limit and one past it)."""
    made = {
        "explicit": _instance(),
        "implicit": _instance(transfer_syntax=ImplicitVRLittleEndian),
        "deflated": _deflated(),
        "rle": _instance(transfer_syntax=RLELossless),
        "jpeg": _instance(transfer_syntax=JPEGBaseline8Bit, bits=8),
        "nested-4": _with_sequences(4),
        "nested-32": _with_sequences(32),
        "two-frames": _instance(frames=2, transfer_syntax=ExplicitVRLittleEndian),
    }
    found = [Base(name, data, _meta_end(data)) for name, data in made.items()]
    too_deep = _with_sequences(33)
    return [*found, Base("nested-33", too_deep, _meta_end(too_deep), valid=False)]


def _tag_offsets(data: bytes, start: int) -> list[int]:
    found = []
    for group, element in TARGET_TAGS:
        at = data.find(struct.pack("<HH", group, element), start)
        if at >= 0:
            found.append(at)
    return found or [start]


@st.composite
def _mutation(draw: st.DrawFn, data: bytes, start: int, keep_meta: bool) -> bytes:
    """One mutation of `data`, at or after `start` (bytes before it are left alone)."""
    size = len(data)
    kinds = ["flip", "truncate", "huge_length", "undefined_length", "wrong_vr", "insert", "delete", "overwrite"]
    if not keep_meta:
        kinds += ["syntax", "preamble", "magic"]
    kind = draw(st.sampled_from(kinds))
    if kind not in ("syntax", "preamble", "magic"):
        # past the preamble and the DICM marker: a mutation there is a plain "not DICOM", found cheaply anyway
        start = max(start, 132)
        if start >= size:
            return data
    body = bytearray(data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(start, size - 1))
            body[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del body[draw(st.integers(start, size - 1)) :]
    elif kind in ("huge_length", "undefined_length", "wrong_vr"):
        at = draw(st.sampled_from(_tag_offsets(data, start)))
        if kind == "wrong_vr":
            body[at + 4 : at + 6] = draw(st.sampled_from(VRS))
        else:
            length = 0xFFFFFFFF if kind == "undefined_length" else draw(st.sampled_from(HUGE_LENGTHS))
            # Explicit VR: a 2-byte length after the VR, or a 4-byte one after 2 reserved bytes; implicit VR:
            # 4 bytes after the tag. Each is tried, whichever the element really has.
            where = draw(st.sampled_from(["short", "long", "implicit"]))
            if where == "short":
                body[at + 6 : at + 8] = struct.pack("<H", length & 0xFFFF)
            elif where == "long":
                body[at + 8 : at + 12] = struct.pack("<I", length)
            else:
                body[at + 4 : at + 8] = struct.pack("<I", length)
    elif kind == "insert":
        at = draw(st.integers(start, size))
        body[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "delete":
        at = draw(st.integers(start, size - 1))
        del body[at : at + draw(st.integers(1, 64))]
    elif kind == "overwrite":
        at = draw(st.integers(start, size - 1))
        garbage = draw(st.binary(min_size=1, max_size=32))
        body[at : at + len(garbage)] = garbage
    elif kind == "syntax":
        # (0002,0010) UI: the value replaced, its length field kept honest or not
        at = data.find(b"\x02\x00\x10\x00UI", 132, _meta_end(data))
        if at < 0 or at + 8 > size:
            return data
        (length,) = struct.unpack_from("<H", data, at + 6)
        bogus = draw(st.sampled_from(BOGUS_SYNTAXES))
        bogus += b"\x00" * (len(bogus) % 2)
        honest = draw(st.booleans())
        body[at + 6 : at + 8 + length] = struct.pack("<H", len(bogus) if honest else length) + bogus
    elif kind == "preamble":
        head = draw(st.one_of(st.sampled_from(EXECUTABLE_PREAMBLES), st.binary(min_size=1, max_size=128)))
        body[: len(head)] = head
    else:  # magic
        body[128:132] = draw(st.sampled_from([b"DICN", b"\x00\x00\x00\x00", b"dicm", b"MZ\x90\x00"]))
    return bytes(body)


@st.composite
def mutated_files(draw: st.DrawFn, *, keep_meta: bool = False) -> tuple[str, bytes]:
    """(the base's name, a file with one to four mutations). Mutations stack: the second works on the first's
    result, so a truncated file can also have a flipped bit."""
    base = draw(st.sampled_from(bases()))
    data = base.data
    start = base.meta_end if keep_meta else 0
    for _ in range(draw(st.integers(1, 4))):
        if len(data) <= start + 1:
            break
        data = draw(_mutation(data, start, keep_meta))
    return base.name, data
