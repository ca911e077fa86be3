"""How the trail reads: one row shape for both layers (audit events and django-auditlog field changes), the
folding of pipeline bookkeeping, patient identifiers masked in field diffs, and the CSV lines of an export."""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from itertools import islice
from typing import Any

from django.http import HttpRequest

from audit.selectors import TRAIL_EVENT, TrailEntry, audit_trail_entries
from tenants.models import Role, Tenant
from tenants.scoping import tenant_scope

PAGE_SIZE = 50
EXPORT_BATCH = 500
CHANGES = "changes"
ACTION_LABELS = {"C": "Create", "R": "Read", "U": "Update", "D": "Delete", "E": "Execute"}
CHANGE_ACTIONS = {0: "C", 1: "U", 2: "D", 3: "R"}  # django-auditlog's LogEntry.Action -> A.5 EventActionCode
CHANGE_VERBS = {0: "created", 1: "changed", 2: "deleted", 3: "read"}


def log_participant(request: HttpRequest, tenant: Tenant) -> dict[str, str]:
    """The A.5 participant object of an Audit Log Used message: the log, by the URI that was read."""
    return {"type": "audit_log", "id": request.path, "name": f"Audit trail of {tenant.slug}"}


def midnight_utc(day: date) -> datetime:
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


# Patient identifiers in field diffs: shown as masked on every screen and export of the trail, whatever the
# django-auditlog settings stored (older rows, or a model added before its fields were masked). The fact that the
# field changed stays visible.
MASK = "•••••• (patient identifier, masked)"
PATIENT_IDENTIFIER_FIELDS: dict[str, frozenset[str]] = {
    "studies.patient": frozenset({"patient_id", "issuer", "name", "birth_date", "sex"}),
}
PATIENT_IDENTIFIER_FIELD_NAMES = frozenset({"patient_id", "patient_name", "patient_birth_date", "other_patient_ids"})


def changes_masked(model: str, changes: Any) -> Any:
    """`changes` with every patient identifier's values replaced by MASK (a new dict; the row is untouched)."""
    if not isinstance(changes, dict):
        return changes
    masked_fields = PATIENT_IDENTIFIER_FIELDS.get(model, frozenset()) | PATIENT_IDENTIFIER_FIELD_NAMES
    masked: dict[str, Any] = {}
    for field, values in changes.items():
        if field in masked_fields:
            masked[field] = [MASK, MASK] if isinstance(values, list | tuple) and len(values) == 2 else MASK
        else:
            masked[field] = values
    return masked


def object_repr_masked(model: str, text: str) -> str:
    """A patient row's own name (its `str`) is an identifier too."""
    return f"{model} (masked)" if model in PATIENT_IDENTIFIER_FIELDS else text


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
            "public_id": str(event.public_id),
        }
    change = entry.change
    assert change is not None
    action = CHANGE_ACTIONS.get(change.action, "U")
    model = f"{change.content_type.app_label}.{change.content_type.model}"
    changes = changes_masked(model, change.changes_dict or {})
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
        "object": object_repr_masked(model, change.object_repr),
        "change_id": change.pk,
        "changes": changes,
        "change_texts": change_texts(action, changes),
        "bookkeeping": model in BOOKKEEPING_MODELS,
        "hash": "",
        "public_id": "",
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


CSV_COLUMNS = [
    "kind", "when_utc", "sequence", "event_id", "event_display", "event_type_code", "event_type_display", "verb",
    "action", "outcome", "outcome_description", "user", "role", "system_principal", "source_address", "target",
    "participants", "request_id", "model", "object", "changes", "hash",
]  # fmt: skip


def csv_cell(value: Any) -> str:
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
    return [csv_cell(values[column]) for column in CSV_COLUMNS]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _batch(tenant: Tenant, iterator: Iterator[Any]) -> list[Any]:
    """The next batch of keys, read in the tenant's scope: the database's row-level security (tenants.db) holds the
    keys' query to the scope it runs in, not to the one it was built in."""
    with tenant_scope(tenant):
        return list(islice(iterator, EXPORT_BATCH))


def csv_stream(tenant: Tenant, keys: Any) -> Iterator[str]:
    """The export, a batch of rows at a time: memory stays flat however long the trail.

    The response is sent after the view has returned and closed the tenant scope, so each batch reopens the
    scope of the tenant the view checked; no query runs inside a `yield`.
    """
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    iterator = keys.iterator(chunk_size=EXPORT_BATCH)
    while batch := _batch(tenant, iterator):
        with tenant_scope(tenant):
            lines = [_csv_line(trail_row(entry)) for entry in audit_trail_entries(batch)]
        for line in lines:
            yield writer.writerow(line)


