from __future__ import annotations

import pytest

from studies.dicom.parse import Limits, parse
from studies.dicom.preamble import inspect_preamble, zero_preamble
from studies.dicom.synthetic import make_instance


def _with_preamble(head: bytes) -> bytes:
    data = make_instance()
    return head + bytes(128 - len(head)) + data[128:]


@pytest.mark.parametrize(
    ("head", "detail"),
    [
        (b"MZ\x90\x00\x03\x00\x00\x00", "Windows PE (MZ)"),
        (b"\x7fELF\x02\x01\x01", "ELF"),
        (b"\xfe\xed\xfa\xce", "Mach-O 32-bit (FE ED FA CE)"),
        (b"\xfe\xed\xfa\xcf", "Mach-O 64-bit (FE ED FA CF)"),
        (b"\xce\xfa\xed\xfe", "Mach-O 32-bit little-endian (CE FA ED FE)"),
        (b"\xcf\xfa\xed\xfe", "Mach-O 64-bit little-endian (CF FA ED FE)"),
        (b"\xca\xfe\xba\xbe", "Mach-O universal binary or Java class (CA FE BA BE)"),
        (b"#!/bin/sh\nrm -rf ~\n", "script (#!)"),
    ],
)
def test_executable_preambles(head: bytes, detail: str):
    data = _with_preamble(head)
    verdict = inspect_preamble(data)
    assert (verdict.kind, verdict.detail) == ("executable", detail)
    # The polyglot is still a valid DICOM file: that is the attack, and why the preamble is judged on its own.
    parse(data, limits=Limits(max_bytes=10**7))


def test_zero_preamble_verdict():
    assert inspect_preamble(make_instance()).kind == "zero"


@pytest.mark.parametrize(
    ("head", "detail"),
    [
        (b"II*\x00\x08\x00\x00\x00", "TIFF little-endian header"),
        (b"\x01Z", "non-zero bytes"),
        (b" MZ", "non-zero bytes"),
    ],
)
def test_nonzero_preamble_verdict(head: bytes, detail: str):
    verdict = inspect_preamble(_with_preamble(head))
    assert (verdict.kind, verdict.detail) == ("nonzero", detail)


def test_nonzero_byte_at_the_end_of_the_preamble():
    data = make_instance()
    data = data[:127] + b"\x01" + data[128:]
    assert inspect_preamble(data).kind == "nonzero"


def test_zero_preamble_keeps_the_rest_identical():
    data = _with_preamble(b"MZ\x90\x00" + b"\xff" * 100)
    cleaned = zero_preamble(data)
    assert len(cleaned) == len(data)
    assert cleaned[:128] == bytes(128)
    assert cleaned[128:] == data[128:]
    assert inspect_preamble(cleaned).kind == "zero"
    parse(cleaned, limits=Limits(max_bytes=10**7))


def test_zero_preamble_of_clean_file_is_identity():
    data = make_instance()
    assert zero_preamble(data) == data


def test_zero_preamble_refuses_short_data():
    with pytest.raises(ValueError, match="shorter"):
        zero_preamble(b"MZ")
