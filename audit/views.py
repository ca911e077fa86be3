"""The tenant's audit trail in the browser: one list of events and field changes, and its CSV export.

Reading the trail is itself on the trail (DICOM 110101 Audit Log Used, SECURITY.md B7), with the filters used.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from typing import Any

from django import forms
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.utils import timezone

from audit.events import EventType
from audit.selectors import (
    AUDIT_FILTER_YEARS,
    AUDIT_FILTER_YEARS_REASON,
    TRAIL_EVENT,
    TrailEntry,
    audit_trail_entries,
    audit_trail_keys,
)
from audit.services import audit_event_record
from portal.web.pages import TenantPageView
from tenants.models import Role, Tenant
from tenants.scoping import tenant_scope

PAGE_SIZE = 50
EXPORT_BATCH = 500
CHANGES = "changes"
ACTION_LABELS = {"C": "Create", "R": "Read", "U": "Update", "D": "Delete", "E": "Execute"}
CHANGE_ACTIONS = {0: "C", 1: "U", 2: "D", 3: "R"}  # django-auditlog's LogEntry.Action -> A.5 EventActionCode
CHANGE_VERBS = {0: "created", 1: "changed", 2: "deleted", 3: "read"}


class AuditFilterForm(forms.Form):
    """The page's filters. They name people, verbs and dates only, never patient data, so they may sit in the
    query string of our own page."""

    user = forms.CharField(required=False, max_length=150, label="User name")
    event = forms.ChoiceField(required=False, label="Event")
    start = forms.DateField(required=False, label="From (UTC)", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, label="To (UTC)", widget=forms.DateInput(attrs={"type": "date"}))
    # The moment the first page was read: later pages stay the same list while new entries keep arriving.
    asof = forms.DateTimeField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        event = self.fields["event"]
        assert isinstance(event, forms.ChoiceField)
        event.choices = [
            ("", "All events and changes"),
            (CHANGES, "Field changes (every model)"),
            *[(str(e.value), f"{e.spec.description} ({e.spec.event_id.value})") for e in EventType],
        ]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        start, end = data.get("start"), data.get("end")
        if any(day is not None and day.year not in AUDIT_FILTER_YEARS for day in (start, end)):
            raise forms.ValidationError(AUDIT_FILTER_YEARS_REASON)
        if start and end and start > end:
            raise forms.ValidationError("The start date is after the end date.")
        return data

    def selector_filters(self, *, asof: datetime | None = None) -> dict[str, Any]:
        """The cleaned filters as `audit_trail_keys` takes them; the end date counts whole (until its midnight)."""
        data = self.cleaned_data
        event = data.get("event") or ""
        until = _midnight_utc(data["end"] + timedelta(days=1)) if data.get("end") else None
        if asof is not None:
            until = min(until, asof) if until is not None else asof
        return {
            "username": data.get("user", "").strip(),
            "event_type": int(event) if event and event != CHANGES else None,
            "changes_only": event == CHANGES,
            "since": _midnight_utc(data["start"]) if data.get("start") else None,
            "until": until,
        }

    def recorded_filters(self) -> dict[str, str]:
        """The filters as written into the AUDIT_LOG_USED event: only those given."""
        data = self.cleaned_data
        values = {
            "user": data.get("user", "").strip(),
            "event": data.get("event") or "",
            "from": data["start"].isoformat() if data.get("start") else "",
            "to": data["end"].isoformat() if data.get("end") else "",
        }
        return {key: value for key, value in values.items() if value}


def _log_participant(request: HttpRequest, tenant: Tenant) -> dict[str, str]:
    """The A.5 participant object of an Audit Log Used message: the log, by the URI that was read."""
    return {"type": "audit_log", "id": request.path, "name": f"Audit trail of {tenant.slug}"}


def _midnight_utc(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _role_label(role: str) -> str:
    return Role(role).label if role in Role.values else role


# What django-auditlog stores per field: `[old, new]` for a field (strings, or JSON values with
# AUDITLOG_STORE_JSON_CHANGES), `{"type": "m2m", "operation": ..., "objects": [...]}` for a many-to-many change.
M2M_OPERATIONS = {"add": "added", "delete": "removed", "clear": "cleared"}

# Rows the pipeline keeps for itself (encrypted blobs, ingest items, read counters): folded under the event that
# caused them on the page, so a reviewer sees what happened first and the bookkeeping on demand.
BOOKKEEPING_MODELS = frozenset({"studies.blob", "studies.ingestitem", "studies.readtally", "studies.tenantkey"})


def _value_text(value: Any) -> str:
    if value is None:
        return "(empty)"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return str(value)


def _change_text(action: str, old: str, new: str) -> str:
    """How a changed field reads on the page: a created row has only new values, a deleted one only old ones."""
    if action == "C":
        return new
    if action == "D":
        return f"was {old}"
    return f"{old} → {new}"


def change_texts(action: str, changes: Any) -> list[tuple[str, str]]:
    """(field, what happened to it) for every change shape django-auditlog stores; masked values stay masked.
    An unknown shape is shown as its JSON rather than refused: the trail must always be readable."""
    if not isinstance(changes, dict):
        return [("", _value_text(changes))] if changes else []
    lines = []
    for field, values in changes.items():
        if isinstance(values, dict) and values.get("type") == "m2m":
            operation = str(values.get("operation", ""))
            objects = values.get("objects") or []
            listed = ", ".join(str(item) for item in objects) if isinstance(objects, list) else _value_text(objects)
            lines.append((str(field), f"{M2M_OPERATIONS.get(operation, operation)}: {listed}"))
        elif isinstance(values, list | tuple) and len(values) == 2:
            lines.append((str(field), _change_text(action, _value_text(values[0]), _value_text(values[1]))))
        else:
            lines.append((str(field), _value_text(values)))
    return lines


def trail_row(entry: TrailEntry) -> dict[str, Any]:
    """One line of the page or the export, the same columns for both layers (SECURITY.md, minimum columns)."""
    if entry.kind == TRAIL_EVENT:
        event = entry.event
        assert event is not None
        return {
            "kind": "event",
            "at": event.occurred_at,
            "sequence": event.sequence,
            "event_id": event.event_id,
            "event_display": event.event_id_display,
            "event_type_code": event.event_type_code,
            "event_type_display": event.event_type_display,
            "verb": event.verb,
            "action": event.action,
            "action_label": ACTION_LABELS.get(event.action, event.action),
            "outcome": event.outcome,
            "outcome_label": event.outcome_label,
            "outcome_description": event.outcome_description,
            "ok": event.outcome == 0,
            "user": event.actor_username,
            "role": _role_label(event.actor_role),
            "system_principal": event.system_principal,
            "address": event.source_address or "",
            "target": f"{event.target_type} {event.target_id}".strip(),
            "participants": event.participants,
            "request_id": event.request_id,
            "model": "",
            "object": "",
            "changes": [],
            "change_texts": [],
            "hash": event.hash,
        }
    change = entry.change
    assert change is not None
    action = CHANGE_ACTIONS.get(change.action, "U")
    changes = change.changes_dict or {}
    model = f"{change.content_type.app_label}.{change.content_type.model}"
    return {
        "kind": "change",
        "at": change.timestamp,
        "sequence": None,
        "event_id": "",
        "event_display": "Field change",
        "event_type_code": "",
        "event_type_display": "",
        "verb": f"{change.content_type.name.capitalize()} {CHANGE_VERBS.get(change.action, 'changed')}",
        "action": action,
        "action_label": ACTION_LABELS[action],
        "outcome": 0,
        "outcome_label": "Success",
        "outcome_description": "",
        "ok": True,
        "user": change.actor.username if change.actor is not None else "",
        "role": "",
        "system_principal": "" if change.actor is not None else "system",
        "address": change.remote_addr or "",
        "target": "",
        "participants": [],
        "request_id": change.cid or "",
        "model": model,
        "object": change.object_repr,
        "changes": changes,
        "change_texts": change_texts(action, changes),
        "bookkeeping": model in BOOKKEEPING_MODELS,
        "hash": "",
    }


def trail_fold(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The page's rows with the field changes made by the same request or task (one request id, which
    django-auditlog keeps as its correlation id) folded under the audit event that request recorded, and the
    pipeline's bookkeeping changes with no such event folded under one summary row per request. Order is kept;
    nothing is dropped (the CSV export stays flat)."""
    top: list[dict[str, Any]] = []
    owner: dict[str, dict[str, Any]] = {}
    for row in rows:
        row.setdefault("folded", [])
        if row["kind"] == "event" and row["request_id"] and row["request_id"] not in owner:
            owner[row["request_id"]] = row
    for row in rows:
        if row["kind"] == "change" and row["request_id"] in owner:
            owner[row["request_id"]]["folded"].append(row)
        elif row["kind"] == "change" and row["bookkeeping"]:
            key = f"bookkeeping:{row['request_id'] or id(row)}"
            group = owner.get(key)
            if group is None:
                group = {**row, "kind": "bookkeeping", "verb": "Pipeline bookkeeping", "folded": []}
                owner[key] = group
                top.append(group)
            group["folded"].append(row)
        else:
            top.append(row)
    for row in top:
        if row["kind"] == "bookkeeping":
            models = sorted({folded["model"] for folded in row["folded"]})
            row["object"] = f"{len(row['folded'])} record change{'s' if len(row['folded']) != 1 else ''}: " + ", ".join(
                models
            )
    return top


