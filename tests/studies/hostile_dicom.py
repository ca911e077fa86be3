"""Synthetic DICOM files that lie about themselves, built from studies.dicom.synthetic's valid ones: integers out
of range, pixel data that cannot be decoded, pixel formats that contradict themselves. For the ingest and read
regression tests of issue 8 (#7, #8, #12)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pydicom
from pydicom import config
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from studies.dicom.synthetic import make_instance

TEN_TO_THE_20 = "100000000000000000000"


@contextmanager
def lenient() -> Iterator[None]:
    """pydicom's validation off, to write values a conformant writer would refuse (as hostile senders do)."""
    reading, writing = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = reading, writing


def rewrite(data: bytes, **values: Any) -> bytes:
    """`data` with the attributes `values` (by keyword) set as given, written back as a Part-10 file."""
    with lenient():
        ds = pydicom.dcmread(io.BytesIO(data))
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()


def out_of_range(keyword: str = "InstanceNumber", value: str = TEN_TO_THE_20, **kw: Any) -> bytes:
    return rewrite(make_instance(**kw), **{keyword: value})


def zero_jpeg_fragment(**kw: Any) -> bytes:
    """A JPEG Baseline instance whose one frame is a fragment of zeros."""
    data = make_instance(transfer_syntax=JPEGBaseline8Bit, bits=8, **kw)
    with lenient():
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PixelData = encapsulate([b"\x00" * 512])
        ds["PixelData"].VR = "OB"
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()


def bits_stored_over_allocated(**kw: Any) -> bytes:
    return rewrite(make_instance(bits=16, **kw), BitsStored=20, HighBit=19)


def odd_columns_ybr_422(**kw: Any) -> bytes:
    """Native 8-bit colour declared YBR_FULL_422 with an odd number of columns (4:2:2 pairs columns)."""
    kw.setdefault("columns", 63)
    return rewrite(make_instance(photometric="RGB", **kw), PhotometricInterpretation="YBR_FULL_422")


def longer_pixel_data(**kw: Any) -> bytes:
    """Native pixel data twice as long as Rows x Columns x Bits x Frames say."""
    data = make_instance(**kw)
    with lenient():
        ds = pydicom.dcmread(io.BytesIO(data))
    return rewrite(data, PixelData=ds.PixelData * 2)
