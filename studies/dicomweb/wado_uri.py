"""WADO-URI (PS3.18 chapter 9), for older viewers: `GET /dicomweb/<tenant>/wado?requestType=WADO&studyUID=..
&seriesUID=..&objectUID=..[&contentType=..]`.

- `contentType=application/dicom`: the object itself (not multipart), in Explicit VR Little Endian unless
  `transferSyntax` names the syntax it is stored in (or `*`, as stored).
- `image/jpeg` (the default) or `image/png`: one frame (`frameNumber`, default 1) rendered, with `windowCenter`
  and `windowWidth`, and `rows`/`columns` as the largest size (aspect kept).
The same permission rules and audit as WADO-RS; a study the caller may not see is a 404 like a missing one.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request

from portal.web.errors import problem_responses
from studies.dicom import frames as frame_tools
from studies.dicom.render import RenderError
from studies.dicomweb.negotiation import DicomWebReadApi, not_acceptable
from studies.dicomweb.wado import DICOM, EXPLICIT, RENDERED_TYPES, read_instance
from studies.services.reads import instances_accessed_record, instances_retrieved_record
from tenants import access

REQUIRED = ("requestType", "studyUID", "seriesUID", "objectUID")
# The largest rendered image, as WADO-RS's viewport: rows=50000&columns=50000 once took 11 s and 1.1 GB.
MAX_VIEWPORT = 4096


def _positive(request: Request, name: str, errors: dict[str, list[str]], *, most: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = int(raw)
        if value < 1 or (most is not None and value > most):
            raise ValueError
    except ValueError:
        errors[name] = [f"{name} must be a whole number from 1" + (f" to {most}." if most is not None else ".")]
        return None
    return value


class WadoUriApi(DicomWebReadApi):
    rate_limit = "retrieve"

    @extend_schema(
        operation_id="dicomweb_wado_uri",
        tags=["dicomweb"],
        summary="WADO-URI: retrieve an object or a rendered frame",
        responses={
            **{(200, media_type): OpenApiResponse(OpenApiTypes.BINARY) for media_type in (DICOM, *RENDERED_TYPES)},
            **problem_responses(400, 401, 404),
        },
    )
    def get(self, request: Request, tenant: str) -> Any:
        q = request.query_params
        errors: dict[str, list[str]] = {
            name: [f"{name} is required."] for name in REQUIRED if not q.get(name, "").strip()
        }
        if q.get("requestType") and q.get("requestType") != "WADO":
            errors["requestType"] = ["requestType must be WADO."]
        frame = _positive(request, "frameNumber", errors) or 1
        rows = _positive(request, "rows", errors, most=MAX_VIEWPORT)
        columns = _positive(request, "columns", errors, most=MAX_VIEWPORT)
        window = None
        center, width = q.get("windowCenter"), q.get("windowWidth")
        if center or width:
            try:
                window = frame_tools.Window(float(center or ""), float(width or ""))
                if window.width <= 0:
                    raise ValueError
            except ValueError:
                errors["windowCenter"] = ["windowCenter and windowWidth go together, as numbers (width above 0)."]
        if errors:
            raise exceptions.ValidationError(errors)
        content_types = [c.split(";")[0].strip().lower() for c in q.get("contentType", "image/jpeg").split(",")]
        content_type = next((c for c in content_types if c in (DICOM, *RENDERED_TYPES, "*/*", "image/*")), None)
        if content_type is None:
            raise not_acceptable("WADO-URI returns application/dicom, image/jpeg or image/png")
        content_type = "image/jpeg" if content_type in ("*/*", "image/*") else content_type
        if content_type == DICOM:  # the file itself: a device-bound token needs its device's download grant
            access.credential_use_require(request.user, access.USE_DOWNLOAD)

        study, (row,) = self.visible_instances(
            study_uid=q["studyUID"], series_uid=q["seriesUID"], sop_uid=q["objectUID"]
        )
        data = read_instance(self.tenant, row)
        if content_type == DICOM:
            wanted = q.get("transferSyntax", "").strip() or EXPLICIT
            if wanted == EXPLICIT:
                try:
                    data = frame_tools.as_explicit_little_endian(data)
                except RenderError as exc:
                    raise exceptions.ValidationError(
                        {"transferSyntax": [f"This instance cannot be decompressed: {exc}; ask for transferSyntax=*."]}
                    ) from exc
            elif wanted not in ("*", row.transfer_syntax_uid):
                raise not_acceptable(f"this object is sent in {EXPLICIT} or as stored ({row.transfer_syntax_uid})")
            instances_retrieved_record(
                actor=request.user,
                study=study,
                count=1,
                resource=request.path,
                transfer_syntax=wanted,
                source_address=self.source_address(),
            )
            return HttpResponse(data, content_type=DICOM)

        viewport = None
        if rows or columns:
            viewport = (columns or MAX_VIEWPORT, rows or MAX_VIEWPORT)
        try:
            image = frame_tools.render(
                frame_tools.read(data), frame=frame, media_type=content_type, window=window, viewport=viewport
            )
        except (RenderError, frame_tools.FrameError) as exc:
            raise exceptions.ValidationError({"objectUID": [f"This instance cannot be rendered: {exc}."]}) from exc
        instances_accessed_record(
            actor=request.user,
            study=study,
            kind="rendered",
            count=1,
            resource=request.path,
            source_address=self.source_address(),
        )
        return HttpResponse(image, content_type=content_type)
