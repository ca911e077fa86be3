"""Parse and validate one incoming DICOM Part-10 file, before anything is stored.

Pure code: no ORM, no settings. Limits come in as arguments so the ingest service decides them.

pydicom is lenient on purpose: it stops quietly at a cut element header, returns a short last value, and drops the
whole data set when an undefined-length value lacks its delimiter. An archive must not store such files as if they
were whole, so the structure is walked here first (without decoding anything), and only then handed to pydicom.
Refusal reasons are read by people; they name attributes and sizes, never values of patient data.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass, replace
from datetime import date, time
from io import BytesIO
from struct import error as struct_error
from struct import unpack_from
from typing import Any

import pydicom
from pydicom.charset import default_encoding as _DEFAULT_ENCODING
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.encaps import generate_fragmented_frames, parse_basic_offsets, parse_fragments
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import AMBIGUOUS_VR, DA, TM, VR

__all__ = [
    "InvalidDicom",
    "Limits",
    "ParsedInstance",
    "content_hash",
    "header_values_peek",
    "parse",
    "study_instance_uid_peek",
]

_PREAMBLE_LENGTH = 128
_MAGIC = b"DICM"
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_STUDY_INSTANCE_UID = 0x0020000D
_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Their tags: where pydicom's `stop_before_pixels` stops (pydicom.filereader._at_pixel_data).
_PIXEL_DATA_TAG_SET = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_PIXEL_KEYWORD_OF = {0x7FE00010: "PixelData", 0x7FE00009: "DoubleFloatPixelData", 0x7FE00008: "FloatPixelData"}
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_REQUIRED_UIDS = (
    ("SOPClassUID", "SOP Class UID"),
    ("SOPInstanceUID", "SOP Instance UID"),
    ("StudyInstanceUID", "Study Instance UID"),
    ("SeriesInstanceUID", "Series Instance UID"),
)
_IMAGE_ATTRIBUTES = (
    ("Rows", "Rows"),
    ("Columns", "Columns"),
    ("BitsAllocated", "Bits Allocated"),
    ("SamplesPerPixel", "Samples per Pixel"),
)
# A deeper nest of sequences is an attack on the parser, not an image.
_MAX_SEQUENCE_DEPTH = 32
# IS and US/SS values the index keeps in integer columns: IS is a signed 32-bit range by definition (PS3.5 6.2),
# and so are the columns. A value outside it is refused with a reason, never left to overflow the database.
_IS_MIN, _IS_MAX = -(2**31), 2**31 - 1
_INDEXED_INTEGERS = (
    ("SeriesNumber", "Series Number"),
    ("InstanceNumber", "Instance Number"),
    ("AcquisitionNumber", "Acquisition Number"),
    ("NumberOfFrames", "Number of Frames"),
)
# "Same instance" is decided on these values plus the pixel data (or, for an object without pixels, the whole
# data set), never on the file bytes: the Part-10 header a C-STORE receiver builds differs from the sender's file.
_CONTENT_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
)
# The first bytes of one compressed frame, by transfer syntax family: a frame that does not start like its
# codestream (a fragment of zeros, say) cannot be decoded, so it is refused at ingest instead of failing each read.
_JPEG_SOI = b"\xff\xd8"
_J2K_SOC = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "
_JPEG_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
     "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
)  # fmt: skip
_J2K_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"}
)
_RLE_SYNTAX = "1.2.840.10008.1.2.5"


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_rows: int = 16384
    max_columns: int = 16384
    max_frames: int = 5000
    max_pixel_bytes: int = 2 * 1024**3


class InvalidDicom(ValueError):
    """The file is refused. `reason` is a sentence for a person, free of patient data; `kind` is the class of
    refusal for machines (the STOW-RS failure code): too_large, not_dicom, unsupported_syntax, unreadable or
    invalid. It is read off the reason here, where every reason is written."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def kind(self) -> str:
        text = self.reason.lower()
        if "too large" in text:
            return "too_large"
        if text.startswith(("not a dicom", "invalid transfer syntax")):
            return "not_dicom"
        if text.startswith("unsupported transfer syntax"):
            return "unsupported_syntax"
        if text.startswith("unreadable"):
            return "unreadable"
        return "invalid"


