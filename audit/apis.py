"""The audit trail over the REST API: audit events, one audit event, and django-auditlog field changes.

Each read is itself recorded (DICOM 110101 Audit Log Used) with the filters used. `tenants.view_audit` is needed:
a member without it gets a 403 (and the refusal is on the trail); a non-member gets the 404 of `TenantApi`.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from audit.events import EventType
from audit.models import AuditEvent
from audit.selectors import (
    AUDIT_FILTER_YEARS,
    AUDIT_FILTER_YEARS_REASON,
    audit_change_list,
    audit_event_get,
    audit_event_list,
)
from audit.services import audit_log_used_record
from portal.web.api import TenantApi
from portal.web.errors import problem_responses
from portal.web.pagination import PAGE_PARAMETERS, Pagination, page_of
from tenants import access

VIEW_AUDIT = "tenants.view_audit"
CHANGE_ACTIONS = {0: "create", 1: "update", 2: "delete", 3: "access"}
PUBLIC_ID = OpenApiParameter("public_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The event's id.")


class TimeRangeFilter(serializers.Serializer):
    """`since` (inclusive) and `until` (exclusive), shared by the audit lists."""

    since = serializers.DateTimeField(required=False, help_text="From this time (inclusive).")
    until = serializers.DateTimeField(required=False, help_text="Before this time (exclusive).")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        for name in ("since", "until"):
            if data.get(name) and data[name].year not in AUDIT_FILTER_YEARS:
                raise serializers.ValidationError({name: [AUDIT_FILTER_YEARS_REASON]})
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise serializers.ValidationError({"until": "Must be after since."})
        return data


def _log_used(request: Request, api: TenantApi, extra: dict[str, Any]) -> None:
    audit_log_used_record(
        actor=request.user,
        tenant=api.tenant,
        target={"type": "audit_log", "id": request.path[:64], "name": f"Audit trail of {api.tenant.slug}"},
        extra={"api": type(api).__name__, **extra},
    )


def _filters_recorded(data: dict[str, Any]) -> dict[str, str]:
    return {key: value.isoformat() if hasattr(value, "isoformat") else str(value) for key, value in data.items()}


def _event_type(value: str) -> int | None:
    if not value:
        return None
    return int(value) if value.isdigit() else EventType[value].value


class AuditEventOutputSerializer(serializers.Serializer):
    """An audit event with the fields of a DICOM PS3.15 A.5 audit message and its place in the hash chain."""

    id = serializers.UUIDField(source="public_id")
    sequence = serializers.IntegerField()
    occurred_at = serializers.DateTimeField()
    verb = serializers.SerializerMethodField()
    event_id = serializers.SerializerMethodField()
    event_type_code = serializers.SerializerMethodField()
    action = serializers.CharField()
    outcome = serializers.IntegerField()
    outcome_description = serializers.CharField()
    user = serializers.CharField(source="actor_username")
    user_id = serializers.SerializerMethodField()
    role = serializers.CharField(source="actor_role")
    system_principal = serializers.CharField()
    source_address = serializers.IPAddressField(allow_null=True)
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    participants = serializers.JSONField()
    request_id = serializers.CharField()
    extra = serializers.JSONField()
    prev_hash = serializers.CharField()
    hash = serializers.CharField()

    def get_verb(self, event: AuditEvent) -> str:
        return EventType(event.event_type).name

    def get_event_id(self, event: AuditEvent) -> dict[str, str]:
        return {"code": event.event_id, "display": event.event_id_display}

    def get_event_type_code(self, event: AuditEvent) -> dict[str, str] | None:
        if not event.event_type_code:
            return None
        return {"code": event.event_type_code, "display": event.event_type_display}

    def get_user_id(self, event: AuditEvent) -> str | None:
        """The unique, immutable user id (A.5 UserID), or null for a system principal or an unknown name."""
        return str(event.actor_user.subject_uuid) if event.actor_user is not None else None


class AuditEventListApi(TenantApi):
    """GET /api/v1/t/<tenant>/audit-events/ : the tenant's audit events, newest first."""

    class FilterSerializer(TimeRangeFilter):
        user = serializers.CharField(required=False, max_length=150, help_text="User name (any case).")
        event_type = serializers.ChoiceField(
            required=False,
            choices=[e.name for e in EventType] + [str(e.value) for e in EventType],
            help_text="Our verb, by name (LOGIN_FAILED) or number (102).",
        )

    OutputSerializer = AuditEventOutputSerializer

    @extend_schema(
        operation_id="audit_events_list",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={
            200: page_of(AuditEventOutputSerializer, "AuditEventPage"),
            **problem_responses(400, 401, 403, 404),
        },
    )
    def get(self, request: Request, tenant: str) -> Response:
        access.require(request.user, VIEW_AUDIT, self.tenant)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        events = audit_event_list(
            actor=request.user,
            username=data.get("user", ""),
            event_type=_event_type(data.get("event_type", "")),
            since=data.get("since"),
            until=data.get("until"),
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(events, request, view=self)
        body = paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)
        _log_used(request, self, {"filters": _filters_recorded(data), "results": paginator.count})
        return body