class AuditView(TenantPageView):
    """/t/<tenant>/audit/ : the tenant's audit events and field changes in one list, newest first, with filters
    by user, event and dates. Compliance officers, auditors and tenant admins (`tenants.view_audit`)."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponse:
        form = AuditFilterForm(request.GET)
        if not form.is_valid():
            return self.render(request, "audit/audit.html", {"form": form, "rows": [], "page_obj": None}, status=400)
        asof = form.cleaned_data.get("asof") or timezone.now()
        paginator = Paginator(audit_trail_keys(actor=request.user, **form.selector_filters(asof=asof)), PAGE_SIZE)
        page_obj = paginator.get_page(request.GET.get("page"))
        rows = trail_fold([trail_row(entry) for entry in audit_trail_entries(page_obj.object_list)])
        audit_event_record(
            event=EventType.AUDIT_LOG_USED,
            actor=request.user,
            tenant=self.tenant,
            target=_log_participant(request, self.tenant),
            extra={"filters": form.recorded_filters(), "results": paginator.count, "page": page_obj.number},
        )
        export_query = request.GET.copy()
        export_query.pop("page", None)
        context = {
            "form": form,
            "rows": rows,
            "page_obj": page_obj,
            "asof": asof.astimezone(UTC).isoformat(timespec="microseconds"),
            "export_query": export_query.urlencode(),
        }
        return self.render(request, "audit/audit.html", context)


CSV_COLUMNS = [
    "kind", "when_utc", "sequence", "event_id", "event_display", "event_type_code", "event_type_display", "verb",
    "action", "outcome", "outcome_description", "user", "role", "system_principal", "source_address", "target",
    "participants", "request_id", "model", "object", "changes", "hash",
]  # fmt: skip


def _cell(value: Any) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_line(row: dict[str, Any]) -> list[str]:
    values = {
        **row,
        "when_utc": row["at"].astimezone(UTC).isoformat(timespec="microseconds"),
        "source_address": row["address"],
        "participants": json.dumps(row["participants"], sort_keys=True) if row["participants"] else "",
        "changes": json.dumps(row["changes"], sort_keys=True, ensure_ascii=False, default=str)
        if row["changes"]
        else "",
    }
    return [_cell(values[column]) for column in CSV_COLUMNS]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_stream(tenant: Tenant, keys: Any) -> Iterator[str]:
    """The export, a batch of rows at a time: memory stays flat however long the trail.

    The response is sent after the view has returned and closed the tenant scope, so each batch reopens the
    scope of the tenant the view checked; no query runs inside a `yield`.
    """
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    iterator = keys.iterator(chunk_size=EXPORT_BATCH)
    while batch := list(islice(iterator, EXPORT_BATCH)):
        with tenant_scope(tenant):
            lines = [_csv_line(trail_row(entry)) for entry in audit_trail_entries(batch)]
        for line in lines:
            yield writer.writerow(line)


class AuditExportView(TenantPageView):
    """/t/<tenant>/audit/export.csv : the same list with the same filters, as CSV (streamed)."""

    required_permission = "tenants.view_audit"

    def get(self, request: HttpRequest, tenant: str) -> HttpResponseBase:
        form = AuditFilterForm(request.GET)
        if not form.is_valid():
            errors = "; ".join(str(error) for errors in form.errors.values() for error in errors)
            return HttpResponse(f"Invalid filters: {errors}\n", status=400, content_type="text/plain; charset=utf-8")
        keys = audit_trail_keys(actor=request.user, **form.selector_filters(asof=form.cleaned_data.get("asof")))
        audit_event_record(
            event=EventType.AUDIT_LOG_USED,
            actor=request.user,
            tenant=self.tenant,
            target=_log_participant(request, self.tenant),
            extra={"export": "csv", "filters": form.recorded_filters(), "results": keys.count()},
        )
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response = StreamingHttpResponse(_csv_stream(self.tenant, keys), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="audit-{self.tenant.slug}-{stamp}.csv"'
        return response
