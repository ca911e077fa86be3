from __future__ import annotations

import io
import random
import struct
from datetime import date, time

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import Decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from studies.dicom.parse import InvalidDicom, Limits, parse, study_instance_uid_peek
from studies.dicom.synthetic import make_instance, synthetic_pixels
from tests.dicom_files import resaved

LIMITS = Limits(max_bytes=64 * 1024 * 1024)
PATIENT_DATA = ("SYN0001", "SYNTHETIC", "PATIENT", "ACC0001", "REFERRER", "19700101")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _refused(data: bytes, limits: Limits = LIMITS) -> str:
    with pytest.raises(InvalidDicom) as caught:
        parse(data, limits=limits)
    reason = caught.value.reason
    assert reason == str(caught.value)
    assert not any(fragment in reason for fragment in PATIENT_DATA), reason
    return reason


def _pixel_data_offset(data: bytes) -> int:
    """Byte offset of the (7FE0,0010) element header in an explicit VR little endian file."""
    return data.rindex(b"\xe0\x7f\x10\x00")


# --- accepted ----------------------------------------------------------------------------------------------------


def test_single_frame_fields():
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    data = make_instance(study_uid=study, series_uid=series, sop_uid=sop, instance_number=7, series_number=3)

    parsed, ds = parse(data, limits=LIMITS)

    assert parsed.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert (parsed.study_instance_uid, parsed.series_instance_uid, parsed.sop_instance_uid) == (study, series, sop)
    assert parsed.transfer_syntax_uid == ExplicitVRLittleEndian
    assert parsed.patient_id == "SYN0001"
    assert parsed.patient_name == "SYNTHETIC^PATIENT"
    assert parsed.patient_birth_date == date(1970, 1, 1)
    assert parsed.patient_sex == "O"
    assert parsed.study_date == date(2024, 1, 2)
    assert parsed.study_time == time(9, 30)
    assert parsed.accession_number == "ACC0001"
    assert parsed.referring_physician == "REFERRER^DEMO"
    assert parsed.study_description == "Synthetic study"
    assert parsed.series_description == "Synthetic series"
    assert parsed.modality == "CT"
    assert (parsed.series_number, parsed.instance_number) == (3, 7)
    assert (parsed.rows, parsed.columns, parsed.frames) == (64, 64, 1)
    assert (parsed.bits_allocated, parsed.samples_per_pixel, parsed.is_image) == (16, 1, True)
    assert ds.SOPInstanceUID == sop


def test_multi_frame():
    parsed, _ = parse(make_instance(frames=5, rows=32, columns=48, bits=8), limits=LIMITS)
    assert (parsed.rows, parsed.columns, parsed.frames, parsed.bits_allocated) == (32, 48, 5, 8)
    assert parsed.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7.2"


def test_implicit_vr():
    parsed, _ = parse(make_instance(transfer_syntax=ImplicitVRLittleEndian, frames=2), limits=LIMITS)
    assert parsed.transfer_syntax_uid == ImplicitVRLittleEndian
    assert parsed.frames == 2


def test_rgb():
    parsed, _ = parse(make_instance(photometric="RGB"), limits=LIMITS)
    assert (parsed.samples_per_pixel, parsed.bits_allocated) == (3, 8)


@pytest.mark.parametrize(
    ("syntax", "bits"), [(RLELossless, 16), (RLELossless, 8), (JPEG2000Lossless, 16), (JPEGBaseline8Bit, 8)]
)
@pytest.mark.parametrize("frames", [1, 3])
def test_compressed_parses_and_decodes(syntax: str, bits: int, frames: int):
    parsed, ds = parse(make_instance(transfer_syntax=syntax, bits=bits, frames=frames), limits=LIMITS)

    assert parsed.transfer_syntax_uid == syntax
    assert parsed.frames == frames
    pixels = ds.pixel_array
    expected = synthetic_pixels(rows=64, columns=64, frames=frames, bits=bits)
    assert pixels.shape == expected.shape
    if syntax == JPEGBaseline8Bit:
        assert abs(float(pixels.mean()) - float(expected.mean())) < 3  # lossy
    else:
        assert (pixels == expected).all()


def test_deflated_transfer_syntax():
    data = make_instance(rows=16, columns=16, bits=8)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)

    parsed, _ = parse(out.getvalue(), limits=LIMITS)

    assert parsed.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert "truncated" in _refused(out.getvalue()[:-20])