class AuditEventDetailApi(TenantApi):
    """GET /api/v1/t/<tenant>/audit-events/<id>/ : one audit event."""

    OutputSerializer = AuditEventOutputSerializer

    @extend_schema(
        operation_id="audit_events_retrieve",
        parameters=[PUBLIC_ID],
        responses={200: AuditEventOutputSerializer, **problem_responses(401, 403, 404)},
    )
    def get(self, request: Request, tenant: str, public_id: str) -> Response:
        access.require(request.user, VIEW_AUDIT, self.tenant)
        event = audit_event_get(actor=request.user, public_id=public_id)
        body = Response(self.OutputSerializer(event).data)
        _log_used(request, self, {"event": str(event.public_id)})
        return body


class AuditChangeOutputSerializer(serializers.Serializer):
    """A django-auditlog field change: which record, which fields (masked values stay masked), who, from where."""

    id = serializers.IntegerField(source="pk")
    timestamp = serializers.DateTimeField()
    action = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    object = serializers.CharField(source="object_repr")
    changes = serializers.SerializerMethodField()
    user = serializers.SerializerMethodField()
    source_address = serializers.IPAddressField(source="remote_addr", allow_null=True)
    request_id = serializers.CharField(source="cid", allow_null=True)

    def get_action(self, entry: Any) -> str:
        return CHANGE_ACTIONS.get(entry.action, str(entry.action))

    def get_model(self, entry: Any) -> str:
        return f"{entry.content_type.app_label}.{entry.content_type.model}"

    def get_changes(self, entry: Any) -> dict[str, Any]:
        """As django-auditlog stores them, per field: `[old, new]` (strings, or JSON values), or for a
        many-to-many field `{"type": "m2m", "operation": "add" | "delete", "objects": [...]}`."""
        return entry.changes_dict or {}

    def get_user(self, entry: Any) -> str | None:
        return entry.actor.username if entry.actor is not None else None


class AuditChangeListApi(TenantApi):
    """GET /api/v1/t/<tenant>/audit-changes/ : field changes of the tenant's records, newest first."""

    class FilterSerializer(TimeRangeFilter):
        user = serializers.CharField(required=False, max_length=150, help_text="User name (any case).")

    OutputSerializer = AuditChangeOutputSerializer

    @extend_schema(
        operation_id="audit_changes_list",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={
            200: page_of(AuditChangeOutputSerializer, "AuditChangePage"),
            **problem_responses(400, 401, 403, 404),
        },
    )
    def get(self, request: Request, tenant: str) -> Response:
        access.require(request.user, VIEW_AUDIT, self.tenant)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        changes = audit_change_list(
            actor=request.user, username=data.get("user", ""), since=data.get("since"), until=data.get("until")
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(changes, request, view=self)
        body = paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)
        _log_used(request, self, {"filters": _filters_recorded(data), "results": paginator.count})
        return body
