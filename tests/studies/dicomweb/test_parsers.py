"""The multipart/related reader of STOW-RS: framing, media types, limits, and reading a part at a time."""

from __future__ import annotations

from io import BytesIO

import pytest
from rest_framework import exceptions

from studies.dicomweb import parsers
from studies.dicomweb.parsers import BodyError, BodyTooLarge, MultipartRelatedParser

DICOM_CT = 'multipart/related; type="application/dicom"; boundary="{b}"'
DEFAULT_CT = DICOM_CT.format(b="b0undary")


class CountingStream(BytesIO):
    """Counts the bytes the reader has taken, to show it does not read ahead of the part it is on."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.taken += len(chunk)
        return chunk


def body(parts: list[bytes], boundary: str = "b0undary", *, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble
    for part in parts:
        out += f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
    return out + f"\r\n--{boundary}--".encode() + epilogue


def parse(data: bytes, content_type: str = DEFAULT_CT, **meta) -> list[parsers.Part]:
    return list(read(data, content_type, **meta))


def read(data, content_type=DEFAULT_CT, **meta):
    request = type("R", (), {"META": {"CONTENT_LENGTH": str(len(data)), **meta}})()
    return MultipartRelatedParser().parse(BytesIO(data), content_type, {"request": request})


@pytest.fixture(autouse=True)
def limits(settings):
    settings.INGEST_MAX_BYTES = 10_000
    settings.DICOMWEB_STOW_MAX_REQUEST_BYTES = 100_000


def test_parts_come_out_byte_for_byte():
    payloads = [b"first\r\n--not-the-boundary", bytes(range(256)) * 3, b""]

    parts = parse(body(payloads))

    assert [p.data for p in parts] == payloads
    assert [p.index for p in parts] == [1, 2, 3]
    assert {p.content_type for p in parts} == {"application/dicom"}
    assert [p.size for p in parts] == [len(p) for p in payloads]


def test_dicomweb_client_framing_quoted_boundary_with_a_space_and_no_trailing_crlf():
    # dicomweb-client opens with CRLF before the first boundary and ends on the close delimiter without CRLF.
    data = b"\r\n--a b\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--a b--"

    assert [p.data for p in parse(data, DICOM_CT.format(b="a b"))] == [b"ONE"]


def test_preamble_epilogue_padding_and_parts_without_headers():
    data = (
        b"This is the preamble; ignore me.\r\n"
        b"--xyz   \r\n\r\nNO HEADERS\r\n"
        b"--xyz\r\ncontent-type: Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location: http://example/1\r\n\r\nWITH HEADERS"
        b"\r\n--xyz--\r\nepilogue, ignored\r\n--xyz\r\n\r\nNOT A PART"
    )

    parts = parse(data, "multipart/related; boundary=xyz; type=application/dicom")

    assert [(p.data, p.content_type, p.location) for p in parts] == [
        (b"NO HEADERS", "application/dicom", ""),
        (b"WITH HEADERS", "application/dicom", "http://example/1"),
    ]


def test_a_part_of_another_type_is_reported_not_refused():
    data = b"--q\r\nContent-Type: text/plain\r\n\r\nhello\r\n--q--\r\n"

    [part] = parse(data, DICOM_CT.format(b="q"))

    assert part.content_type == "text/plain"


def test_a_delimiter_split_across_reads_is_found(monkeypatch):
    monkeypatch.setattr(parsers, "CHUNK_BYTES", 7)
    payloads = [b"x" * 50, b"y" * 3, b"z" * 101]

    assert [p.data for p in parse(body(payloads, "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"),
                                  DICOM_CT.format(b="0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"))] == payloads  # fmt: skip


def test_parts_are_read_one_at_a_time(monkeypatch):
    monkeypatch.setattr(parsers, "CHUNK_BYTES", 100)
    data = body([b"a" * 1000, b"b" * 5000])
    stream = CountingStream(data)
    request = type("R", (), {"META": {"CONTENT_LENGTH": str(len(data))}})()
    parts = iter(MultipartRelatedParser().parse(stream, DICOM_CT.format(b="b0undary"), {"request": request}))

    assert stream.taken == 0  # nothing is read until the parts are asked for
    first = next(parts)
    assert first.data == b"a" * 1000
    assert stream.taken < 1300  # the first part and one chunk of the second, not the whole body
    assert next(parts).data == b"b" * 5000


def test_an_oversized_part_keeps_only_its_head_and_the_rest_goes_on(monkeypatch):
    monkeypatch.setattr(parsers, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(parsers, "HEAD_BYTES", 100)
    big = bytes(range(256)) * 100  # 25,600 bytes, over the 10,000-byte limit of one object

    small, oversized, after = parse(body([b"ok", big, b"after"]))

    assert (small.data, small.oversized) == (b"ok", False)
    assert oversized.oversized is True
    assert oversized.size == len(big)
    assert oversized.data == big[:100]
    assert after.data == b"after"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "multipart/form-data; boundary=x",
        'multipart/related; type="application/dicom+json"; boundary=x',
        'multipart/related; type="application/dicom+xml"; boundary=x',
        "",
    ],
)
def test_other_media_types_are_unsupported(content_type):
    with pytest.raises(exceptions.UnsupportedMediaType):
        read(b"--x\r\n\r\nA\r\n--x--", content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; boundary=""',
        'multipart/related; type="application/dicom"; boundary="' + "x" * 71 + '"',
        'multipart/related; type="application/dicom"; boundary="ends with space "',
        'multipart/related; type="application/dicom"; boundary="semi;colon{}"',
    ],
)
def test_a_missing_or_invalid_boundary_is_a_bad_request(content_type):
    with pytest.raises(BodyError) as raised:
        read(b"--x\r\n\r\nA\r\n--x--", content_type)
    assert raised.value.status_code == 400


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"no boundary anywhere", "never occurs"),
        (b"--b0undary\r\n\r\nstarted but never ended", "without its closing boundary"),
        (b"--b0undary\r\n\r\nA\r\n--b0undaryX\r\n\r\nB\r\n--b0undary--", "garbled"),
        (b"--b0undary\r\nContent-Type: application/dicom", "headers"),
        (b"--b0undary", "ends right after a boundary"),
    ],
)
def test_a_garbled_body_is_a_bad_request(data, message):
    with pytest.raises(BodyError) as raised:
        parse(data)
    assert message in str(raised.value.detail)
    assert raised.value.status_code == 400


def test_the_error_says_how_many_parts_came_before_it():
    with pytest.raises(BodyError) as raised:
        parse(b"--b0undary\r\n\r\nA\r\n--b0undary\r\n\r\nB\r\n--b0undary\r\n\r\nC, cut")
    assert raised.value.parts_before == 2


def test_a_declared_length_over_the_limit_is_refused_before_reading(settings):
    settings.DICOMWEB_STOW_MAX_REQUEST_BYTES = 50
    stream = CountingStream(body([b"x" * 100]))
    request = type("R", (), {"META": {"CONTENT_LENGTH": "5000000"}})()

    with pytest.raises(BodyTooLarge) as raised:
        MultipartRelatedParser().parse(stream, DICOM_CT.format(b="b0undary"), {"request": request})

    assert raised.value.status_code == 413
    assert stream.taken == 0


def test_a_body_that_grows_past_the_limit_while_read_is_refused(settings, monkeypatch):
    # A chunked body has no declared length: the limit is enforced on the bytes actually read.
    settings.DICOMWEB_STOW_MAX_REQUEST_BYTES = 3000
    monkeypatch.setattr(parsers, "CHUNK_BYTES", 500)
    data = body([b"a" * 1000, b"b" * 1000, b"c" * 1000])

    with pytest.raises(BodyTooLarge) as raised:
        list(read(data, CONTENT_LENGTH=""))

    assert raised.value.status_code == 413
    assert raised.value.parts_before == 2


def test_a_body_is_read_once():
    parts = read(body([b"A"]))
    assert [p.data for p in parts] == [b"A"]
    with pytest.raises(RuntimeError):
        list(parts)


def test_part_headers_read_as_the_email_parser_reads_them():
    """`header_fields` (a fifth of the CPU) gives what email.parser.BytesHeaderParser, which the reader used
    before, gives for the media type and location of a part: over blocks of well-formed, folded, repeated, garbled
    and non-ASCII lines."""
    import email.parser
    import email.policy
    import random

    from django.utils.http import parse_header_parameters

    def media_type(raw: str) -> str:
        return parse_header_parameters(raw)[0] if raw.strip() else "(default)"

    lines = [
        b"Content-Type: application/dicom",
        b"content-type:application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        b"Content-Type : application/dicom",
        b" folded",
        b"\tmore",
        b"Content-Location: http://example/1",
        b"X-Other: y",
        b"garbage line",
        b"Content-Type: application/octet-stream",
        b"CONTENT-LOCATION:   spaced  ",
        b"Content-Type:",
        b'Content-Type: multipart/related; boundary="a b"',
        b"Content-Type: application/dicom\xe9",
        b":no name",
        b"Content-Type: a,\t b",
    ]
    rng = random.Random(20261206)
    for _ in range(3000):
        block = b"\r\n".join(rng.choice(lines) for _ in range(rng.randint(1, 5)))
        if block.startswith((b" ", b"\t")):
            continue  # the reader takes a block only after a delimiter line: it never starts folded
        theirs = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(block + b"\r\n")
        ours = parsers.header_fields(block)
        assert (media_type(ours.get("content-type", "")), ours.get("content-location", "")) == (
            media_type(str(theirs.get("Content-Type", "") or "")),
            str(theirs.get("Content-Location", "") or ""),
        ), block