def test_odd_length_pixel_data_is_padded_not_truncated():
    parsed, ds = parse(make_instance(rows=3, columns=5, bits=8), limits=LIMITS)
    assert len(ds.PixelData) == 16  # 15 bytes, padded to even
    assert parsed.rows == 3


def test_bad_dates_and_numbers_are_lenient():
    data = resaved(make_instance(), StudyDate="20240230", StudyTime="99", PatientBirthDate="unknown", SeriesNumber=None)
    parsed, _ = parse(data, limits=LIMITS)
    assert (parsed.study_date, parsed.study_time, parsed.patient_birth_date) == (None, None, None)
    assert parsed.series_number is None


def test_non_image_object():
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "SYN0002"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)

    parsed, _ = parse(out.getvalue(), limits=LIMITS)

    assert parsed.is_image is False
    assert (parsed.rows, parsed.columns, parsed.frames) == (0, 0, 0)
    assert parsed.modality == "SR"


# --- refused: not DICOM ------------------------------------------------------------------------------------------


PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)
EXE = b"MZ\x90\x00" + bytes(60) + b"This program cannot be run in DOS mode." + bytes(400)


@pytest.mark.parametrize("data", [PNG, EXE, b"", b"DICM", bytes(131), b"plain text " * 40], ids=repr)
def test_not_dicom(data: bytes):
    assert _refused(data) == "not a DICOM Part-10 file: no DICM marker at offset 128"


def test_dicm_marker_then_garbage():
    assert _refused(bytes(128) + b"DICM" + b"\x01\x02garbage" * 30).startswith(("truncated", "missing", "unreadable"))


def test_unknown_transfer_syntax():
    data = make_instance()
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    assert _refused(out.getvalue()) == "unsupported transfer syntax 1.2.3.4.5.6"


# --- refused: attributes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "name"),
    [
        ("SOPInstanceUID", "SOP Instance UID"),
        ("SOPClassUID", "SOP Class UID"),
        ("StudyInstanceUID", "Study Instance UID"),
        ("SeriesInstanceUID", "Series Instance UID"),
    ],
)
def test_missing_required_uid(keyword: str, name: str):
    assert _refused(resaved(make_instance(), **{keyword: None})) == f"missing required attribute {name}"


def test_invalid_uid():
    assert _refused(resaved(make_instance(), SeriesInstanceUID="1.2.abc")) == (
        "invalid Series Instance UID: not a valid DICOM UID"
    )


def test_image_without_rows():
    assert _refused(resaved(make_instance(), Rows=None)) == "missing required attribute Rows"


def test_image_class_without_pixel_data():
    assert _refused(resaved(make_instance(), PixelData=None)) == (
        "missing required attribute Pixel Data (the file may be truncated)"
    )


# --- refused: limits ---------------------------------------------------------------------------------------------


def test_file_size_limit_comes_first():
    data = make_instance()
    assert _refused(data, Limits(max_bytes=len(data) - 1)).startswith("file too large")
    assert _refused(PNG, Limits(max_bytes=10)).startswith("file too large")


def test_huge_dimensions_refused_without_decoding(monkeypatch: pytest.MonkeyPatch):
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(Decoder, "as_array", no_decoding)
    monkeypatch.setattr(Decoder, "iter_array", no_decoding)
    data = resaved(
        make_instance(rows=4, columns=4, bits=8),
        Rows=65535,
        Columns=65535,
        NumberOfFrames=1000,
        SOPClassUID="1.2.840.10008.5.1.4.1.1.7.2",
        PixelData=b"\x00" * 16,
    )
    assert len(data) < 2000

    reason = _refused(data, Limits(max_bytes=10**9))

    assert reason == "image too large: 65535 x 65535 x 1000 frames exceeds the limits"


@pytest.mark.parametrize(
    "limits",
    [
        Limits(max_bytes=10**8, max_rows=63),
        Limits(max_bytes=10**8, max_columns=63),
        Limits(max_bytes=10**8, max_frames=2),
        Limits(max_bytes=10**8, max_pixel_bytes=3 * 64 * 64 * 2 - 1),
    ],
)
def test_each_dimension_limit(limits: Limits):
    assert _refused(make_instance(frames=3), limits) == "image too large: 64 x 64 x 3 frames exceeds the limits"


