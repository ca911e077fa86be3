from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from studies.dicom.render import RenderError, thumbnail_png
from studies.dicom.synthetic import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _dataset(**kw: object) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(make_instance(**kw)))  # type: ignore[arg-type]


def _image(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize(
    ("syntax", "bits"),
    [
        (ExplicitVRLittleEndian, 16),
        (ExplicitVRLittleEndian, 8),
        (RLELossless, 16),
        (JPEG2000Lossless, 16),
        (JPEGBaseline8Bit, 8),
    ],
)
@pytest.mark.parametrize("frames", [1, 3])
def test_thumbnail_is_a_png_of_the_right_size_and_not_uniform(syntax: str, bits: int, frames: int):
    image = _image(thumbnail_png(_dataset(transfer_syntax=syntax, bits=bits, frames=frames)))
    assert image.size == (128, 128)
    assert image.mode == "L"
    pixels = np.asarray(image)
    assert np.ptp(pixels) > 100
    assert pixels.std() > 20


def test_size_and_aspect_ratio():
    image = _image(thumbnail_png(_dataset(rows=40, columns=100), size=64))
    assert image.size == (64, 26)
    tall = _image(thumbnail_png(_dataset(rows=300, columns=100), size=96))
    assert tall.size == (32, 96)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGBaseline8Bit])
def test_rgb(syntax: str):
    image = _image(thumbnail_png(_dataset(photometric="RGB", transfer_syntax=syntax)))
    assert image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert pixels.std() > 20
    # The synthetic channels are mirrored copies, so colour must survive (not collapse to grey).
    assert np.abs(pixels[..., 0] - pixels[..., 1]).mean() > 5


def test_monochrome1_is_inverted():
    normal = np.asarray(_image(thumbnail_png(_dataset(bits=8, photometric="MONOCHROME2")))).astype(int)
    inverted = np.asarray(_image(thumbnail_png(_dataset(bits=8, photometric="MONOCHROME1")))).astype(int)
    error = np.abs(normal + inverted - 255)  # resampling rounds each image its own way
    assert error.mean() < 1
    assert error.max() <= 4


def test_window_is_applied_after_rescale():
    ds = _dataset()
    wide = np.asarray(_image(thumbnail_png(ds)))
    # A narrow window around the middle of the stored range (after the -1024 intercept) saturates most pixels.
    ds.WindowCenter = 1024 - 1024
    ds.WindowWidth = 50
    narrow = np.asarray(_image(thumbnail_png(ds)))
    assert ((narrow == 0) | (narrow == 255)).mean() > 0.8
    assert ((wide == 0) | (wide == 255)).mean() < 0.2


def test_min_max_without_window():
    ds = _dataset()
    del ds.WindowCenter
    del ds.WindowWidth
    pixels = np.asarray(_image(thumbnail_png(ds)))
    assert pixels.min() <= 2
    assert pixels.max() >= 253


def test_uniform_image_renders_black():
    ds = _dataset(bits=8)
    del ds.WindowCenter
    del ds.WindowWidth
    ds.PixelData = bytes([77]) * (64 * 64)
    assert np.asarray(_image(thumbnail_png(ds))).max() == 0


def test_no_pixel_data():
    ds = _dataset()
    del ds.PixelData
    with pytest.raises(RenderError):
        thumbnail_png(ds)
