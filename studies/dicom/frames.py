"""Frames and rendered images of one instance, for WADO-RS and WADO-URI (pure: bytes in, bytes out).

- `frame_list`: the frames asked for, as stored: native (uncompressed) frames are sliced out of Pixel Data,
  encapsulated (compressed) frames are returned as their compressed bitstream, with the media type PS3.18
  Table 8.7.3-2 gives their transfer syntax; `decoded=True` decodes them to native bytes instead.
- `render`: one frame as PNG or JPEG, with a window (center, width, LINEAR/LINEAR_EXACT/SIGMOID per PS3.3
  C.11.2.1.2) and a viewport (the image scaled to fit vw x vh, aspect kept) per PS3.18 8.3.5.1.
- `as_explicit_little_endian`: a Part-10 object rewritten in Explicit VR Little Endian (decompressed if needed),
  for a client that asks for the default transfer syntax.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from studies.dicom.render import RenderError, _attribute, _color_to_8bit, _number, decoding

__all__ = [
    "FRAME_MEDIA_TYPES",
    "Frame",
    "FrameError",
    "RenderError",
    "Window",
    "as_explicit_little_endian",
    "check_frames",
    "frame_iter",
    "frame_list",
    "number_of_frames",
    "read",
    "render",
]

OCTET_STREAM = "application/octet-stream"
NATIVE_SYNTAXES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID("1.2.840.10008.1.2.1.99")}
# PS3.18 Table 8.7.3-2 (and dicomweb-client's table): the media type of a compressed frame by transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
}
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


class FrameError(ValueError):
    """A frame that the object does not have, or pixels this code cannot cut into frames."""


@dataclass(frozen=True)
class Frame:
    number: int  # 1-based, as in the URL
    data: bytes
    media_type: str
    transfer_syntax: str


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


def read(data: bytes, *, pixels: bool = True) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not pixels)


def number_of_frames(ds: pydicom.Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    return UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))


def is_native(ds: pydicom.Dataset) -> bool:
    return _transfer_syntax(ds) in NATIVE_SYNTAXES


def frame_media_type(ds: pydicom.Dataset) -> str:
    return OCTET_STREAM if is_native(ds) else FRAME_MEDIA_TYPES.get(str(_transfer_syntax(ds)), OCTET_STREAM)


def _check(numbers: list[int], total: int) -> None:
    for n in numbers:
        if not 1 <= n <= total:
            raise FrameError(f"Frame {n} does not exist: the instance has {total} frame(s), numbered from 1.")


def check_frames(ds: pydicom.Dataset, numbers: list[int]) -> None:
    """FrameError unless every frame of `numbers` (1-based) exists in `ds`."""
    _check(numbers, number_of_frames(ds))


def frame_list(ds: pydicom.Dataset, numbers: list[int], *, decoded: bool = False) -> list[Frame]:
    """The frames `numbers` (1-based) of `ds`, as stored, or decoded to native little-endian bytes."""
    return list(frame_iter(ds, numbers, decoded=decoded))


def frame_iter(ds: pydicom.Dataset, numbers: list[int], *, decoded: bool = False) -> Iterator[Frame]:
    """`frame_list` one frame at a time, for a streamed answer. Every check that can refuse the request (frames
    that do not exist, pixel data that does not hold them, the first frame that cannot be decoded) is made before
    the first frame is returned, so a caller that takes the first frame before answering can still answer 4xx."""
    if "PixelData" not in ds:
        raise FrameError("The instance holds no pixel data.")
    total = number_of_frames(ds)
    _check(numbers, total)
    syntax = _transfer_syntax(ds)
    if is_native(ds):
        try:
            rows, columns = int(ds.Rows), int(ds.Columns)
            samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
        except (AttributeError, TypeError, ValueError) as exc:
            raise FrameError("The instance does not describe its pixel data.") from exc
        if bits % 8:
            raise FrameError("Frames of 1-bit pixel data are not supported.")
        if samples == 3 and ds.get("PhotometricInterpretation", "") == "YBR_FULL_422":
            samples = 2  # two samples per pixel once subsampled
        size = rows * columns * samples * bits // 8
        pixels = ds.PixelData
        if len(pixels) < size * total:
            raise FrameError("The pixel data is shorter than its frames.")
        return (
            Frame(n, bytes(pixels[(n - 1) * size : n * size]), OCTET_STREAM, ExplicitVRLittleEndian) for n in numbers
        )
    if decoded:
        return _decoded_frames(ds, numbers)
    media_type = FRAME_MEDIA_TYPES.get(str(syntax), OCTET_STREAM)
    wanted = set(numbers)
    found: dict[int, bytes] = {}
    try:
        for index, data in enumerate(generate_frames(ds.PixelData, number_of_frames=total), start=1):
            if index in wanted:
                found[index] = data
            if len(found) == len(wanted):
                break
    except (ValueError, StopIteration) as exc:
        raise FrameError("The compressed pixel data cannot be cut into its frames.") from exc
    if len(found) < len(wanted):
        raise FrameError("The compressed pixel data holds fewer frames than it says.")
    return (Frame(n, found[n], media_type, str(syntax)) for n in numbers)


def _decoded_frames(ds: pydicom.Dataset, numbers: list[int]) -> Iterator[Frame]:
    def decode(n: int) -> Frame:
        try:
            with decoding():
                data = np.ascontiguousarray(pixel_array(ds, index=n - 1, raw=True)).tobytes()
        except RenderError as exc:
            raise FrameError(f"Frame {n} cannot be decoded: {exc}") from exc
        return Frame(n, data, OCTET_STREAM, ExplicitVRLittleEndian)

    first = decode(numbers[0])  # here, before the caller answers: an instance that cannot be decoded is a 4xx

    def rest() -> Iterator[Frame]:
        yield first
        for n in numbers[1:]:
            yield decode(n)

    return rest()


# Rendering
# ------------------------------------------------------------------------------


def _voi(values: np.ndarray, ds: pydicom.Dataset, window: Window | None) -> np.ndarray:
    """Modality LUT (rescale), then the VOI window to 0..255 (PS3.3 C.11.2.1.2)."""
    slope = _number(_attribute(ds, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _number(_attribute(ds, "PixelValueTransformationSequence", "RescaleIntercept"))
    values = values.astype(np.float64) * (1.0 if slope is None else slope) + (intercept or 0.0)
    if window is None:
        center = _number(_attribute(ds, "FrameVOILUTSequence", "WindowCenter"))
        width = _number(_attribute(ds, "FrameVOILUTSequence", "WindowWidth"))
        if center is not None and width is not None and width >= 1:
            window = Window(center, width)
    if window is None:
        low, high = float(values.min()), float(values.max())
        out = np.zeros(values.shape) if high <= low else (values - low) / (high - low)
    elif window.function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - window.center) / window.width))
    elif window.function == "LINEAR_EXACT":
        out = (values - (window.center - window.width / 2)) / window.width
    else:
        out = (
            ((values - (window.center - 0.5)) / (window.width - 1)) + 0.5
            if window.width > 1
            else (values >= window.center).astype(np.float64)
        )
    scaled = np.clip(out, 0.0, 1.0) * 255.0
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return np.round(scaled).astype(np.uint8)


def render(
    ds: pydicom.Dataset,
    *,
    frame: int = 1,
    media_type: str = "image/jpeg",
    window: Window | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """Frame `frame` (1-based) of `ds` as `media_type` (image/jpeg or image/png)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise RenderError("the data set holds no pixel data")
    _check([frame], number_of_frames(ds))
    with decoding():
        pixels = pixel_array(ds, index=frame - 1)
        samples = int(ds.get("SamplesPerPixel", 1))
        if samples == 1 and pixels.ndim == 2:
            image = Image.fromarray(_voi(pixels, ds, window), mode="L")
        elif samples == 3 and pixels.ndim == 3 and pixels.shape[-1] == 3:
            image = Image.fromarray(_color_to_8bit(pixels), mode="RGB")
        else:
            raise RenderError(f"cannot render {samples} samples per pixel")
        if viewport is not None:
            width, height = viewport
            scale = min(width / image.width, height / image.height)
            target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            if target != image.size:
                image = image.resize(target, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if media_type == "image/png":
            image.save(out, format="PNG")
        else:
            image.save(out, format="JPEG", quality=quality)
        return out.getvalue()


def as_explicit_little_endian(data: bytes) -> bytes:
    """`data` (a Part-10 object) in Explicit VR Little Endian; unchanged if it already is."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    syntax = _transfer_syntax(ds)
    if syntax == ExplicitVRLittleEndian:
        return data
    if syntax.is_compressed:
        with decoding():
            ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
