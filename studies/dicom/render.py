"""Render the first frame of an image to a small PNG, for thumbnails and previews.

Compressed transfer syntaxes decode through pydicom's pixel backends (pylibjpeg, its libjpeg and openjpeg plugins,
and pydicom's own RLE decoder). Only the first frame is decoded, so a 5000-frame object costs one frame.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array

__all__ = ["RenderError", "decoding", "thumbnail_png"]


class RenderError(ValueError):
    """The data set cannot be rendered (no pixels, or a pixel format this renderer does not draw)."""


@contextmanager
def decoding() -> Iterator[None]:
    """Turn any failure of the pixel decoders into RenderError. pydicom's handlers, pylibjpeg, openjpeg and Pillow
    raise what they like (ValueError, RuntimeError, OSError, NotImplementedError, numpy's errors) on pixel data
    that lies about itself; to a reader each of them means the same thing, that this instance cannot be shown.
    The message names the error class only: decoder messages may quote the data."""
    try:
        yield
    except RenderError:
        raise
    except Exception as exc:
        raise RenderError(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc


def thumbnail_png(ds: pydicom.Dataset, *, size: int = 128) -> bytes:
    """PNG bytes of the first frame, windowed to 8 bits, its longest side `size` pixels, aspect ratio kept."""
    if size < 1:
        raise ValueError("size must be positive")
    if not any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise RenderError("the data set holds no pixel data")
    with decoding():
        frame = pixel_array(ds, index=0)
        samples = int(ds.get("SamplesPerPixel", 1))
        if samples == 1 and frame.ndim == 2:
            image = Image.fromarray(_grayscale_to_8bit(frame, ds), mode="L")
        elif samples == 3 and frame.ndim == 3 and frame.shape[-1] == 3:
            image = Image.fromarray(_color_to_8bit(frame), mode="RGB")
        else:
            raise RenderError(f"cannot render {samples} samples per pixel")

    scale = size / max(image.width, image.height)
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _grayscale_to_8bit(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    values = frame.astype(np.float64)
    slope = _number(_attribute(ds, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _number(_attribute(ds, "PixelValueTransformationSequence", "RescaleIntercept"))
    values = values * (1.0 if slope is None else slope) + (intercept or 0.0)

    center = _number(_attribute(ds, "FrameVOILUTSequence", "WindowCenter"))
    width = _number(_attribute(ds, "FrameVOILUTSequence", "WindowWidth"))
    if center is not None and width is not None and width >= 1:
        low, high = center - width / 2, center + width / 2
    else:
        low, high = float(values.min()), float(values.min() + np.ptp(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)  # a uniform image has nothing to show
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return np.round(scaled).astype(np.uint8)


def _color_to_8bit(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    values = frame.astype(np.float64)
    span = float(np.ptp(values))
    if span == 0:
        return np.zeros(frame.shape, dtype=np.uint8)
    return np.round((values - values.min()) / span * 255.0).astype(np.uint8)


def _attribute(ds: pydicom.Dataset, functional_group: str, keyword: str) -> Any:
    """A top-level attribute, or for enhanced multi-frame objects the first frame's functional group value."""
    if keyword in ds:
        return ds.get(keyword)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = ds.get(groups)
        if not sequence:
            continue
        group = sequence[0].get(functional_group)
        if group and keyword in group[0]:
            return group[0].get(keyword)
    return None


def _number(value: Any) -> float | None:
    """A float from a DS/IS value; a multi-valued window takes its first value."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