@dataclass(frozen=True)
class ParsedInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: date | None
    patient_sex: str
    study_date: date | None
    study_time: time | None
    accession_number: str
    study_description: str
    referring_physician: str
    modality: str
    series_description: str
    series_number: int | None
    instance_number: int | None
    rows: int
    columns: int
    frames: int
    bits_allocated: int
    samples_per_pixel: int
    is_image: bool
    content_sha256: str = ""


def parse(
    data: bytes, *, limits: Limits, hashed: bool = True, pixels: bool = True
) -> tuple[ParsedInstance, pydicom.Dataset]:
    """Validate `data` as one DICOM Part-10 file and return its index fields and the pydicom data set.

    Raises InvalidDicom for anything the archive must not store. Pixel data is never decoded here.
    With `hashed` false, `content_sha256` is left empty: every value the hash reads is still read and converted
    (so the verdict is the same), only the SHA-256 over them and the pixel data is not taken (about 0.3 ms of CPU
    per 0.5 MB CT); the ingest worker asks for it only when an instance of the same UID is already stored.
    With `pixels` false, pydicom reads the data set only up to its pixel data (`stop_before_pixels`) when that is
    the data set's last element, as it nearly always is, and the checks and the hash read the pixel data's value
    off the walked buffer instead (the same bytes pydicom would give: native pixel data as a view, without the
    0.5 MB copy of a CT, compressed pixel data as bytes); the returned data set then lacks the pixel data element.
    The verdict and the hash are the same either way; with anything after the pixel data (trailing padding, a
    second pixel data element), the whole data set is read as with `pixels` true.
    """
    if len(data) > limits.max_bytes:
        raise InvalidDicom(f"file too large: {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes")
    if len(data) < _PREAMBLE_LENGTH + len(_MAGIC) or data[_PREAMBLE_LENGTH : _PREAMBLE_LENGTH + 4] != _MAGIC:
        raise InvalidDicom("not a DICOM Part-10 file: no DICM marker at offset 128")

    view = memoryview(data)
    dataset_start, meta = _walk_file_meta(view)
    transfer_syntax = _transfer_syntax(view, meta)
    body = view[dataset_start:]
    if transfer_syntax.is_deflated:
        body = memoryview(_inflate(body, limit=limits.max_bytes))
    walker = _Walker(body, implicit=transfer_syntax.is_implicit_VR, little=transfer_syntax.is_little_endian)
    walker.dataset()
    pixel_value: tuple[int, Any] | None = None
    if not pixels and walker.pixels is not None and not walker.after_pixels:
        tag, start, end = walker.pixels
        value: bytes | memoryview = body[start:end]
        if tag == _PIXEL_DATA and transfer_syntax.is_encapsulated:
            value = bytes(value)  # compressed pixel data is read as fragments from bytes, as pydicom gives it
        pixel_value = (tag, value)

    try:
        ds = pydicom.dcmread(BytesIO(data), force=False, stop_before_pixels=pixel_value is not None)
        values = _Values(ds, pixels=pixel_value)
        parsed = _validated(values, transfer_syntax, limits)
        texts = _content_texts(values)
        if not hashed:
            return parsed, ds
        return replace(parsed, content_sha256=_content_hash(values, texts, body=body)), ds
    except InvalidDicom:
        raise
    except Exception as exc:
        # pydicom converts values lazily, so a malformed value can fail anywhere below; the caller is owed a verdict.
        raise InvalidDicom(f"unreadable DICOM data ({type(exc).__name__})") from exc


def study_instance_uid_peek(data: bytes) -> str:
    """The Study Instance UID of a Part-10 file, read off the element headers of its data set up to that tag
    (`header_values_peek`), without pydicom and without looking at any value but this one (about 0.02 ms for a CT
    against 0.15 ms for pydicom's `dcmread(stop_before_pixels=True, specific_tags=...)`), or "" when there is none
    or the file cannot be walked that far here (a deflated or big endian data set, a damaged header). For a door's
    receipt (the key a quarantined copy is sealed under), never for a verdict: `parse` checks the whole file."""
    return (header_values_peek(data, (_STUDY_INSTANCE_UID,)) or {}).get(_STUDY_INSTANCE_UID, "")


