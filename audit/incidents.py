"""Security incidents and the HITECH notification clocks (HIPAA 164.308(a)(6); 164.404-164.410).

An incident is opened from one or more security alerts by someone who may handle alerts (compliance officers).
It records its scope (a breach-scope query over the trail and its result, frozen and hash-referenced when taken),
its decisions, the 4-factor determination, the individuals affected per state, and the deadlines those imply:

- individuals: without unreasonable delay and at most 60 calendar days from discovery (164.404(b));
- HHS: with the individual notices when 500 or more are affected (164.408(b)), else in the annual log, within 60
  days after the end of the calendar year of discovery (164.408(c));
- prominent media in a state where more than 500 residents are affected (164.406);
- a business associate tells the covered entity within 60 days (164.410), and the clocks above are the covered
  entity's.

A breach is presumed until a documented assessment shows a low probability of compromise (164.402): the clocks
run while the determination is open and stop with "low probability". A daily job mails the compliance officers
30, 14, 7 and 1 days before each deadline and once it has passed, each reminder once.

E-mail never carries patient data: messages name the incident and the deadline; the page shows the rest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from audit.events import EventType
from audit.models import Incident, IncidentDecision, SecurityAlert
from audit.selectors import audit_breach_scope
from audit.services import ALERT_HANDLE_PERM, audit_event_record
from tenants import access
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tenants.selectors import compliance_officer_emails
from tenants.services import mail_queue

HITECH_DAYS = 60
HHS_IMMEDIATE_THRESHOLD = 500  # 500 or more affected: HHS with the individual notices
MEDIA_STATE_THRESHOLD = 500  # more than 500 residents of one state: prominent media there
REMINDER_DAYS = (30, 14, 7, 1, 0)
# Alerts whose raiser mails the compliance officers itself, with more to say (break-glass: who, until when, the
# review queue): not mailed twice.
MAILED_WHERE_RAISED = frozenset({"break_glass"})  # 0: the day it is due or any day after, once
STATE_CODE = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class Deadline:
    key: str
    label: str
    due: date
    rule: str


def incident_deadlines(incident: Incident) -> list[Deadline]:
    """The notification deadlines the incident implies today, earliest first (none once it is determined a low
    probability of compromise)."""
    if incident.determination == Incident.Determination.LOW_PROBABILITY:
        return []
    discovered = timezone.localdate(incident.discovered_at, timezone=timezone.get_fixed_timezone(0))
    sixty = discovered + timedelta(days=HITECH_DAYS)
    if incident.role == Incident.Role.BUSINESS_ASSOCIATE:
        return [Deadline("covered_entity", "Notify the covered entity", sixty, "45 CFR 164.410(b)")]
    deadlines = [Deadline("individuals", "Notify each affected individual", sixty, "45 CFR 164.404(b)")]
    if incident.affected_count >= HHS_IMMEDIATE_THRESHOLD:
        deadlines.append(Deadline("hhs", "Notify the Secretary of HHS", sixty, "45 CFR 164.408(b)"))
    else:
        year_end_log = date(discovered.year + 1, 1, 1) + timedelta(days=HITECH_DAYS - 1)
        deadlines.append(Deadline("hhs_log", "Report in the annual log to HHS", year_end_log, "45 CFR 164.408(c)"))
    media_states = sorted(state for state, count in (incident.affected_by_state or {}).items()
                          if int(count) > MEDIA_STATE_THRESHOLD)  # fmt: skip
    if media_states:
        label = f"Notify prominent media in {', '.join(media_states)}"
        deadlines.append(Deadline("media", label, sixty, "45 CFR 164.406"))
    return sorted(deadlines, key=lambda d: (d.due, d.key))


def _incident_target(incident: Incident) -> dict[str, Any]:
    return {"type": "incident", "id": str(incident.public_id), "name": incident.title}


def _require(actor: Any, tenant: Tenant) -> None:
    access.require(actor, ALERT_HANDLE_PERM, tenant, visible_perm="tenants.view_audit")


def _clean_title(title: str) -> str:
    title = (title or "").strip()
    if not title:
        raise ValidationError({"title": "Give the incident a title (no patient data: it is mailed)."})
    if len(title) > 200:
        raise ValidationError({"title": "At most 200 characters."})
    return title


@transaction.atomic
def incident_open(
    *, actor: Any, tenant: Tenant, alerts: list[SecurityAlert], title: str, discovered_at: datetime | None = None
) -> Incident:
    """Open an incident from alerts of the current tenant (ALERT_HANDLE_PERM). Discovery defaults to when the
    earliest of them was raised: that is when the tenant knew (164.404(a)(2))."""
    _require(actor, tenant)
    if not alerts:
        raise ValidationError({"alerts": "An incident is opened from at least one alert."})
    discovered = discovered_at or min(alert.raised_at for alert in alerts)
    if discovered > timezone.now():
        raise ValidationError({"discovered_at": "Discovery cannot be in the future."})
    incident = Incident(tenant=tenant, title=_clean_title(title), opened_by=actor, discovered_at=discovered)
    incident.full_clean()
    incident.save()
    incident.alerts.set(alerts)
    audit_event_record(
        event=EventType.INCIDENT_OPENED,
        actor=actor,
        target=_incident_target(incident),
        participants=[{"type": "security_alert", "id": str(alert.public_id), "role": "evidence"} for alert in alerts],
        extra={"discovered_at": discovered.isoformat(), "alerts": len(alerts)},
    )
    return incident


def _snapshot_digest(snapshot: list[dict[str, Any]]) -> str:
    canonical = json.dumps(snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@transaction.atomic
def incident_scope_take(
    *,
    actor: Any,
    incident: Incident,
    since: datetime,
    until: datetime,
    username: str = "",
    device: str = "",
    source_address: str = "",
) -> Incident:
    """Run the breach-scope query (audit.selectors.audit_breach_scope) and freeze its result on the incident with
    its SHA-256: the exact patients whose data the person, device or address read or found in the window. Taking
    it again replaces it (the earlier one stays in django-auditlog's history and on the trail by its hash). Sets
    the affected count to the scope's."""
    _require(actor, incident.tenant)
    _open_or_refuse(incident)
    if since >= until:
        raise ValidationError({"until": "The window must end after it starts."})
    touched = audit_breach_scope(
        actor=actor, since=since, until=until, username=username, device=device, source_address=source_address
    )
    snapshot = [
        {
            "patient_id": t.patient_id,
            "name": t.name,
            "studies": sorted(t.studies),
            "events": t.events,
            "first": t.first.isoformat(),
            "last": t.last.isoformat(),
            "verbs": sorted(t.verbs),
        }
        for t in touched
    ]
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    locked.scope_username, locked.scope_device, locked.scope_address = username, device, source_address
    locked.scope_since, locked.scope_until = since, until
    locked.scope_snapshot, locked.scope_sha256 = snapshot, _snapshot_digest(snapshot)
    locked.scope_taken_at, locked.affected_count = timezone.now(), len(snapshot)
    locked.save()
    audit_event_record(
        event=EventType.INCIDENT_SCOPED,
        actor=actor,
        target=_incident_target(locked),
        participants=[{"type": "patient", "id": t.patient_id, "name": t.name} for t in touched],
        extra={"patients": len(snapshot), "sha256": locked.scope_sha256, "since": since.isoformat(),
               "until": until.isoformat(), "by": {"user": username, "device": device, "address": source_address}},
    )  # fmt: skip
    return locked


def incident_scope_intact(incident: Incident) -> bool:
    """True when the frozen scope still hashes to the digest taken with it."""
    return bool(incident.scope_sha256) and _snapshot_digest(incident.scope_snapshot) == incident.scope_sha256


def _open_or_refuse(incident: Incident) -> None:
    if incident.status == Incident.Status.CLOSED:
        raise ValidationError({"status": "This incident is closed."})


@transaction.atomic
def incident_decision_record(*, actor: Any, incident: Incident, text: str) -> IncidentDecision:
    _require(actor, incident.tenant)
    _open_or_refuse(incident)
    text = (text or "").strip()
    if not text:
        raise ValidationError({"text": "Write the decision."})
    if len(text) > 2000:
        raise ValidationError({"text": "At most 2000 characters."})
    decision = IncidentDecision.objects.create(tenant=incident.tenant, incident=incident, decided_by=actor, text=text)
    audit_event_record(
        event=EventType.INCIDENT_DECISION_RECORDED,
        actor=actor,
        target=_incident_target(incident),
        extra={"decision": str(decision.public_id)},
    )
    return decision


def _clean_states(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValidationError({"affected_by_state": "Residents affected per state, e.g. {'NY': 120}."})
    cleaned = {}
    for state, count in value.items():
        code = str(state).strip().upper()
        if not STATE_CODE.match(code):
            raise ValidationError({"affected_by_state": f"{state!r} is not a two-letter state code."})
        try:
            number = int(count)
        except (TypeError, ValueError) as exc:
            raise ValidationError({"affected_by_state": f"The count for {code} is not a number."}) from exc
        if number < 0 or number > 10**9:
            raise ValidationError({"affected_by_state": f"The count for {code} is out of range."})
        cleaned[code] = number
    return cleaned


@transaction.atomic
def incident_update(
    *,
    actor: Any,
    incident: Incident,
    status: str | None = None,
    determination: str | None = None,
    role: str | None = None,
    affected_count: int | None = None,
    affected_by_state: dict[str, Any] | None = None,
) -> Incident:
    """Change an incident's status, determination, role or affected counts (ALERT_HANDLE_PERM). Closing needs a
    determination; a closed incident stays closed."""
    _require(actor, incident.tenant)
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    _open_or_refuse(locked)
    before = {"status": locked.status, "determination": locked.determination, "role": locked.role,
              "affected_count": locked.affected_count, "affected_by_state": dict(locked.affected_by_state)}  # fmt: skip
    if status is not None:
        if status not in Incident.Status.values:
            raise ValidationError({"status": "Unknown status."})
        locked.status = status
    if determination is not None:
        if determination not in Incident.Determination.values:
            raise ValidationError({"determination": "Unknown determination."})
        locked.determination = determination
    if role is not None:
        if role not in Incident.Role.values:
            raise ValidationError({"role": "Unknown role."})
        locked.role = role
    if affected_count is not None:
        if not 0 <= int(affected_count) <= 10**9:
            raise ValidationError({"affected_count": "Out of range."})
        locked.affected_count = int(affected_count)
    if affected_by_state is not None:
        locked.affected_by_state = _clean_states(affected_by_state)
    if locked.status == Incident.Status.CLOSED:
        if locked.determination == Incident.Determination.UNDETERMINED:
            raise ValidationError({"determination": "Record the determination before closing the incident."})
        locked.closed_at = timezone.now()
    locked.save()
    after = {"status": locked.status, "determination": locked.determination, "role": locked.role,
             "affected_count": locked.affected_count, "affected_by_state": dict(locked.affected_by_state)}  # fmt: skip
    changed = {key: {"from": before[key], "to": after[key]} for key in after if before[key] != after[key]}
    audit_event_record(
        event=EventType.INCIDENT_CLOSED
        if "status" in changed and locked.status == Incident.Status.CLOSED
        else EventType.INCIDENT_UPDATED,
        actor=actor,
        target=_incident_target(locked),
        extra={"changed": changed},
    )
    return locked


# Mail to the compliance officers
# ------------------------------------------------------------------------------


def security_alert_mail(alert: SecurityAlert) -> None:
    """Hook of audit.services.security_alert_raise: a high or critical alert of a tenant is mailed to its
    compliance officers after the commit (the alert's summary carries no patient data by contract)."""
    if alert.tenant is None or alert.severity == SecurityAlert.Severity.WARNING or alert.kind in MAILED_WHERE_RAISED:
        return
    page = reverse("portal:audit_alert", kwargs={"tenant": alert.tenant.slug, "public_id": alert.public_id})
    with tenant_scope(alert.tenant):  # raised from anywhere, scoped or not: the officers are the alert's tenant's
        recipients = compliance_officer_emails()
    mail_queue(
        subject=f"[{alert.get_severity_display()}] Security alert in {alert.tenant.name}: {alert.kind}",
        body=f"{alert.summary}\n\nRaised at {alert.raised_at:%Y-%m-%d %H:%M} UTC. Open it here: "
        f"{settings.PORTAL_BASE_URL}{page}\n",
        to=recipients,
    )


@transaction.atomic
def incident_reminders_send(*, tenant: Tenant, today: date | None = None) -> int:
    """Mail the compliance officers about each deadline of the tenant's open incidents that is 30, 14, 7 or 1 days
    away, or due or past: each reminder once (its key is kept on the incident). System job inside the tenant's
    scope; idempotent. Returns the reminders sent."""
    today = today or timezone.localdate(timezone.now(), timezone=timezone.get_fixed_timezone(0))
    sent = 0
    open_incidents = Incident.objects.select_for_update().exclude(status=Incident.Status.CLOSED).order_by("pk")
    for incident in open_incidents:
        done = set(incident.reminders_sent or [])
        due_now = []
        for deadline in incident_deadlines(incident):
            left = (deadline.due - today).days
            threshold = next((days for days in sorted(REMINDER_DAYS) if left <= days), None)
            if threshold is None:  # further away than the first reminder
                continue
            key = f"{deadline.key}:{threshold}"
            if key not in done:
                due_now.append((deadline, left, key))
        if not due_now:
            continue
        page = reverse("portal:audit_incident", kwargs={"tenant": tenant.slug, "public_id": incident.public_id})
        lines = [
            f"- {d.label} ({d.rule}): due {d.due:%Y-%m-%d}, " + (f"{left} days left" if left > 0 else
                                                               "due today" if left == 0 else f"{-left} days late")
            for d, left, _ in due_now
        ]  # fmt: skip
        mail_queue(
            subject=f"Incident deadlines in {tenant.name}: {incident.title}",
            body="\n".join(lines) + f"\n\nThe incident: {settings.PORTAL_BASE_URL}{page}\n",
            to=compliance_officer_emails(),
        )
        incident.reminders_sent = sorted(done | {key for _, _, key in due_now})
        incident.save(update_fields=["reminders_sent", "updated_at"])
        audit_event_record(
            event=EventType.INCIDENT_REMINDER_SENT,
            tenant=tenant,
            target=_incident_target(incident),
            system_principal="celery:incident-reminders",
            extra={"reminders": [key for _, _, key in due_now]},
        )
        sent += len(due_now)
    return sent
