"""Synthetic DICOM Part-10 files for tests, the demo and benchmarks. Never copied from real patients.

Pixel data is a deterministic gradient with seeded noise, so thumbnails are never blank and the same arguments
always give the same pixels (UIDs are generated unless given, so the bytes differ between calls).
"""

from __future__ import annotations

import io
from datetime import date

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_BYTE_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.2"
MULTIFRAME_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"
MULTIFRAME_TRUE_COLOR_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.4"

_SINGLE_FRAME_CLASSES = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE, "CR": CR_IMAGE_STORAGE}

UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
COMPRESSED_SYNTAXES = (RLELossless, JPEG2000Lossless, JPEGBaseline8Bit)


def _sop_class(*, modality: str, frames: int, bits: int, photometric: str) -> str:
    if frames > 1:
        if photometric == "RGB":
            return MULTIFRAME_TRUE_COLOR_SC_STORAGE
        return MULTIFRAME_WORD_SC_STORAGE if bits == 16 else MULTIFRAME_BYTE_SC_STORAGE
    if photometric == "RGB":
        return SECONDARY_CAPTURE_STORAGE
    return _SINGLE_FRAME_CLASSES.get(modality, SECONDARY_CAPTURE_STORAGE)


def synthetic_pixels(
    *, rows: int, columns: int, frames: int = 1, bits: int = 16, rgb: bool = False, seed: int = 0
) -> np.ndarray:
    """A diagonal gradient, a bright disc that moves with the frame index, and seeded noise.

    Shape is (rows, columns), (frames, rows, columns), with a trailing 3 for RGB. 16-bit data uses 12 stored bits.
    """
    top = 4095 if bits == 16 else 255
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    out = []
    for f in range(frames):
        gradient = (x / max(columns - 1, 1) + y / max(rows - 1, 1)) / 2
        cy, cx = rows * (0.3 + 0.4 * ((f + seed) % 5) / 4), columns / 2
        disc = ((y - cy) ** 2 + (x - cx) ** 2) < (min(rows, columns) / 5) ** 2
        img = 0.7 * gradient + 0.25 * disc + 0.05 * rng.random((rows, columns))
        out.append(np.clip(img * top, 0, top))
    arr = np.stack(out)
    if rgb:
        arr = np.stack([arr, arr[:, :, ::-1], arr[:, ::-1, :]], axis=-1)
    arr = arr.astype(np.uint16 if bits == 16 else np.uint8)
    return arr if frames > 1 else arr[0]


def _jpeg_baseline_frames(arr: np.ndarray, *, frames: int, rgb: bool) -> list[bytes]:
    encoded = []
    for frame in arr if frames > 1 else [arr]:
        buffer = io.BytesIO()
        Image.fromarray(frame, mode="RGB" if rgb else "L").save(buffer, format="JPEG", quality=90, subsampling=1)
        encoded.append(buffer.getvalue())
    return encoded


def make_instance(
    *,
    patient_id: str = "SYN0001",
    patient_name: str = "SYNTHETIC^PATIENT",
    patient_birth_date: date | None = date(1970, 1, 1),
    patient_sex: str = "O",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "CT",
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    bits: int = 16,
    photometric: str = "MONOCHROME2",
    instance_number: int = 1,
    series_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    accession: str = "ACC0001",
    referring: str = "REFERRER^DEMO",
    study_description: str = "Synthetic study",
    series_description: str = "Synthetic series",
    study_date: date | None = date(2024, 1, 2),
    pixel_seed: int = 0,
) -> bytes:
    """One valid Part-10 file. `photometric` is MONOCHROME1, MONOCHROME2 or RGB (RGB is always 8-bit).

    `transfer_syntax` may be Explicit or Implicit VR Little Endian, RLE Lossless, JPEG 2000 Lossless (needs the
    pylibjpeg-openjpeg encoder, and at least 32 x 32 pixels) or JPEG Baseline (8-bit only, encoded with Pillow).
    """
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    rgb = photometric == "RGB"
    if rgb:
        bits = 8
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax == JPEGBaseline8Bit and bits != 8:
        raise ValueError("JPEG Baseline needs 8-bit pixels")
    if transfer_syntax == JPEG2000Lossless and min(rows, columns) < 32:
        raise ValueError("the JPEG 2000 encoder needs at least 32 x 32 pixels")

    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    sop_uid = sop_uid or generate_uid()
    sop_class = _sop_class(modality=modality, frames=frames, bits=bits, photometric=photometric)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = patient_birth_date.strftime("%Y%m%d") if patient_birth_date else ""
    ds.PatientSex = patient_sex
    ds.StudyDate = study_date.strftime("%Y%m%d") if study_date else ""
    ds.StudyTime = "093000" if study_date else ""
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = referring
    ds.StudyDescription = study_description
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesDescription = series_description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ConversionType = "SYN"

    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if not rgb:
        ds.RescaleIntercept = -1024 if bits == 16 else 0
        ds.RescaleSlope = 1
        top = (1 << ds.BitsStored) - 1
        ds.WindowCenter = ds.RescaleIntercept + top // 2
        ds.WindowWidth = top

    arr = synthetic_pixels(rows=rows, columns=columns, frames=frames, bits=bits, rgb=rgb, seed=pixel_seed)
    if transfer_syntax in UNCOMPRESSED_SYNTAXES:
        meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = arr.tobytes()
    elif transfer_syntax == JPEGBaseline8Bit:
        meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = encapsulate(_jpeg_baseline_frames(arr, frames=frames, rgb=rgb))
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        if rgb:
            # Pillow writes YCbCr JPEG, which is what this photometric value declares.
            ds.PhotometricInterpretation = "YBR_FULL_422"
    else:
        ds.compress(transfer_syntax, arr, generate_instance_uid=False)

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_study(*, series: int = 2, instances_per_series: int = 3, **kw: object) -> list[bytes]:
    """A multi-series study: one study UID, one series UID per series, numbered series and instances."""
    study_uid = kw.pop("study_uid", None) or generate_uid()
    description = kw.pop("series_description", None) or "Synthetic series"
    for key in ("series_uid", "sop_uid", "series_number", "instance_number", "pixel_seed"):
        kw.pop(key, None)
    files = []
    for s in range(1, series + 1):
        series_uid = generate_uid()
        for i in range(1, instances_per_series + 1):
            files.append(
                make_instance(
                    study_uid=str(study_uid),
                    series_uid=series_uid,
                    series_number=s,
                    instance_number=i,
                    series_description=f"{description} {s}",
                    pixel_seed=s * 1000 + i,
                    **kw,  # type: ignore[arg-type]
                )
            )
    return files
