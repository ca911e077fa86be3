"""Security rules over a tenant's event stream, run by a beat job (audit.tasks.security_rules_evaluate_all).

Each rule reads the events of the last SECURITY_RULE_WINDOW_SECONDS and names what it found: a subject (a user
name, an event) and the events that are its evidence. `security_rules_evaluate` raises one SecurityAlert per rule
and subject per window (a burst that goes on does not raise again until the window has passed), or once ever for
a rule about a single event.

Raised where they happen instead (not here): every break-glass, malware at ingest, an unknown DICOM peer, a
request from outside the tenant's trusted networks, a failed audit verification.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from audit.services import security_alert_raise
from tenants.models import Tenant

# Events that carry patient data to the person who asked: what "reading" means for the bulk and off-hours rules.
READ_EVENTS = (
    EventType.STUDIES_QUERIED,
    EventType.INSTANCES_ACCESSED,
    EventType.INSTANCES_RETRIEVED,
    EventType.INSTANCES_MOVED,
    EventType.STUDY_EXPORTED,
    EventType.DISCLOSURE_EXPORTED,
)


@dataclass
class RuleHit:
    kind: str
    subject: str
    summary: str
    severity: str
    events: list[AuditEvent] = field(default_factory=list)
    once: bool = False  # one alert ever for this subject (an event), not one per window


def _person(event: AuditEvent) -> str:
    return (event.actor_username or "").strip().lower()


def _by_person(events: Iterable[AuditEvent]) -> dict[str, list[AuditEvent]]:
    groups: dict[str, list[AuditEvent]] = {}
    for event in events:
        name = _person(event)
        if name:
            groups.setdefault(name, []).append(event)
    return groups


def _bursts(qs: models.QuerySet[AuditEvent], threshold: int) -> dict[str, list[AuditEvent]]:
    """Events grouped by the person they name (user name, case folded), keeping groups of `threshold` or more."""
    groups = _by_person(qs.order_by("occurred_at", "sequence"))
    return {name: events for name, events in groups.items() if len(events) >= threshold}


def _patients(event: AuditEvent) -> set[str]:
    return {str(p.get("id")) for p in event.participants or [] if p.get("type") == "patient" and p.get("id")}


def _not_found_bursts(window: models.QuerySet[AuditEvent]) -> list[RuleHit]:
    """A person asking for many different objects that are not there: guessing identifiers."""
    hits = []
    events = window.filter(event_type=EventType.OBJECT_NOT_FOUND).order_by("occurred_at", "sequence")
    for name, found in _by_person(events).items():
        identifiers = {str((e.extra or {}).get("identifier", "")) for e in found}
        if len(identifiers) >= settings.SECURITY_NOT_FOUND_THRESHOLD:
            summary = f"{name} asked for {len(identifiers)} different objects that are not there"
            hits.append(RuleHit("not_found_burst", name, summary, "high", found))
    return hits


def _bulk_reads(tenant: Tenant, window: models.QuerySet[AuditEvent], start: datetime) -> list[RuleHit]:
    """A person whose patient records read in the window are far above their usual: at least
    SECURITY_BULK_MIN_PATIENTS distinct patients and more than SECURITY_BULK_FACTOR times their average per window
    over the SECURITY_BULK_BASELINE_DAYS before it."""
    hits = []
    reads = window.filter(event_type__in=[int(e) for e in READ_EVENTS], outcome=Outcome.SUCCESS)
    window_seconds = settings.SECURITY_RULE_WINDOW_SECONDS
    baseline_start = start - timedelta(days=settings.SECURITY_BULK_BASELINE_DAYS)
    windows_in_baseline = max(1.0, (start - baseline_start).total_seconds() / window_seconds)
    for name, events in _by_person(reads.order_by("occurred_at", "sequence")).items():
        patients = set().union(*(_patients(e) for e in events))
        if len(patients) < settings.SECURITY_BULK_MIN_PATIENTS:
            continue
        before = AuditEvent.objects.filter(
            tenant=tenant,
            event_type__in=[int(e) for e in READ_EVENTS],
            outcome=Outcome.SUCCESS,
            actor_username__iexact=name,
            occurred_at__gte=baseline_start,
            occurred_at__lt=start,
        ).only("participants")
        usual = sum(len(_patients(e)) for e in before.iterator(chunk_size=2000)) / windows_in_baseline
        if len(patients) > settings.SECURITY_BULK_FACTOR * usual:
            summary = f"{name} read the records of {len(patients)} patients (usually {usual:.1f} in that time)"
            evidence = [e for e in events if _patients(e)]
            hits.append(RuleHit("bulk_retrieval", name, summary, "high", evidence))
    return hits


def working_hours_contain(tenant: Tenant, moment: datetime) -> bool:
    """True when `moment` falls within the tenant's working hours (its days and times, in its time zone), or the
    tenant set no working hours."""
    if tenant.working_hours_start is None or tenant.working_hours_end is None:
        return True
    local = moment.astimezone(zoneinfo.ZoneInfo(tenant.time_zone or "UTC"))
    if str(local.isoweekday()) not in (tenant.working_days or ""):
        return False
    start, end, now = tenant.working_hours_start, tenant.working_hours_end, local.time()
    if start <= end:
        return start <= now < end
    return now >= start or now < end  # a night shift: the hours run past midnight


def _off_hours(tenant: Tenant, window: models.QuerySet[AuditEvent]) -> list[RuleHit]:
    if tenant.working_hours_start is None or tenant.working_hours_end is None:
        return []
    reads = window.filter(event_type__in=[int(e) for e in READ_EVENTS], outcome=Outcome.SUCCESS)
    outside = [e for e in reads.order_by("occurred_at", "sequence") if not working_hours_contain(tenant, e.occurred_at)]
    return [
        RuleHit("off_hours_access", name, f"{name} read patient data outside working hours", "warning", events)
        for name, events in _by_person(outside).items()
    ]


def security_rules_match(*, tenant: Tenant, now: datetime) -> list[RuleHit]:
    """What the rules find in the tenant's events of the last SECURITY_RULE_WINDOW_SECONDS (read-only):
    - repeated failed sign-ins (wrong password or MFA code) of one user name, SECURITY_FAILED_LOGIN_THRESHOLD or more;
    - each lockout;
    - a burst of refusals (403) of one person, SECURITY_ACCESS_DENIED_THRESHOLD or more;
    - a person who reached a rate limit (RATE_LIMITED is written once per limit window already);
    - a burst of 404s across SECURITY_NOT_FOUND_THRESHOLD or more different identifiers of one person;
    - bulk retrieval far above a person's usual (`_bulk_reads`);
    - reads of patient data outside the tenant's working hours, when it set them.
    Runs inside the tenant's scope."""
    start = now - timedelta(seconds=settings.SECURITY_RULE_WINDOW_SECONDS)
    window = AuditEvent.objects.filter(tenant=tenant, occurred_at__gte=start, occurred_at__lte=now)
    hits = []
    failed = window.filter(event_type__in=[EventType.LOGIN_FAILED, EventType.MFA_FAILED])
    for name, events in _bursts(failed, settings.SECURITY_FAILED_LOGIN_THRESHOLD).items():
        hits.append(RuleHit("repeated_failed_logins", name, f"{len(events)} failed sign-ins of {name}", "high", events))
    for event in window.filter(event_type=EventType.LOCKED_OUT).order_by("sequence"):
        name = event.actor_username or "an unknown user"
        hits.append(RuleHit("locked_out", str(event.public_id), f"{name} locked out", "warning", [event], once=True))
    denied = window.filter(event_type=EventType.ACCESS_DENIED)
    for name, events in _bursts(denied, settings.SECURITY_ACCESS_DENIED_THRESHOLD).items():
        hits.append(RuleHit("access_denied_burst", name, f"{len(events)} refused requests by {name}", "high", events))
    limited = window.filter(event_type=EventType.RATE_LIMITED)
    for name, events in _bursts(limited, 1).items():
        hits.append(RuleHit("rate_limited", name, f"{name} reached a rate limit ({len(events)}x)", "warning", events))
    hits.extend(_not_found_bursts(window))
    hits.extend(_bulk_reads(tenant, window, start))
    hits.extend(_off_hours(tenant, window))
    return hits