def header_values_peek(data: bytes, tags: tuple[int, ...]) -> dict[int, str] | None:
    """The values of the data set's elements `tags` (text elements before the pixel data, such as UIDs) as text,
    read off the element headers, without pydicom (about 0.03 ms for a CT's
    four identifying UIDs against 0.45 ms for `dcmread(stop_before_pixels=True, specific_tags=...)`); a tag absent
    from the data set is absent from the answer. None when the file cannot be walked that far here (not Part-10,
    a deflated or big endian data set, a damaged header): the caller asks pydicom then. Values are decoded as ASCII
    with trailing NULs and spaces stripped (enough for UIDs and codes, which is what it is for); never a verdict on
    the file: `parse` checks all of it."""
    try:
        if len(data) < _PREAMBLE_LENGTH + len(_MAGIC) or data[_PREAMBLE_LENGTH : _PREAMBLE_LENGTH + 4] != _MAGIC:
            return None
        view = memoryview(data)
        start, meta = _walk_file_meta(view)
        syntax = _transfer_syntax(view, meta)
        if syntax.is_deflated or not syntax.is_little_endian:
            return None
        wanted, last = set(tags), max(tags)
        walker = _Walker(view[start:], implicit=syntax.is_implicit_VR, little=True)
        found: dict[int, str] = {}
        pos, end = 0, len(walker.buf)
        while pos < end and len(found) < len(wanted):
            tag, length, value = walker.header(pos)
            if tag > last:  # elements come in ascending tag order
                break
            if tag in wanted:
                if length == _UNDEFINED or value + length > end:
                    return None
                found[tag] = bytes(walker.buf[value : value + length]).rstrip(b"\x00 ").decode("ascii")
            pos = walker.items(value, tag, depth=1) if length == _UNDEFINED else value + length
        return found
    except (InvalidDicom, UnicodeDecodeError, struct_error, ValueError):
        return None


def content_hash(ds: pydicom.Dataset, *, body: bytes | memoryview) -> str:
    """The sha256 that decides whether two objects are the same instance: the identifying and pixel-describing
    attributes (as values, so padding and VR encoding do not count) and the pixel data as stored; for an object
    without pixel data, its whole data set (`body`, everything after the file meta information)."""
    values = _Values(ds)
    return _content_hash(values, _content_texts(values), body=body)


def _content_texts(values: _Values) -> dict[str, str]:
    return {keyword: _text(values, keyword) for keyword in _CONTENT_ATTRIBUTES}


def _content_hash(values: _Values, texts: dict[str, str], *, body: bytes | memoryview) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(texts, sort_keys=True).encode())
    keyword = next((k for k in _PIXEL_DATA_TAGS if k in values), None)
    if keyword is None:
        digest.update(b"\x00dataset\x00")
        digest.update(body)
    else:
        digest.update(f"\x00{keyword}\x00".encode())
        digest.update(values.get(keyword) or b"")
    return digest.hexdigest()


