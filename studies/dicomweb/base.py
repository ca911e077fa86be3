"""The base class of every DICOMweb resource under /dicomweb/<tenant>/ (tests/test_architecture.py checks it).

A `TenantApi` like any other: a bearer token or an MFA-verified session, membership of the tenant named in the
URL (else 404), the tenant scope and the auditlog actor; responses are never cached (the security middleware sets
`Cache-Control: no-store`). DICOM answers are `application/dicom+json` (PS3.18 F.2); errors that are not about
one instance stay RFC 7807 problem documents, as in the rest of the API.
"""

from __future__ import annotations

from rest_framework.renderers import JSONRenderer

from portal.web.api import TenantApi

DICOM_JSON = "application/dicom+json"


class DicomJsonRenderer(JSONRenderer):
    """The DICOM JSON model (PS3.18 F.2), which is plain JSON under its own media type. No charset parameter:
    JSON is UTF-8, and clients such as dicomweb-client compare the Content-Type exactly."""

    media_type = DICOM_JSON
    format = "dicom+json"


class DicomWebApi(TenantApi):
    DEVICE_CREDENTIALS = True  # a device's token reads what its person and its grants both allow
    DOOR = "DICOMweb"
    renderer_classes = [DicomJsonRenderer, JSONRenderer]
