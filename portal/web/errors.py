"""One error shape for the whole API (RFC 7807 problem details), whatever raised the error."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from audit.services import access_denied_record, not_found_record
from tenants.access import Forbidden, GateRefused, NotVisible

PROBLEM_CONTENT_TYPE = "application/problem+json"

TITLES = {
    400: "Invalid request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    415: "Unsupported media type",
    429: "Too many requests",
}


def problem(status_code: int, detail: Any, *, code: str = "", errors: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": TITLES.get(status_code, "Error"),
        "status": status_code,
        "detail": detail,
    }
    if code:
        body["code"] = code
    if errors is not None:
        body["errors"] = errors
    return body


def route_identifier(kwargs: dict[str, Any]) -> str:
    """What a route's URL named, without the tenant: the identifier a 404 is about (for the audit trail)."""
    return "/".join(f"{key}={value}" for key, value in sorted(kwargs.items()) if key != "tenant")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map service and access errors onto DRF's, then render every error as one problem document.

    `NotVisible` and Django's `Http404` become exactly the body of a missing object, so another tenant's id and a
    made-up one cannot be told apart.
    """
    if getattr(exc, "problem_status", None) == status.HTTP_409_CONFLICT:
        # A domain rule about the object's state (a life-cycle step it does not allow): what is allowed instead.
        body = problem(status.HTTP_409_CONFLICT, str(exc), code=getattr(exc, "code", "conflict"))
        body["allowed"] = list(getattr(exc, "allowed", []))
        return Response(body, status=status.HTTP_409_CONFLICT, content_type=PROBLEM_CONTENT_TYPE)
    if isinstance(exc, NotVisible | Http404):
        view, request = context.get("view"), context.get("request")
        if request is not None and getattr(view, "tenant", None) is not None:
            not_found_record(actor=request.user, where=type(view).__name__, method=request.method,
                             identifier=route_identifier(context.get("kwargs") or {}))  # fmt: skip
        exc = exceptions.NotFound()
    elif isinstance(exc, Forbidden):
        view = context.get("view")
        request = context.get("request")
        if request is not None and getattr(view, "tenant", None) is not None:
            refusal = exc if isinstance(exc, GateRefused) else None  # a gate's reason goes on the trail
            access_denied_record(actor=request.user, where=type(view).__name__, method=request.method,
                                 code=refusal.code if refusal else "", reason=str(refusal or ""))  # fmt: skip
        exc = exceptions.PermissionDenied(detail=str(exc), code=exc.code)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        body = problem(status.HTTP_400_BAD_REQUEST, "The request has invalid fields.", code="invalid", errors=errors)
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
        code = getattr(detail, "code", "") or ""
        body = problem(response.status_code, str(detail), code=str(code))
    response.data = body
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


class ProblemSerializer(serializers.Serializer):
    """The error body, for the OpenAPI schema (`extend_schema(responses=...)`); not used to render."""

    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    code = serializers.CharField(required=False)
    errors = serializers.DictField(required=False, help_text="For 400: the invalid fields, each with its messages.")  # type: ignore[assignment]

    class Meta:
        ref_name = "Problem"


PROBLEM_DESCRIPTIONS = {
    400: "Invalid request: `errors` names each invalid field with its messages.",
    401: "No valid credentials: a bearer token that is unknown, expired or revoked, or no MFA-verified session.",
    403: "The caller is a member of the tenant but may not do this.",
    409: "The object's state does not allow this: `allowed` lists what it may become instead.",
    404: "No such object, or one the caller may not see (the same body either way); also for a tenant the caller "
    "is not a member of.",
}


def problem_responses(*codes: int) -> dict[tuple[int, str], OpenApiResponse]:
    """The documented error responses of an operation, for `extend_schema(responses={...})`."""
    return {
        (code, PROBLEM_CONTENT_TYPE): OpenApiResponse(ProblemSerializer, description=PROBLEM_DESCRIPTIONS[code])
        for code in codes
    }