class _Values:
    """A data set's values as `Dataset.get(keyword)` gives them, each looked up once per parse: the checks, the
    index fields and the content hash ask for the same few dozen attributes about seventy times, and each of
    pydicom's look-ups goes through its keyword table, its tag objects' Python comparisons and its element
    wrappers (about 0.3 ms of the worker's CPU per CT instance, docs/BENCHMARKS.md, h4 branch, session 5).
    pydicom keeps an element converted once it was read, so a second `get` gives the same object: the answer
    is the same; an element that fails to convert raises the same exception again, as a second `get` would."""

    __slots__ = ("_got", "_has", "ds", "pixel_tag")

    def __init__(self, ds: pydicom.Dataset, *, pixels: tuple[int, Any] | None = None) -> None:
        """`pixels`: (tag, value) of the pixel data element when `ds` was read without it (`parse`, `pixels`
        false): looked up and tested for here as if it were in the data set."""
        self.ds = ds
        self._got: dict[str, tuple[Any, BaseException | None]] = {}
        self._has: dict[str, bool] = {}
        self.pixel_tag: int | None = None
        if pixels is not None:
            self.pixel_tag, value = pixels
            keyword = _PIXEL_KEYWORD_OF[self.pixel_tag]
            self._got[keyword], self._has[keyword] = (value, None), True

    def tags(self) -> list[BaseTag]:
        """The data set's tags, the pixel data's among them when it was read without it."""
        tags = list(self.ds.keys())
        return tags if self.pixel_tag is None else [*tags, BaseTag(self.pixel_tag)]

    def get(self, keyword: str) -> Any:
        try:
            value, error = self._got[keyword]
        except KeyError:
            try:
                value, error = self._read(keyword), None
            except Exception as exc:  # raised again at each look-up, as pydicom would
                value, error = None, exc
            self._got[keyword] = (value, error)
        if error is not None:
            raise error
        return value

    def _read(self, keyword: str) -> Any:
        """`Dataset.get(keyword)`, by the keyword's tag (looked up once per process): what `Dataset.__getattr__`
        does, without its keyword look-up and tag conversion each time (about 0.1 ms of the worker's CPU per CT,
        docs/BENCHMARKS.md, h2 branch, session 6). An element that is absent, or whose value raises AttributeError,
        is None, as `Dataset.get` makes it; a name that is no keyword goes to `Dataset.get` itself.

        An element still raw (as read, not yet converted) is converted here as `Dataset.__getitem__` converts it
        (`convert_raw_data_element`, with the same character set) and stored in the data set with `ds[tag] = ...`
        as it stores it, without its three look-ups of the element again (each a `Tag()` and a dictionary look-up
        whose key comparisons are pydicom's Python `BaseTag.__eq__`): about 0.1 ms of the worker's CPU per CT
        (docs/BENCHMARKS.md, h1 branch, session 7). What needs more than that is left to `Dataset.__getitem__`
        itself, which converts the raw element again: a value not read yet (deferred), a sequence (its pixel
        representation handed down), an ambiguous VR (corrected by the data set's other values)."""
        tag = _tag_of(keyword)
        if tag is None:
            return self.ds.get(keyword)
        ds = self.ds
        try:
            element = ds._dict.get(tag)
            if element is None:
                return None
            if type(element) is RawDataElement and (element.value is not None or element.length == 0):
                encoding = (
                    _DEFAULT_ENCODING if tag == _CHARACTER_SET else ds.original_character_set or ds._character_set
                )
                converted = convert_raw_data_element(element, encoding=encoding, ds=ds)
                if converted.VR != VR.SQ and converted.VR not in AMBIGUOUS_VR:
                    ds[tag] = converted
                    return converted.value
            return ds[tag].value
        except AttributeError:
            return None

    def __contains__(self, keyword: str) -> bool:
        try:
            return self._has[keyword]
        except KeyError:
            tag = _tag_of(keyword)
            has = self._has[keyword] = (keyword if tag is None else tag) in self.ds
            return has


_TAGS: dict[str, BaseTag | None] = {}
_CHARACTER_SET = 0x00080005  # Specific Character Set: read in the default encoding, as Dataset.__getitem__ does


def _tag_of(keyword: str) -> BaseTag | None:
    """The tag of a data dictionary keyword (None for a name that is none), kept once looked up."""
    try:
        return _TAGS[keyword]
    except KeyError:
        found = tag_for_keyword(keyword)
        tag = _TAGS[keyword] = Tag(found) if found is not None else None
        return tag


