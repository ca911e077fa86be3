"""DICOM files for tests, changed the way a test needs them."""

from __future__ import annotations

import io

import pydicom


def resaved(data: bytes, *, syntax: str | None = None, **changes: object) -> bytes:
    """The file re-saved with attributes changed (None deletes one) and, with `syntax`, another transfer syntax
    named in its meta header; the layout otherwise kept."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