def security_rules_evaluate(*, tenant: Tenant, now: datetime | None = None) -> list[SecurityAlert]:
    """Raise a SecurityAlert, with its evidence, for each rule hit that has none yet: one per person and rule per
    window, one per lockout. System job, inside the tenant's scope; idempotent (run it as often as you like)."""
    now = now or timezone.now()
    start = now - timedelta(seconds=settings.SECURITY_RULE_WINDOW_SECONDS)
    raised = []
    for hit in security_rules_match(tenant=tenant, now=now):
        existing = SecurityAlert.objects.filter(tenant=tenant, kind=hit.kind, subject=hit.subject)
        if not hit.once:
            existing = existing.filter(raised_at__gte=start)
        if existing.exists():
            continue
        evidence = [str(event.public_id) for event in hit.events]
        extra: dict[str, Any] = {"rule": hit.kind, "subject": hit.subject, "evidence": len(evidence)}
        raised.append(
            security_alert_raise(
                kind=hit.kind,
                summary=hit.summary,
                event=EventType.SECURITY_RULE_MATCHED,
                severity=hit.severity,
                tenant=tenant,
                outcome=Outcome.MINOR_FAILURE,
                subject=hit.subject,
                evidence=evidence,
                participants=[{"type": "audit_event", "id": pid, "role": "evidence"} for pid in evidence],
                extra=extra,
            )
        )
    return raised