def _validated(values: _Values, transfer_syntax: UID, limits: Limits) -> ParsedInstance:
    ds = values.ds
    _check_sequence_depth(ds)
    for keyword, name in _REQUIRED_UIDS:
        _require_uid(values, keyword, name)

    for keyword, name in _INDEXED_INTEGERS:
        _check_integer(values, keyword, name)

    is_image = any(keyword in values for keyword in _PIXEL_DATA_TAGS)
    if not is_image and "Image Storage" in UID(str(values.get("SOPClassUID"))).name:
        raise _missing(values, "PixelData", "Pixel Data")
    rows = columns = frames = bits = samples = 0
    if is_image:
        rows, columns, frames, bits, samples = _image_geometry(values, limits)
        _check_pixel_data(
            values, transfer_syntax, rows=rows, columns=columns, frames=frames, bits=bits, samples=samples
        )

    return ParsedInstance(
        sop_class_uid=str(values.get("SOPClassUID")),
        sop_instance_uid=str(values.get("SOPInstanceUID")),
        study_instance_uid=str(values.get("StudyInstanceUID")),
        series_instance_uid=str(values.get("SeriesInstanceUID")),
        transfer_syntax_uid=str(transfer_syntax),
        patient_id=_text(values, "PatientID"),
        patient_name=_text(values, "PatientName"),
        patient_birth_date=_date(values, "PatientBirthDate"),
        patient_sex=_text(values, "PatientSex"),
        study_date=_date(values, "StudyDate"),
        study_time=_time(values, "StudyTime"),
        accession_number=_text(values, "AccessionNumber"),
        study_description=_text(values, "StudyDescription"),
        referring_physician=_text(values, "ReferringPhysicianName"),
        modality=_text(values, "Modality"),
        series_description=_text(values, "SeriesDescription"),
        series_number=_int(values, "SeriesNumber"),
        instance_number=_int(values, "InstanceNumber"),
        rows=rows,
        columns=columns,
        frames=frames,
        bits_allocated=bits,
        samples_per_pixel=samples,
        is_image=is_image,
    )


# --- structure -------------------------------------------------------------------------------------------------


def _check_sequence_depth(ds: pydicom.Dataset) -> None:
    """The structure walk enters only undefined-length sequences; nests of defined-length ones are measured here,
    on what pydicom read, without recursion (de-identification and rendering walk sequences recursively later)."""
    stack = [(ds, 0)]
    while stack:
        dataset, depth = stack.pop()
        # keys(), not the Dataset itself: iterating a Dataset would decode every element
        for tag in list(dataset.keys()):
            element = dataset.get_item(tag)
            if element is None or element.VR != "SQ":
                continue
            if depth + 1 > _MAX_SEQUENCE_DEPTH:
                raise InvalidDicom(f"damaged: sequences are nested more than {_MAX_SEQUENCE_DEPTH} deep")
            stack.extend((item, depth + 1) for item in dataset[tag].value)


def _element_name(tag: int) -> str:
    try:
        return f"{dictionary_description(tag)} {Tag(tag)}"
    except KeyError:
        return f"element {Tag(tag)}"