# The A.5 message of one event, for the detail view (PS3.15 A.5.1; codes from A.5.2 and CID 400-403).
PARTICIPANT_CODES: dict[str, tuple[str, str, str]] = {
    # our participant type -> (ParticipantObjectTypeCode, ParticipantObjectTypeCodeRole, ParticipantObjectIDTypeCode)
    "patient": ("1 Person", "1 Patient", "2 Patient Number"),
    "study": ("2 System Object", "3 Report", "110180 Study Instance UID"),
    "query": ("2 System Object", "24 Query", "110181 SOP Class UID"),
    "user": ("1 Person", "6 User", "11 User Identifier"),
    "audit_log": ("2 System Object", "13 Security Resource", "12 URI"),
}
OTHER_PARTICIPANT = ("2 System Object", "4 Resource", "Enclave object id")


def a5_message(event: Any, *, audit_source: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every element of the DICOM audit message of `event`, as (section, [(element, value)]) for display."""
    identification = [
        ("EventID", f"{event.event_id} {event.event_id_display}"),
        ("EventActionCode", f"{event.action} ({ACTION_LABELS.get(event.action, event.action)})"),
        ("EventDateTime", event.occurred_at.astimezone(UTC).isoformat(timespec="microseconds")),
        ("EventOutcomeIndicator", f"{event.outcome} ({event.outcome_label})"),
        ("EventOutcomeDescription", event.outcome_description or "—"),
        ("EventTypeCode", f"{event.event_type_code} {event.event_type_display}".strip() or "—"),
        ("Enclave verb", event.verb),
    ]
    requestor = [
        ("UserID", event.actor_username or event.system_principal or "—"),
        ("AlternativeUserID", str(event.actor_user.subject_uuid) if event.actor_user is not None else "—"),
        ("UserName", event.actor_username or "—"),
        ("UserIsRequestor", "true"),
        ("RoleIDCode", _role_label(event.actor_role) if event.actor_role else "—"),
        ("System principal", event.system_principal or "—"),
        ("NetworkAccessPointID", event.source_address or "—"),
        ("NetworkAccessPointTypeCode", "2 (IP address)" if event.source_address else "—"),
    ]
    source = [
        ("AuditSourceID", audit_source),
        ("AuditEnterpriseSiteID", event.tenant.slug if event.tenant is not None else "platform"),
        ("AuditSourceTypeCode", "4 (Application Server process)"),
    ]
    sections = [("Event identification", identification), ("Active participant (requestor)", requestor),
                ("Audit source identification", source)]  # fmt: skip
    for entry in event.participants or []:
        type_code, role, id_type = PARTICIPANT_CODES.get(str(entry.get("type", "")), OTHER_PARTICIPANT)
        fields = [
            ("ParticipantObjectTypeCode", type_code),
            ("ParticipantObjectTypeCodeRole", role),
            ("ParticipantObjectIDTypeCode", id_type),
            ("ParticipantObjectID", str(entry.get("id", ""))),
            ("ParticipantObjectName", str(entry.get("name", "")) or "—"),
        ]
        if entry.get("query"):
            fields.append(("ParticipantObjectQuery", str(entry["query"])))
        if entry.get("role"):
            fields.append(("Role in this event", str(entry["role"])))
        if entry.get("detail"):
            fields.append(("ParticipantObjectDetail", json.dumps(entry["detail"], sort_keys=True, default=str)))
        sections.append((f"Participant object ({entry.get('type', 'object')})", fields))
    sections.append(("Tamper evidence", [
        ("Chain", event.chain.key), ("Sequence", str(event.sequence)), ("Request id", event.request_id or "—"),
        ("Previous hash", event.prev_hash), ("Hash", event.hash),
        ("Extra", json.dumps(event.extra, sort_keys=True, default=str) if event.extra else "—"),
    ]))  # fmt: skip
    return sections


# The DICOM audit message XML of PS3.15 A.5.1, one AuditMessage per event
# ------------------------------------------------------------------------------

PARTICIPANT_XML_CODES: dict[str, tuple[str, str, tuple[str, str, str]]] = {
    # type -> (ParticipantObjectTypeCode, ParticipantObjectTypeCodeRole, ParticipantObjectIDTypeCode)
    "patient": ("1", "1", ("2", "RFC-3881", "Patient Number")),
    "study": ("2", "3", ("110180", "DCM", "Study Instance UID")),
    "query": ("2", "24", ("110181", "DCM", "SOP Class UID")),
    "user": ("1", "6", ("11", "RFC-3881", "User Identifier")),
    "audit_log": ("2", "13", ("12", "RFC-3881", "URI")),
}
OTHER_PARTICIPANT_XML = ("2", "4", ("enclave-object", "Enclave", "Enclave object id"))


def _coded(parent: Any, tag: str, code: str, system: str, display: str) -> Any:
    from xml.etree.ElementTree import SubElement

    return SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": display})


def a5_xml(event: Any, *, audit_source: str) -> Any:
    """`event` as an AuditMessage element (PS3.15 A.5.1): EventIdentification, the requesting ActiveParticipant,
    AuditSourceIdentification and one ParticipantObjectIdentification per participant."""
    from xml.etree.ElementTree import Element, SubElement

    message = Element("AuditMessage")
    identification = SubElement(message, "EventIdentification", {
        "EventActionCode": event.action,
        "EventDateTime": event.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "EventOutcomeIndicator": str(event.outcome),
    })  # fmt: skip
    _coded(identification, "EventID", event.event_id, "DCM", event.event_id_display)
    if event.event_type_code:
        _coded(identification, "EventTypeCode", event.event_type_code, "DCM", event.event_type_display)
    if event.outcome_description:
        SubElement(identification, "EventOutcomeDescription").text = event.outcome_description
    requestor = {
        "UserID": event.actor_username or event.system_principal or "unknown",
        "UserIsRequestor": "true",
    }
    if event.actor_user is not None:
        requestor["AlternativeUserID"] = str(event.actor_user.subject_uuid)
    if event.actor_username:
        requestor["UserName"] = event.actor_username
    if event.source_address:
        requestor |= {"NetworkAccessPointID": event.source_address, "NetworkAccessPointTypeCode": "2"}
    participant_el = SubElement(message, "ActiveParticipant", requestor)
    if event.actor_role:
        _coded(participant_el, "RoleIDCode", event.actor_role, "Enclave", _role_label(event.actor_role))
    source = SubElement(message, "AuditSourceIdentification", {
        "AuditSourceID": audit_source,
        "AuditEnterpriseSiteID": event.tenant.slug if event.tenant is not None else "platform",
    })  # fmt: skip
    _coded(source, "AuditSourceTypeCode", "4", "DCM", "Application Server process")
    for entry in event.participants or []:
        type_code, role, (id_code, id_system, id_display) = PARTICIPANT_XML_CODES.get(
            str(entry.get("type", "")), OTHER_PARTICIPANT_XML
        )
        obj = SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(entry.get("id", "")),
            "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role,
        })  # fmt: skip
        _coded(obj, "ParticipantObjectIDTypeCode", id_code, id_system, id_display)
        # A.5.1: a name or a query (base64), not both; a query's name goes to the description.
        if entry.get("query"):
            SubElement(obj, "ParticipantObjectQuery").text = base64.b64encode(str(entry["query"]).encode()).decode()
        elif entry.get("name"):
            SubElement(obj, "ParticipantObjectName").text = str(entry["name"])
        for key, value in (entry.get("detail") or {}).items():
            encoded = base64.b64encode(str(value).encode()).decode()
            SubElement(obj, "ParticipantObjectDetail", {"type": str(key), "value": encoded})
        if entry.get("query") and entry.get("name"):
            SubElement(obj, "ParticipantObjectDescription").text = str(entry["name"])
    return message


def xml_stream(tenant: Tenant, keys: Any, *, audit_source: str) -> Iterator[str]:
    """The events of `keys` (field changes have no A.5 message and are left out) as one XML document holding an
    AuditMessage per event, a batch at a time (see csv_stream for the scope)."""
    from xml.etree.ElementTree import tostring

    yield '<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n'
    iterator = keys.iterator(chunk_size=EXPORT_BATCH)
    while batch := _batch(tenant, iterator):
        with tenant_scope(tenant):
            entries = audit_trail_entries(batch)
            lines = [
                tostring(a5_xml(e.event, audit_source=audit_source), encoding="unicode") for e in entries if e.event
            ]
        for line in lines:
            yield line + "\n"
    yield "</AuditMessages>\n"


def json_stream(tenant: Tenant, keys: Any) -> Iterator[str]:
    """The same entries as the CSV, as one JSON array of objects with the CSV's columns (values as JSON)."""
    yield "["
    first = True
    iterator = keys.iterator(chunk_size=EXPORT_BATCH)
    while batch := _batch(tenant, iterator):
        with tenant_scope(tenant):
            rows = [trail_row(entry) for entry in audit_trail_entries(batch)]
        for row in rows:
            item = {column: row.get(column) for column in CSV_COLUMNS if column in row}
            item["when_utc"] = row["at"].astimezone(UTC).isoformat(timespec="microseconds")
            item["source_address"] = row["address"]
            yield ("" if first else ",") + "\n" + json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)
            first = False
    yield "\n]\n"