@pytest.mark.parametrize("frames", [b"0 ", b"-2", b"abc ", b"99999 "])
def test_invalid_number_of_frames(frames: bytes):
    data = make_instance(frames=2)
    element = b"\x28\x00\x08\x00IS\x02\x002 "  # (0028,0008) IS, length 2, "2 "
    assert data.count(element) == 1
    data = data.replace(element, element[:6] + struct.pack("<H", len(frames)) + frames)
    assert _refused(data) in (
        "invalid Number of Frames",
        "image too large: 64 x 64 x 99999 frames exceeds the limits",
    )


# --- refused: truncated ------------------------------------------------------------------------------------------


def test_truncated_native_pixel_data_reason():
    data = make_instance(rows=64, columns=64, bits=16)  # 8192 pixel bytes, last in the file
    assert _refused(data[: len(data) - 4465]) == "truncated: pixel data has 3727 of 8192 bytes"


def test_pixel_data_shorter_than_the_header_says():
    # A consistent element (its length matches what is there) that holds fewer bytes than rows x columns needs.
    data = resaved(make_instance(rows=64, columns=64, bits=8), PixelData=b"\x00" * 1000)
    assert _refused(data) == "truncated: pixel data has 1000 of 4096 bytes"


def test_truncated_mid_header_element():
    data = make_instance()
    cut = data.index(b"Synthetic study") + 4
    assert _refused(data[:cut]) == "truncated: the file ends inside Study Description (0008,1030)"


def test_truncated_inside_an_element_header():
    data = make_instance()
    cut = _pixel_data_offset(data) + 5
    assert _refused(data[:cut]) == "truncated: the file ends inside a data element header"


def test_truncated_at_an_element_boundary_before_pixel_data():
    data = make_instance()
    assert _refused(data[: _pixel_data_offset(data)]) == (
        "missing required attribute Pixel Data (the file may be truncated)"
    )


def test_truncated_file_meta():
    assert _refused(make_instance()[:150]) == "truncated: the file ends inside the file meta information"


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGBaseline8Bit])
def test_truncated_compressed_stream(syntax: str):
    data = make_instance(transfer_syntax=syntax, bits=8, frames=2)
    assert _refused(data[:-100]).startswith("truncated: an item of compressed pixel data has ")
    # Cut exactly after the last fragment: every fragment is whole, but the sequence delimiter is gone.
    assert _refused(data[:-8]) == "truncated: the file ends before the end of compressed pixel data"