class _Walker:
    """Walks data elements by their declared lengths and raises InvalidDicom where the bytes run out.

    Only undefined-length values (sequences, encapsulated pixel data) are entered; everything else is skipped.
    """

    def __init__(self, buf: memoryview, *, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.implicit = implicit
        self.endian = "<" if little else ">"
        # The data set's first top-level pixel data element (any of _PIXEL_DATA_TAG_SET), as pydicom reads its
        # value: (tag, where the value starts, where it ends; for an undefined length, before the sequence
        # delimiter); and whether any element follows it (`dataset` at depth 0 sets both).
        self.pixels: tuple[int, int, int] | None = None
        self.after_pixels = False

    def header(self, pos: int) -> tuple[int, int, int]:
        """(tag, length, value position) of the element header at `pos`."""
        buf, end = self.buf, len(self.buf)
        if pos + 8 > end:
            raise InvalidDicom("truncated: the file ends inside a data element header")
        group, elem = unpack_from(self.endian + "HH", buf, pos)
        tag = group << 16 | elem
        if self.implicit or group == 0xFFFE:
            return tag, unpack_from(self.endian + "L", buf, pos + 4)[0], pos + 8
        vr = bytes(buf[pos + 4 : pos + 6])
        if vr in _LONG_LENGTH_VRS:
            if pos + 12 > end:
                raise InvalidDicom(f"truncated: the file ends inside the header of {_element_name(tag)}")
            return tag, unpack_from(self.endian + "L", buf, pos + 8)[0], pos + 12
        if not (b"AA" <= vr <= b"ZZ"):
            # pydicom reads a non-letter VR as a switch to implicit VR; walk it the same way.
            return tag, unpack_from(self.endian + "L", buf, pos + 4)[0], pos + 8
        return tag, unpack_from(self.endian + "H", buf, pos + 6)[0], pos + 8

    def dataset(self, pos: int = 0, *, depth: int = 0) -> int:
        """Walk a data set from `pos`: to the end of the buffer, or (depth > 0) to its item delimiter."""
        end = len(self.buf)
        while pos < end:
            tag, length, value = self.header(pos)
            if tag == _ITEM_END:
                return value
            if not depth and self.pixels is not None:
                self.after_pixels = True
            if length == _UNDEFINED:
                pos = self.items(value, tag, depth=depth + 1)
                if not depth and tag in _PIXEL_DATA_TAG_SET and self.pixels is None:
                    self.pixels = (tag, value, pos - 8)  # pydicom's value stops before the sequence delimiter
                continue
            if value + length > end:
                if tag == _PIXEL_DATA:
                    raise InvalidDicom(f"truncated: pixel data has {end - value} of {length} bytes")
                raise InvalidDicom(f"truncated: the file ends inside {_element_name(tag)}")
            pos = value + length
            if not depth and tag in _PIXEL_DATA_TAG_SET and self.pixels is None:
                self.pixels = (tag, value, pos)
        if depth:
            raise InvalidDicom("truncated: the file ends inside a sequence item")
        return pos

    def items(self, pos: int, parent: int, *, depth: int) -> int:
        """Walk the items of an undefined-length value up to and past its sequence delimiter."""
        if depth > _MAX_SEQUENCE_DEPTH:
            raise InvalidDicom(f"damaged: sequences are nested more than {_MAX_SEQUENCE_DEPTH} deep")
        what = "compressed pixel data" if parent == _PIXEL_DATA else _element_name(parent)
        end = len(self.buf)
        while True:
            if pos + 8 > end:
                raise InvalidDicom(f"truncated: the file ends before the end of {what}")
            group, elem = unpack_from(self.endian + "HH", self.buf, pos)
            tag = group << 16 | elem
            length = unpack_from(self.endian + "L", self.buf, pos + 4)[0]
            value = pos + 8
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM:
                raise InvalidDicom(f"damaged: unexpected {_element_name(tag)} inside {what}")
            if length == _UNDEFINED:
                pos = self.dataset(value, depth=depth)
                continue
            if value + length > end:
                raise InvalidDicom(f"truncated: an item of {what} has {end - value} of {length} bytes")
            pos = value + length


def _walk_file_meta(buf: memoryview) -> tuple[int, dict[int, bytes]]:
    """Walk group 0002 (always explicit VR little endian). Returns where the data set starts and the meta values."""
    walker = _Walker(buf, implicit=False, little=True)
    pos = _PREAMBLE_LENGTH + len(_MAGIC)
    meta: dict[int, bytes] = {}
    while pos + 2 <= len(buf) and unpack_from("<H", buf, pos)[0] == 0x0002:
        try:
            tag, length, value = walker.header(pos)
        except InvalidDicom:
            length = value = _UNDEFINED
        if length == _UNDEFINED or value + length > len(buf):
            raise InvalidDicom("truncated: the file ends inside the file meta information")
        meta[tag] = bytes(buf[value : value + length])
        pos = value + length
    return pos, meta


def _transfer_syntax(buf: memoryview, meta: dict[int, bytes]) -> UID:
    raw = meta.get(0x00020010)
    if raw is None:
        raise InvalidDicom("missing required attribute Transfer Syntax UID (file meta information)")
    uid = UID(raw.rstrip(b"\x00 ").decode("ascii", errors="replace"))
    if not uid.is_valid:
        raise InvalidDicom("invalid Transfer Syntax UID in the file meta information")
    if uid.is_private or not uid.is_transfer_syntax:
        raise InvalidDicom(f"unsupported transfer syntax {uid}")
    return uid


def _inflate(body: memoryview, *, limit: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise InvalidDicom("damaged: the deflated data set cannot be inflated") from exc
    if inflater.unconsumed_tail:
        raise InvalidDicom(f"file too large: the deflated data set inflates past {limit} bytes")
    if not inflater.eof:
        raise InvalidDicom("truncated: the deflated data set ends early")
    return out


# --- attributes ------------------------------------------------------------------------------------------------


def _missing(values: _Values, keyword: str, name: str) -> InvalidDicom:
    # Elements are stored in ascending tag order, so a data set that stops before the missing tag was likely cut.
    tags = values.tags()
    cut = not tags or tag_for_keyword(keyword) > max(tags)
    return InvalidDicom(f"missing required attribute {name}" + (" (the file may be truncated)" if cut else ""))


def _require_uid(values: _Values, keyword: str, name: str) -> None:
    value = values.get(keyword)
    if value is None or str(value).strip() == "":
        raise _missing(values, keyword, name)
    if not UID(str(value)).is_valid:
        raise InvalidDicom(f"invalid {name}: not a valid DICOM UID")


def _check_integer(values: _Values, keyword: str, name: str) -> None:
    """Refuse an integer attribute that is present but outside the signed 32-bit range of an IS value."""
    element = values.get(keyword)
    if element in (None, ""):
        return
    numbers = element if isinstance(element, MultiValue | list | tuple) else [element]
    for value in numbers:
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            continue  # not a number: the index leaves it empty, as before
        if not _IS_MIN <= number <= _IS_MAX:
            raise InvalidDicom(f"invalid {name}: the value is outside the range of a DICOM integer (-2^31 to 2^31-1)")


def _image_geometry(values: _Values, limits: Limits) -> tuple[int, int, int, int, int]:
    """Rows, columns, frames, bits allocated and samples per pixel, checked against the limits from the header."""
    numbers = []
    for keyword, name in _IMAGE_ATTRIBUTES:
        if values.get(keyword) in (None, ""):
            raise _missing(values, keyword, name)
        value = _int(values, keyword)
        if value is None or value < 1:
            raise InvalidDicom(f"invalid {name}")
        numbers.append(value)
    rows, columns, bits, samples = numbers
    frames = _int(values, "NumberOfFrames") if values.get("NumberOfFrames") not in (None, "") else 1
    if frames is None or frames < 1:
        raise InvalidDicom("invalid Number of Frames")
    if bits not in (1, 8, 16, 32, 64) or samples > 4:
        raise InvalidDicom(f"unsupported pixel format: {bits} bits allocated, {samples} samples per pixel")
    if "PixelData" in values:
        _check_pixel_format(values, bits=bits, columns=columns)
    pixel_bytes = math.ceil(rows * columns * frames * samples * bits / 8)
    if (
        rows > limits.max_rows
        or columns > limits.max_columns
        or frames > limits.max_frames
        or pixel_bytes > limits.max_pixel_bytes
    ):
        raise InvalidDicom(f"image too large: {rows} x {columns} x {frames} frames exceeds the limits")
    return rows, columns, frames, bits, samples


def _check_pixel_format(values: _Values, *, bits: int, columns: int) -> None:
    """Bits Stored and High Bit must fit in Bits Allocated (PS3.5 8.1.1); a renderer trusts them."""
    stored = _int(values, "BitsStored") if values.get("BitsStored") not in (None, "") else bits
    if stored is None or not 1 <= stored <= bits:
        raise InvalidDicom(f"invalid pixel format: Bits Stored must be from 1 to Bits Allocated ({bits})")
    if values.get("HighBit") not in (None, ""):
        high = _int(values, "HighBit")
        if high is None or not stored - 1 <= high < bits:
            raise InvalidDicom("invalid pixel format: High Bit must lie between Bits Stored - 1 and Bits Allocated - 1")
    if _text(values, "PhotometricInterpretation") in ("YBR_FULL_422", "YBR_PARTIAL_422") and columns % 2:
        raise InvalidDicom("invalid pixel format: 4:2:2 subsampled colour needs an even number of Columns")


def _native_pixel_bytes(values: _Values, *, rows: int, columns: int, frames: int, bits: int, samples: int) -> int:
    if samples == 3 and _text(values, "PhotometricInterpretation") == "YBR_FULL_422":
        return math.ceil(rows * columns * 2 * frames * bits / 8)  # two samples per pixel once subsampled
    return math.ceil(rows * columns * frames * samples * bits / 8)


def _check_pixel_data(
    values: _Values, transfer_syntax: UID, *, rows: int, columns: int, frames: int, bits: int, samples: int
) -> None:
    ds = values.ds
    if "PixelData" not in values or not transfer_syntax.is_encapsulated:
        keyword = next(k for k in _PIXEL_DATA_TAGS if k in values)
        if keyword == "PixelData":
            expected = _native_pixel_bytes(
                values, rows=rows, columns=columns, frames=frames, bits=bits, samples=samples
            )
        else:
            expected = math.ceil(rows * columns * frames * samples * bits / 8)
        present = len(values.get(keyword) or b"")
        if present < expected:
            raise InvalidDicom(f"truncated: pixel data has {present} of {expected} bytes")
        if present > expected + (expected % 2) + 2:
            # A value is padded to an even length, no more: extra bytes mean the attributes describe other pixels.
            raise InvalidDicom(f"invalid pixel data: {present} bytes where its attributes describe {expected}")
        return
    if transfer_syntax.name.startswith(("MPEG", "HEVC")):
        return  # a video stream spans fragments freely; the walk already checked it is whole
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    endianness = "<" if transfer_syntax.is_little_endian else ">"
    pixel_data = values.get("PixelData")
    stream = BytesIO(pixel_data)
    try:
        basic_offsets = parse_basic_offsets(stream, endianness=endianness)
        fragments, _ = parse_fragments(stream, endianness=endianness)
    except (ValueError, struct_error) as exc:
        raise InvalidDicom("damaged: the compressed pixel data is not a sequence of fragments") from exc
    if not extended and not basic_offsets and fragments < frames:
        raise InvalidDicom(f"truncated: compressed pixel data has {fragments} fragment(s) for {frames} frames")
    found = 0
    try:
        for fragments_of_frame in generate_fragmented_frames(
            pixel_data,
            number_of_frames=frames,
            extended_offsets=extended,
            endianness=endianness,
        ):
            found += 1
            head = b"".join(fragments_of_frame[:2])[:12]
            if not _starts_like_its_codestream(str(transfer_syntax), head):
                raise InvalidDicom(
                    f"damaged: frame {found} of the compressed pixel data is not a {transfer_syntax.name} codestream"
                )
    except (ValueError, StopIteration, struct_error) as exc:
        if isinstance(exc, InvalidDicom):
            raise
        raise InvalidDicom(f"damaged: the compressed pixel data does not hold {frames} frame(s)") from exc
    if found < frames:
        raise InvalidDicom(f"truncated: compressed pixel data has {found} of {frames} frames")


def _starts_like_its_codestream(syntax: str, head: bytes) -> bool:
    if syntax in _JPEG_SYNTAXES:
        return head.startswith(_JPEG_SOI)
    if syntax in _J2K_SYNTAXES:
        return head.startswith((_J2K_SOC, _JP2_SIGNATURE))
    if syntax == _RLE_SYNTAX:
        # The RLE header: the number of segments (1 to 15), as a little-endian 32-bit value (PS3.5 G.5).
        return len(head) >= 4 and 1 <= int.from_bytes(head[:4], "little") <= 15
    return True  # deflated image syntaxes and others pydicom has no decoder table for: not judged here


def _text(values: _Values, keyword: str) -> str:
    try:
        value: Any = values.get(keyword)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, UnicodeError):
        return ""  # an optional attribute pydicom cannot convert is left out, never fatal
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _int(values: _Values, keyword: str) -> int | None:
    try:
        return int(values.get(keyword))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, UnicodeError):
        return None


def _date(values: _Values, keyword: str) -> date | None:
    raw = _text(values, keyword)
    try:
        value = DA(raw)
    except (TypeError, ValueError):
        return None
    return None if value is None else date(value.year, value.month, value.day)


def _time(values: _Values, keyword: str) -> time | None:
    raw = _text(values, keyword)
    try:
        value = TM(raw)
    except (TypeError, ValueError):
        return None
    return None if value is None else time(value.hour, value.minute, value.second, value.microsecond)
