"""Building STOW-RS requests and reading their answers, for the DICOMweb tests."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

BOUNDARY = "enclave-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'

# Tags of the Store Instances Response Module (PS3.18 Annex I), as keys of the DICOM JSON model.
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILED_ATTRIBUTES_SEQUENCE = "00741048"
ERROR_COMMENT = "00000902"


def multipart(parts: list[bytes], *, content_types: list[str] | None = None) -> bytes:
    out = b""
    for index, part in enumerate(parts):
        content_type = content_types[index] if content_types else "application/dicom"
        out += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def post_parts(client: Any, url: str, parts: list[bytes], **kwargs: Any) -> Any:
    return client.generic("POST", url, multipart(parts, **kwargs), content_type=CONTENT_TYPE)


def value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


def referenced(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])


def failed(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])


def comment(item: dict[str, Any]) -> str:
    return value(value(item, FAILED_ATTRIBUTES_SEQUENCE), ERROR_COMMENT)


def as_dataset(body: dict[str, Any]) -> Dataset:
    return Dataset.from_json(body)