def test_fewer_fragments_than_frames():
    data = make_instance(transfer_syntax=RLELossless, frames=3, bits=8)
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = list(generate_frames(ds.PixelData, number_of_frames=3))
    ds.PixelData = encapsulate(frames[:2], has_bot=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert _refused(out.getvalue()) == "truncated: compressed pixel data has 2 fragment(s) for 3 frames"

    ds.PixelData = encapsulate(frames[:2], has_bot=True)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert _refused(out.getvalue()) == "truncated: compressed pixel data has 2 of 3 frames"


@pytest.mark.parametrize(
    ("syntax", "bits"),
    [(ExplicitVRLittleEndian, 8), (ImplicitVRLittleEndian, 16), (RLELossless, 8), (JPEG2000Lossless, 8)],
)
def test_every_prefix_is_refused(syntax: str, bits: int):
    """No cut of a valid file, at any byte, is accepted as a whole file."""
    side = 32 if syntax == JPEG2000Lossless else 8  # openjpeg's default resolutions need 32 px
    data = make_instance(transfer_syntax=syntax, bits=bits, rows=side, columns=side)
    parse(data, limits=LIMITS)
    for cut in range(len(data)):
        with pytest.raises(InvalidDicom) as caught:
            parse(data[:cut], limits=LIMITS)
        reason = caught.value.reason
        assert reason.startswith(("not a DICOM", "truncated", "missing required attribute")), (cut, reason)
        assert not any(fragment in reason for fragment in PATIENT_DATA)


def test_huge_declared_length_in_header():
    data = bytearray(make_instance())
    at = data.index(b"Synthetic study") - 2  # the 2-byte length of Study Description (LO)
    data[at : at + 2] = struct.pack("<H", 60000)
    assert _refused(bytes(data)).startswith("truncated: the file ends inside")


def _with_undefined_length_sequences() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_instance(bits=8, rows=8, columns=8)))
    code = Dataset()
    code.CodeValue = "X"
    code.CodingSchemeDesignator = "99SYN"
    code.CodeMeaning = "Synthetic"
    code.is_undefined_length_sequence_item = True
    reference = Dataset()
    reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    reference.ReferencedSOPInstanceUID = generate_uid()
    reference.PurposeOfReferenceCodeSequence = Sequence([code])
    reference["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    reference.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence([reference])
    ds["ReferencedImageSequence"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_nested_undefined_length_sequences():
    data = _with_undefined_length_sequences()
    assert data.count(b"\xfe\xff\xdd\xe0") == 2  # two sequence delimiters: the lengths really are undefined
    _, ds = parse(data, limits=LIMITS)
    assert ds.ReferencedImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "X"

    end_of_inner = data.index(b"\xfe\xff\xdd\xe0")
    assert _refused(data[: data.index(b"99SYN") + 2]) == (
        "truncated: the file ends inside Coding Scheme Designator (0008,0102)"
    )
    assert _refused(data[:end_of_inner]) == (
        "truncated: the file ends before the end of Purpose of Reference Code Sequence (0040,A170)"
    )
    assert _refused(data[: end_of_inner + 8]) == "truncated: the file ends inside a sequence item"


def _nested_defined_length(depth: int) -> bytes:
    """Content Sequences nested `depth` deep, each with a defined length (pydicom's default when writing)."""
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
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


def test_deep_defined_length_sequences_are_refused_like_undefined_ones():
    """Found by the DICOM fuzzing (tests/security/test_dicom_fuzz.py): the depth limit held only for undefined-length
    sequences, which the structure walk enters; a nest of defined-length ones went through whole."""
    assert parse(_nested_defined_length(32), limits=LIMITS)[0].sop_instance_uid
    assert _refused(_nested_defined_length(33)) == "damaged: sequences are nested more than 32 deep"
    assert _refused(_nested_defined_length(200)) == "damaged: sequences are nested more than 32 deep"


def test_deflate_bomb_is_refused():
    data = resaved(make_instance(rows=256, columns=256, bits=16), PixelData=bytes(256 * 256 * 2))
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    deflated = out.getvalue()
    assert len(deflated) < 5000

    reason = _refused(deflated, Limits(max_bytes=100_000))

    assert reason == "file too large: the deflated data set inflates past 100000 bytes"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_damaged_headers_give_a_verdict_never_a_crash(syntax: str):
    """Random byte changes in the header either parse or raise InvalidDicom; nothing else escapes."""
    rng = random.Random(20240102)
    base = make_instance(transfer_syntax=syntax, rows=16, columns=16, bits=8, frames=2)
    reasons = []
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(128, 1100)] = rng.randrange(256)
        try:
            parse(bytes(data), limits=LIMITS)
        except InvalidDicom as exc:
            reasons.append(exc.reason)
    assert reasons
    assert not [reason for reason in reasons if any(fragment in reason for fragment in PATIENT_DATA)]


# --- the Study Instance UID at receipt, without pydicom ------------------------------------------------------------


def _with_sequences(data: bytes, *, undefined: bool) -> bytes:
    """The file with a nested sequence before the Study Instance UID, written with undefined or defined lengths."""
    ds = pydicom.dcmread(io.BytesIO(data))
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D0050", "SRT"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    item.AnatomicRegionSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, item])
    for seq in (ds.ReferencedImageSequence, item.AnatomicRegionSequence):
        seq.is_undefined_length = undefined
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda uid: make_instance(study_uid=uid),
        lambda uid: make_instance(study_uid=uid, transfer_syntax=ImplicitVRLittleEndian),
        lambda uid: make_instance(study_uid=uid, transfer_syntax=RLELossless),
        lambda uid: make_instance(study_uid=uid[:-1] + "1"),  # an odd length, padded with a NUL
        lambda uid: _with_sequences(make_instance(study_uid=uid), undefined=True),
        lambda uid: _with_sequences(make_instance(study_uid=uid), undefined=False),
        lambda uid: _with_sequences(
            make_instance(study_uid=uid, transfer_syntax=ImplicitVRLittleEndian), undefined=True
        ),
    ],
)
def test_study_uid_peek_reads_what_pydicom_reads(make):
    data = make(generate_uid())
    expected = pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID
    assert study_instance_uid_peek(data) == expected != ""


