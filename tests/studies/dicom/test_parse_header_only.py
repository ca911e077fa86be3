"""`parse(..., pixels=False)`, as the ingest worker calls it: pydicom reads the data set up to its pixel data, and
the checks and the content hash read the pixel data off the walked file. The verdict, its reason and the hash must
be the very ones the whole read gives, for accepted files and for every refusal that looks at the pixel data."""

from __future__ import annotations

import io
import struct

import pydicom
import pydicom.filewriter
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from studies.dicom.parse import InvalidDicom, Limits, parse
from studies.dicom.synthetic import make_instance
from tests.dicom_files import resaved
from tests.studies import hostile_dicom

LIMITS = Limits(max_bytes=64 * 1024 * 1024)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _outcome(data: bytes, *, pixels: bool) -> tuple[str, object]:
    """("ok", the parsed instance with its content hash) or ("refused", the reason)."""
    try:
        parsed, _ = parse(data, limits=LIMITS, pixels=pixels)
    except InvalidDicom as exc:
        return "refused", exc.reason
    return "ok", parsed


def _same(data: bytes) -> tuple[str, object]:
    whole, header_only = _outcome(data, pixels=True), _outcome(data, pixels=False)
    assert header_only == whole
    return whole


def _with_element_after_pixels(data: bytes) -> bytes:
    """The file with Data Set Trailing Padding (FFFC,FFFC), an OB of 4 bytes, after its pixel data."""
    return data + struct.pack("<HH2sHL", 0xFFFC, 0xFFFC, b"OB", 0, 4) + b"\x00" * 4


def _ct() -> bytes:
    return make_instance(rows=128, columns=128, bits=16, pixel_seed=3)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_ct(), id="native explicit"),
        pytest.param(make_instance(transfer_syntax=ImplicitVRLittleEndian), id="native implicit"),
        pytest.param(make_instance(photometric="RGB", frames=3), id="native RGB, 3 frames"),
        pytest.param(make_instance(transfer_syntax=RLELossless, frames=2), id="RLE, 2 frames"),
        pytest.param(make_instance(transfer_syntax=JPEGBaseline8Bit, bits=8), id="JPEG baseline"),
        pytest.param(resaved(_ct(), syntax=DeflatedExplicitVRLittleEndian), id="deflated"),
    ],
)
def test_accepted_file_same_fields_and_hash_without_pydicom_reading_the_pixels(data):
    outcome, parsed = _same(data)
    assert outcome == "ok"
    assert parsed.content_sha256  # type: ignore[attr-defined]

    _, ds = parse(data, limits=LIMITS, pixels=False)
    assert "PixelData" not in ds  # pydicom stopped before it
    _, ds = parse(data, limits=LIMITS)
    assert "PixelData" in ds  # the default is unchanged


def test_big_endian_file_same_verdict():
    data = make_instance()
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    out = io.BytesIO()
    pydicom.filewriter.dcmwrite(out, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)

    outcome, _ = _same(out.getvalue())

    assert outcome == "ok"


@pytest.mark.parametrize("cut", [1, 2, 1000, 30000])
def test_pixel_data_cut_short_refused_with_the_same_reason(cut):
    data = _ct()[:-cut]

    outcome, reason = _same(data)

    assert outcome == "refused"
    assert str(reason).startswith("truncated: pixel data has ")


def test_pixel_data_shorter_than_its_attributes_refused_with_the_same_reason():
    """A whole pixel data element, shorter than Rows x Columns x Bits say: refused on its length, which the
    header-only read takes from the walked element."""
    data = make_instance(rows=64, columns=64)
    ds = pydicom.dcmread(io.BytesIO(data))
    short = resaved(data, PixelData=ds.PixelData[: len(ds.PixelData) // 2])

    assert _same(short) == ("refused", "truncated: pixel data has 4096 of 8192 bytes")


def test_pixel_data_longer_than_its_attributes_refused_with_the_same_reason():
    outcome, reason = _same(hostile_dicom.longer_pixel_data())

    assert outcome == "refused"
    assert str(reason).startswith("invalid pixel data: ")


def test_compressed_frame_that_is_not_a_codestream_refused_with_the_same_reason():
    outcome, reason = _same(hostile_dicom.zero_jpeg_fragment())

    assert outcome == "refused"
    assert "is not a JPEG Baseline" in str(reason)


def test_compressed_pixel_data_with_too_few_frames_refused_with_the_same_reason():
    data = make_instance(transfer_syntax=JPEGBaseline8Bit, bits=8, frames=3)
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=3))
    ds.PixelData = encapsulate(frames[:2])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)

    outcome, reason = _same(out.getvalue())

    assert outcome == "refused"
    assert str(reason).startswith("truncated: compressed pixel data has 2 ")


def test_missing_attribute_after_the_others_keeps_its_reason():
    """ "(the file may be truncated)" is said when the missing tag sorts after every tag read: the pixel data's tag
    counts although pydicom did not read it."""
    data = resaved(
        make_instance(),
        BitsAllocated=None,
        BitsStored=None,
        HighBit=None,
        PixelRepresentation=None,
        WindowCenter=None,
        WindowWidth=None,
        RescaleIntercept=None,
        RescaleSlope=None,
    )

    outcome, reason = _same(data)

    assert (outcome, reason) == ("refused", "missing required attribute Bits Allocated")


def test_element_after_the_pixel_data_read_whole():
    """Anything after the pixel data (here trailing padding): the whole data set is read, as before."""
    data = _with_element_after_pixels(_ct())

    outcome, _ = _same(data)

    assert outcome == "ok"
    _, ds = parse(data, limits=LIMITS, pixels=False)
    assert "PixelData" in ds


def test_element_after_the_pixel_data_cut_short_refused_with_the_same_reason():
    outcome, reason = _same(_with_element_after_pixels(_ct())[:-2])

    assert outcome == "refused"
    assert str(reason).startswith("truncated: ")


def test_no_pixel_data_same_hash_over_the_data_set():
    data = resaved(make_instance(), PixelData=None, SOPClassUID="1.2.840.10008.5.1.4.1.1.66")  # Raw Data Storage

    outcome, parsed = _same(data)

    assert outcome == "ok"
    assert parsed.is_image is False  # type: ignore[attr-defined]