def test_study_uid_peek_is_empty_where_there_is_none_or_it_cannot_be_read():
    data = make_instance(study_uid="1.2.3.4")
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.StudyInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    deflated = pydicom.dcmread(io.BytesIO(data))
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated_out = io.BytesIO()
    deflated.save_as(deflated_out, enforce_file_format=True)
    uid_at = data.index(b"1.2.3.4")
    for bad in (
        out.getvalue(),  # no Study Instance UID
        deflated_out.getvalue(),  # not walked
        data[: uid_at + 3],  # cut inside the value
        data[: uid_at - 4],  # cut inside the element header
        b"",
        b"\x00" * 132,  # no DICM marker
        data[:132] + b"\xff" * 40,  # garbage after the marker
    ):
        assert study_instance_uid_peek(bad) == ""


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_values_are_read_by_tag_as_pydicom_gives_them_by_keyword(syntax: str):
    """`parse` reads each value by its keyword's tag (`_Values`), not through `Dataset.get(keyword)`: the same
    value for every attribute it reads (present, absent, empty, a sequence, pixel data whose VR implicit syntax
    leaves ambiguous), and a name that is no keyword still answered by pydicom."""
    from studies.dicom.parse import _CONTENT_ATTRIBUTES, _Values

    data = resaved(make_instance(transfer_syntax=syntax), AccessionNumber="", StudyDescription="x\\y")
    keywords = [*_CONTENT_ATTRIBUTES, "PixelData", "StudyDescription", "ReferencedImageSequence", "NotAKeyword"]
    by_tag, by_keyword = _Values(pydicom.dcmread(io.BytesIO(data))), pydicom.dcmread(io.BytesIO(data))
    for keyword in keywords:
        assert by_tag.get(keyword) == by_keyword.get(keyword), keyword
        assert (keyword in by_tag) == (keyword in by_keyword), keyword
    assert by_tag.get("PixelData") is not None
    assert by_tag.get("NotAKeyword") is None
    assert by_tag.get("AccessionNumber") == ""


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_raw_values_are_converted_and_kept_as_pydicom_converts_and_keeps_them(syntax: str):
    """`_Values` converts a raw element itself (as `Dataset.__getitem__` does) and leaves what needs more to
    pydicom: a sequence, an ambiguous VR (US or SS, resolved by Pixel Representation), the Specific Character Set
    (read in the default encoding) and text in another character set. Each value is the one pydicom gives, and the
    data set holds afterwards the same elements, VR and value, as after pydicom's own look-ups."""
    from studies.dicom.parse import _Values

    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    data = resaved(
        make_instance(transfer_syntax=syntax),
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Jürgen",
        StudyDescription="Thorax \\ Abdomen",
        ReferencedImageSequence=Sequence([item]),
        PixelRepresentation=1,
        AccessionNumber="",
    )
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.add_new(0x00280106, "SS", -5)  # Smallest Image Pixel Value: US or SS in the dictionary
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    keywords = [
        "SpecificCharacterSet", "PatientName", "StudyDescription", "ReferencedImageSequence",
        "SmallestImagePixelValue", "PixelData", "AccessionNumber", "Rows", "StudyDate", "InstanceNumber",
    ]  # fmt: skip
    ours, theirs = _Values(pydicom.dcmread(io.BytesIO(data))), pydicom.dcmread(io.BytesIO(data))
    for keyword in keywords:
        assert ours.get(keyword) == theirs.get(keyword), keyword
        assert ours.get(keyword) is ours.get(keyword), keyword  # converted once, kept
    assert str(ours.get("PatientName")) == "Müller^Jürgen"
    assert ours.get("SmallestImagePixelValue") == -5  # SS, by Pixel Representation
    assert ours.get("ReferencedImageSequence")[0].ReferencedSOPInstanceUID == "1.2.3.4.5"
    for keyword in keywords:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        mine, pydicoms = ours.ds._dict[tag], theirs._dict[tag]
        assert type(mine) is type(pydicoms), keyword
        assert (mine.VR, mine.value) == (pydicoms.VR, pydicoms.value), keyword
