"""Writes of the training registry. Each checks `tenants.access` first and writes its audit event in its own
transaction; completions are never edited (a correction supersedes), and certificates go to the blob store
encrypted under the tenant's keys, like images.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.services import audit_event_record
from studies.models import Blob
from studies.storage.blobs import blob_read, blob_write
from tenants import access
from tenants.models import Membership, Role, Tenant, User
from tenants.scoping import current_tenant
from tenants.services import mail_queue
from training import selectors
from training.catalogue import CATALOGUE
from training.models import CatalogueCourse, Completion, Course, DigestSent, ReminderSent, Requirement

logger = logging.getLogger(__name__)

MANAGE = selectors.MANAGE
EVIDENCE_MAX_BYTES = 10 * 1024 * 1024
# Certificates are recognised by their first bytes, never by the name or the type the client claims.
EVIDENCE_SIGNATURES = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


def evidence_type_of(data: bytes) -> str:
    """The media type of a certificate file (PDF, PNG or JPEG, by its magic bytes), or a ValidationError."""
    if not data:
        raise ValidationError({"evidence": "The certificate file is empty."})
    if len(data) > EVIDENCE_MAX_BYTES:
        raise ValidationError(
            {"evidence": f"The certificate file is larger than {EVIDENCE_MAX_BYTES // (1024 * 1024)} MB."}
        )
    for signature, media_type in EVIDENCE_SIGNATURES:
        if data.startswith(signature):
            return media_type
    raise ValidationError({"evidence": "A certificate must be a PDF, PNG or JPEG file."})


def _member_check(user: Any) -> Membership:
    membership = Membership.objects.filter(user=user, status=Membership.Status.ACTIVE).first()
    if membership is None or not membership.is_current():
        raise ValidationError({"user": "This person is not a current member of the organisation."})
    return membership


@transaction.atomic
def course_adopt(*, actor: Any, catalogue_course: CatalogueCourse) -> Course:
    """Adopt a platform catalogue course into the current tenant (`tenants.manage_training`). Idempotent.
    Records TRAINING_COURSE_ADOPTED."""
    tenant = current_tenant()
    access.require(actor, MANAGE, tenant)
    course = Course.objects.filter(catalogue_course=catalogue_course).first()
    if course is not None:
        return course
    if Course.objects.filter(title=catalogue_course.title).exists():
        raise ValidationError({"title": f"The organisation already has its own course “{catalogue_course.title}”."})
    course = Course(
        tenant=tenant,
        catalogue_course=catalogue_course,
        title=catalogue_course.title,
        provider=catalogue_course.provider,
        validity_months=catalogue_course.validity_months,
        evidence_required=catalogue_course.evidence_required,
    )
    course.full_clean()
    course.save()
    audit_event_record(event=EventType.TRAINING_COURSE_ADOPTED, actor=actor, target=course,
                       extra={"catalogue": catalogue_course.code})  # fmt: skip
    return course


@transaction.atomic
def course_create(
    *, actor: Any, title: str, provider: str, validity_months: int, evidence_required: bool = True
) -> Course:
    """A course of the tenant's own (`tenants.manage_training`). Records TRAINING_COURSE_CREATED."""
    tenant = current_tenant()
    access.require(actor, MANAGE, tenant)
    title = (title or "").strip()
    if Course.objects.filter(title__iexact=title).exists():
        raise ValidationError({"title": f"The organisation already has a course “{title}”."})
    course = Course(tenant=tenant, title=title, provider=(provider or "").strip(),
                    validity_months=validity_months, evidence_required=evidence_required)  # fmt: skip
    course.full_clean()
    course.save()
    audit_event_record(event=EventType.TRAINING_COURSE_CREATED, actor=actor, target=course,
                       extra={"validity_months": validity_months, "evidence_required": evidence_required})  # fmt: skip
    return course


@transaction.atomic
def requirement_set(
    *, actor: Any, course: Course, role: str, blocking: bool = True, grace_days: int = 0
) -> Requirement:
    """Members of `role` must hold `course` (`tenants.manage_training`); sets blocking and grace days of an
    existing requirement. Records TRAINING_REQUIREMENT_SET with what it was and what it is."""
    tenant = current_tenant()
    access.require(actor, MANAGE, tenant)
    if role not in Role.values:
        raise ValidationError({"role": "No such role."})
    requirement = Requirement.objects.select_for_update().filter(course=course, role=role).first()
    before = None if requirement is None else {"blocking": requirement.blocking, "grace_days": requirement.grace_days}
    if requirement is None:
        requirement = Requirement(tenant=tenant, course=course, role=role)
    requirement.blocking, requirement.grace_days = blocking, grace_days
    requirement.full_clean()
    requirement.save()
    audit_event_record(event=EventType.TRAINING_REQUIREMENT_SET, actor=actor, target=requirement,
                       extra={"course": course.title, "role": role, "blocking": blocking, "grace_days": grace_days,
                              "before": before})  # fmt: skip
    return requirement


@transaction.atomic
def requirement_remove(*, actor: Any, requirement: Requirement) -> None:
    """Drop a requirement (`tenants.manage_training`). Records TRAINING_REQUIREMENT_REMOVED."""
    access.require(actor, MANAGE, requirement)
    audit_event_record(event=EventType.TRAINING_REQUIREMENT_REMOVED, actor=actor, target=requirement,
                       extra={"course": requirement.course.title, "role": requirement.role})  # fmt: skip
    requirement.delete()


def _evidence_store(evidence: bytes | None, evidence_name: str) -> tuple[Blob | None, str, str]:
    if evidence is None:
        return None, "", ""
    media_type = evidence_type_of(evidence)
    blob = blob_write(kind=Blob.Kind.CERTIFICATE, data=evidence)
    return blob, (evidence_name or "certificate")[:200], media_type


def _dates_check(course: Course, completed_on: date, expires_on: date | None) -> date:
    if completed_on > timezone.localdate():
        raise ValidationError({"completed_on": "A completion date cannot be in the future."})
    expires_on = expires_on or course.expiry_for(completed_on)
    if expires_on <= completed_on:
        raise ValidationError({"expires_on": "The expiry must come after the completion date."})
    return expires_on


@transaction.atomic
def completion_record(
    *,
    actor: Any,
    user: Any,
    course: Course,
    completed_on: date,
    expires_on: date | None = None,
    evidence: bytes | None = None,
    evidence_name: str = "",
    note: str = "",
    source: str = "",
) -> Completion:
    """Record that `user` completed `course`. A compliance officer's record (`tenants.manage_training`) of
    someone else counts at once; anyone's report of their own completion (an officer's too) waits for approval.
    The expiry defaults to the course's validity. The certificate (PDF, PNG or JPEG, at most 10 MB) is stored encrypted.
    Records TRAINING_COMPLETION_RECORDED. Access blocked by this course returns at the person's next request."""
    tenant = current_tenant()
    manages = access.has_perm(actor, MANAGE, tenant)
    own = getattr(actor, "pk", None) == getattr(user, "pk", None)
    if not manages and not own:
        raise access.Forbidden("Only a compliance officer records someone else's training.")
    _member_check(user)
    expires_on = _dates_check(course, completed_on, expires_on)
    if course.evidence_required and evidence is None and source != Completion.Source.IMPORTED:
        raise ValidationError({"evidence": f"“{course.title}” needs a certificate file (PDF, PNG or JPEG)."})
    blob, name, media_type = _evidence_store(evidence, evidence_name)
    if manages and not own:  # one's own training is reviewed by someone else, officers included
        source = source or Completion.Source.RECORDED
        status = Completion.Status.APPROVED
    else:
        source, status = Completion.Source.SELF_REPORTED, Completion.Status.PENDING
    completion = Completion(tenant=tenant, user=user, course=course, completed_on=completed_on,
                            expires_on=expires_on, source=source, status=status, evidence=blob,
                            evidence_name=name, evidence_type=media_type, recorded_by=actor,
                            note=(note or "")[:300])  # fmt: skip
    completion.full_clean()
    completion.save()
    audit_event_record(event=EventType.TRAINING_COMPLETION_RECORDED, actor=actor, target=completion,
                       participants=[user],
                       extra={"course": course.title, "completed_on": completed_on.isoformat(),
                              "expires_on": expires_on.isoformat(), "source": source, "status": status,
                              "evidence": media_type or None})  # fmt: skip
    return completion


@transaction.atomic
def completion_supersede(
    *,
    actor: Any,
    completion: Completion,
    completed_on: date,
    expires_on: date | None = None,
    reason: str,
    evidence: bytes | None = None,
    evidence_name: str = "",
) -> Completion:
    """Correct a completion (`tenants.manage_training`): a new, approved completion that supersedes it; the old
    one stays as it was. Each completion is superseded at most once. Records TRAINING_COMPLETION_SUPERSEDED."""
    access.require(actor, MANAGE, completion)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the record is corrected: the reason is kept on the audit trail."})
    old = Completion.objects.select_for_update().get(pk=completion.pk)
    if Completion.objects.filter(supersedes=old).exists():
        raise ValidationError({"completion": "This completion has already been corrected; correct the newer one."})
    expires_on = _dates_check(old.course, completed_on, expires_on)
    blob, name, media_type = _evidence_store(evidence, evidence_name)
    if blob is None and old.evidence_id is not None:
        blob, name, media_type = old.evidence, old.evidence_name, old.evidence_type
    new = Completion(tenant=old.tenant, user=old.user, course=old.course, completed_on=completed_on,
                     expires_on=expires_on, source=Completion.Source.RECORDED, status=Completion.Status.APPROVED,
                     evidence=blob, evidence_name=name, evidence_type=media_type, recorded_by=actor,
                     note=reason[:300], supersedes=old)  # fmt: skip
    new.full_clean()
    new.save()
    audit_event_record(event=EventType.TRAINING_COMPLETION_SUPERSEDED, actor=actor, target=new,
                       participants=[old, old.user],
                       extra={"reason": reason, "course": old.course.title,
                              "was": {"completed_on": old.completed_on.isoformat(),
                                      "expires_on": old.expires_on.isoformat(), "status": old.status},
                              "now": {"completed_on": completed_on.isoformat(),
                                      "expires_on": expires_on.isoformat()}})  # fmt: skip
    return new


def _review(*, actor: Any, completion: Completion, verdict: str, reason: str) -> Completion:
    access.require(actor, MANAGE, completion)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Give a reason: it is kept with the record and on the audit trail."})
    row = Completion.objects.select_for_update().get(pk=completion.pk)
    if row.status != Completion.Status.PENDING:
        raise ValidationError({"status": f"This completion is already {row.get_status_display().lower()}."})
    if row.user_id == getattr(actor, "pk", None):
        raise access.Forbidden("Another compliance officer reviews your own training.", code="two_person_rule")
    row.status, row.reviewed_by, row.reviewed_at, row.review_reason = verdict, actor, timezone.now(), reason[:300]
    row.save(update_fields=["status", "reviewed_by", "reviewed_at", "review_reason", "updated_at"])
    event = (
        EventType.TRAINING_COMPLETION_APPROVED
        if verdict == Completion.Status.APPROVED
        else EventType.TRAINING_COMPLETION_REJECTED
    )
    audit_event_record(event=event, actor=actor, target=row, participants=[row.user],
                       extra={"reason": reason, "course": row.course.title})  # fmt: skip
    return row


@transaction.atomic
def completion_approve(*, actor: Any, completion: Completion, reason: str) -> Completion:
    """Approve a self-reported completion (`tenants.manage_training`, not one's own), with a reason. The
    review is the one thing written to a completion after it is made. Records TRAINING_COMPLETION_APPROVED."""
    return _review(actor=actor, completion=completion, verdict=Completion.Status.APPROVED, reason=reason)


@transaction.atomic
def completion_reject(*, actor: Any, completion: Completion, reason: str) -> Completion:
    """Reject a self-reported completion, with a reason. Records TRAINING_COMPLETION_REJECTED."""
    return _review(actor=actor, completion=completion, verdict=Completion.Status.REJECTED, reason=reason)


@transaction.atomic
def completion_evidence_read(*, actor: Any, completion: Completion) -> tuple[bytes, str, str]:
    """The certificate of a completion the actor may see (their own, or any with `tenants.view_training`):
    (bytes, media type, file name). Records TRAINING_EVIDENCE_VIEWED before the bytes leave."""
    if completion.evidence is None:
        raise access.NotVisible()
    audit_event_record(event=EventType.TRAINING_EVIDENCE_VIEWED, actor=actor, target=completion,
                       participants=[completion.user])  # fmt: skip
    return blob_read(blob=completion.evidence), completion.evidence_type, completion.evidence_name


# CSV import ------------------------------------------------------------------------------------------------------

IMPORT_REQUIRED_COLUMNS = ("username", "course", "completed_on")
IMPORT_OPTIONAL_COLUMNS = ("expires_on",)
IMPORT_MAX_BYTES = 5 * 1024 * 1024
IMPORT_MAX_ROWS = 20_000


@dataclass
class ImportResult:
    imported: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"row": n, "reason": "..."}


def _parse_date(value: str, column: str) -> date:
    try:
        return date.fromisoformat((value or "").strip())
    except ValueError as exc:
        raise ValidationError(f"{column} “{value}” is not a date (YYYY-MM-DD).") from exc


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    """The rows of an import file, or a ValidationError that refuses the whole file (not CSV, wrong columns)."""
    if len(data) > IMPORT_MAX_BYTES:
        raise ValidationError({"file": f"The file is larger than {IMPORT_MAX_BYTES // (1024 * 1024)} MB."})
    if b"\x00" in data:
        raise ValidationError({"file": "This is not a CSV file (it holds binary data)."})
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError({"file": "This is not a CSV file in UTF-8."}) from exc
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in IMPORT_REQUIRED_COLUMNS if c not in header]
        unknown = [c for c in header if c not in IMPORT_REQUIRED_COLUMNS + IMPORT_OPTIONAL_COLUMNS]
        if not header or missing or unknown or len(set(header)) != len(header):
            expected = ", ".join(IMPORT_REQUIRED_COLUMNS) + " (and optionally " + ", ".join(IMPORT_OPTIONAL_COLUMNS)
            raise ValidationError({"file": f"The columns must be {expected}); found: {', '.join(header) or 'none'}."})
        reader.fieldnames = header
        rows: list[dict[str, str]] = []
        for row in reader:
            if len(rows) >= IMPORT_MAX_ROWS:
                raise ValidationError({"file": f"At most {IMPORT_MAX_ROWS} rows in one file."})
            rows.append(row)
    except csv.Error as exc:
        raise ValidationError({"file": f"This is not a readable CSV file ({exc})."}) from exc
    return rows


@transaction.atomic
def completions_import(*, actor: Any, data: bytes) -> ImportResult:
    """Import completions from a learning system's CSV (`tenants.manage_training`): columns username, course
    (title), completed_on, optionally expires_on. Row by row: a bad row is reported by its number (the header is
    row 1) and reason, and the others are imported, each in its own savepoint. A file that is not CSV or has the
    wrong columns changes nothing. Records one TRAINING_COMPLETIONS_IMPORTED event with the counts and errors."""
    tenant = current_tenant()
    access.require(actor, MANAGE, tenant)
    rows = _csv_rows(data)
    members = {
        m.user.username.lower(): m.user
        for m in Membership.objects.filter(status=Membership.Status.ACTIVE).select_related("user")
        if m.is_current()
    }
    courses = {c.title.lower(): c for c in Course.objects.all()}
    result = ImportResult()
    imported_ids: list[str] = []
    for number, row in enumerate(rows, start=2):
        try:
            if None in row or any(v is None for v in row.values()):
                raise ValidationError("The row does not have the header's number of columns.")
            user = members.get((row.get("username") or "").strip().lower())
            if user is None:
                raise ValidationError(f"No current member “{(row.get('username') or '').strip()}”.")
            course = courses.get((row.get("course") or "").strip().lower())
            if course is None:
                raise ValidationError(f"No course “{(row.get('course') or '').strip()}”.")
            completed_on = _parse_date(row["completed_on"], "completed_on")
            expires_raw = (row.get("expires_on") or "").strip()
            expires_on = _parse_date(expires_raw, "expires_on") if expires_raw else None
            expires_on = _dates_check(course, completed_on, expires_on)
            with transaction.atomic():
                completion = Completion(tenant=tenant, user=user, course=course, completed_on=completed_on,
                                        expires_on=expires_on, source=Completion.Source.IMPORTED,
                                        status=Completion.Status.APPROVED, recorded_by=actor)  # fmt: skip
                completion.full_clean()
                completion.save()
        except ValidationError as exc:
            result.errors.append({"row": number, "reason": " ".join(exc.messages)})
            continue
        result.imported += 1
        imported_ids.append(str(completion.public_id))
    audit_event_record(
        event=EventType.TRAINING_COMPLETIONS_IMPORTED,
        actor=actor,
        tenant=tenant,
        outcome=Outcome.SUCCESS if not result.errors else Outcome.MINOR_FAILURE,
        extra={
            "imported": result.imported,
            "rejected": len(result.errors),
            "errors": result.errors[:100],
            "completions": imported_ids[:1000],
        },
    )
    return result


# CSV export ------------------------------------------------------------------------------------------------------


@transaction.atomic
def training_matrix_export(*, actor: Any, role: str = "", course: Course | None = None) -> str:
    """The matrix as CSV (`tenants.view_training`): one row per person and required course, with the state and
    the dates. Records TRAINING_MATRIX_EXPORTED."""
    matrix = selectors.training_matrix(actor=actor, role=role, course=course)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["username", "role", "course", "state", "expires_on", "blocking", "lapses_on"])

    def cell_text(value: str) -> str:  # a spreadsheet must not run a course title as a formula
        return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

    count = 0
    for row in matrix.rows:
        for c in matrix.courses:
            cell = row.cells.get(c.pk)
            if cell is None:
                continue
            writer.writerow(
                [
                    cell_text(row.membership.user.username),
                    row.membership.role,
                    cell_text(c.title),
                    cell.state,
                    cell.expires_on.isoformat() if cell.expires_on else "",
                    "yes" if cell.requirement.blocking else "no",
                    cell.lapses_on.isoformat(),
                ]
            )
            count += 1
    audit_event_record(event=EventType.TRAINING_MATRIX_EXPORTED, actor=actor, tenant=current_tenant(),
                       extra={"rows": count, "role": role or None,
                              "course": course.title if course else None})  # fmt: skip
    return out.getvalue()


# Reminders -------------------------------------------------------------------------------------------------------

REMINDER_STAGES = {30: ReminderSent.Stage.DAYS_30, 7: ReminderSent.Stage.DAYS_7, 0: ReminderSent.Stage.ON_THE_DAY}


def _claim(*, user: User, course: Course, expires_on: date, stage: str) -> bool:
    """Claim one reminder by inserting its row, in the caller's transaction (a savepoint here): a second run finds
    the row and sends nothing; a run that dies before the caller commits leaves no row, so the next run sends it."""
    try:
        with transaction.atomic():
            ReminderSent.objects.create(tenant=current_tenant(), user=user, course=course, expires_on=expires_on,
                                        stage=stage)  # fmt: skip
    except IntegrityError:
        return False
    return True


def training_reminders_send(*, today: date | None = None) -> int:
    """Mail each current member whose required training expires in 30 or 7 days or today, once per expiry and
    stage, and copy the tenant's compliance officers and administrators. Tenant-level system job (no actor);
    runs in the tenant scope. Returns the number of reminders sent. Records TRAINING_REMINDER_SENT for each."""
    tenant = current_tenant()
    today = today or timezone.localdate()
    matrix_memberships = Membership.objects.filter(status=Membership.Status.ACTIVE).select_related("user")
    members = [m for m in matrix_memberships if m.is_current()]
    officers = [m.user.email for m in members if m.role in (Role.COMPLIANCE_OFFICER, Role.TENANT_ADMIN)
                and m.user.email]  # fmt: skip
    sent = 0
    for membership in members:
        for status in selectors.person_status(user=membership.user, role=membership.role, today=today):
            if status.expires_on is None:
                continue
            stage = REMINDER_STAGES.get((status.expires_on - today).days)
            if stage is not None and _remind(tenant=tenant, membership=membership, status=status,
                                             expires_on=status.expires_on, stage=stage, officers=officers):  # fmt: skip
                sent += 1
    return sent


@transaction.atomic
def _remind(*, tenant: Tenant, membership: Membership, status: selectors.RequirementStatus, expires_on: date,
            stage: str, officers: list[str]) -> bool:  # fmt: skip
    """One reminder: its claim, its mails and its audit event commit together or not at all (a worker killed
    between them leaves nothing, and the next run sends it); the mails are queued after the commit."""
    if not _claim(user=membership.user, course=status.course, expires_on=expires_on, stage=stage):
        return False
    when = "today" if stage == ReminderSent.Stage.ON_THE_DAY else f"on {expires_on.isoformat()}"
    if membership.user.email:
        blocking = status.requirement.blocking
        mail_queue(
            subject=f"Your training “{status.course.title}” expires {when}",
            body=f"Your “{status.course.title}” certification for {tenant.name} expires {when}. "
            + ("Without a current completion you will lose access to patient data. " if blocking else "")
            + "Record your new completion on your training page in Enclave.",
            to=[membership.user.email],
        )
    if officers:
        mail_queue(
            subject=f"Training expiring: {membership.user.username}, “{status.course.title}” {when}",
            body=f"{membership.user.username} ({membership.get_role_display()}): “{status.course.title}” "
            f"expires {when}.",
            to=officers,
        )
    audit_event_record(event=EventType.TRAINING_REMINDER_SENT, system_principal="enclave:training-reminders",
                       tenant=tenant, participants=[membership.user],
                       extra={"course": status.course.title, "expires_on": expires_on.isoformat(),
                              "stage": stage})  # fmt: skip
    return True


def training_digest_send(*, today: date | None = None) -> bool:
    """Once per ISO week (whichever day the daily job first runs in it), mail the tenant's compliance officers
    who holds lapsed or expiring required training. Claimed by a unique row in one transaction with its mail
    and audit event, like the reminders. Tenant-level system job. Returns whether a digest went. Records
    TRAINING_REMINDER_SENT."""
    tenant = current_tenant()
    today = today or timezone.localdate()
    week_of = today - timedelta(days=today.weekday())
    members = [m for m in Membership.objects.filter(status=Membership.Status.ACTIVE).select_related("user")
               if m.is_current()]  # fmt: skip
    officers = [m.user.email for m in members if m.role == Role.COMPLIANCE_OFFICER and m.user.email]
    if not officers:
        return False
    with transaction.atomic():  # the claim, the mail and the audit event commit together, as for the reminders
        return _digest(tenant=tenant, today=today, week_of=week_of, members=members, officers=officers)


def _digest(*, tenant: Tenant, today: date, week_of: date, members: list[Membership], officers: list[str]) -> bool:
    try:
        with transaction.atomic():
            DigestSent.objects.create(tenant=tenant, week_of=week_of)
    except IntegrityError:
        return False
    lines = []
    for membership in members:
        for status in selectors.person_status(user=membership.user, role=membership.role, today=today):
            if status.state == selectors.State.CURRENT:
                continue
            when = status.expires_on.isoformat() if status.expires_on else "never completed"
            effect = (
                "access blocked"
                if status.blocks
                else ("blocks from " + status.lapses_on.isoformat() if status.requirement.blocking else "warning only")
            )
            lines.append(f"- {membership.user.username} ({membership.get_role_display()}): {status.course.title}, "
                         f"{status.state_label.lower()} ({when}), {effect}")  # fmt: skip
    body = "\n".join(lines) if lines else "Everyone's required training is current."
    mail_queue(
        subject=f"Training digest for {tenant.name}, week of {week_of.isoformat()}",
        body=f"Required training that is expired, missing or expiring within 30 days:\n\n{body}\n",
        to=officers,
    )
    audit_event_record(event=EventType.TRAINING_REMINDER_SENT, system_principal="enclave:training-reminders",
                       tenant=tenant, extra={"digest_week_of": week_of.isoformat(), "entries": len(lines)})  # fmt: skip
    return True


def catalogue_ensure() -> None:
    """The platform catalogue (written by migration 0002; again here for databases flushed by tests). Idempotent."""
    for code, title, provider, months, evidence in CATALOGUE:
        CatalogueCourse.objects.update_or_create(
            code=code,
            defaults={"title": title, "provider": provider, "validity_months": months, "evidence_required": evidence},
        )


# Platform work (the demo, a tenant's first set-up) -----------------------------------------------------------------

OPERATOR = "enclave:platform"


@transaction.atomic
def catalogue_adopt_by_operator(*, reason: str) -> dict[str, Course]:
    """Adopt the whole platform catalogue into the current tenant, by the platform operators. Idempotent.
    Returns the courses by catalogue code. Records TRAINING_COURSE_ADOPTED for each new one."""
    tenant = current_tenant()
    catalogue_ensure()
    courses = {}
    for entry in CatalogueCourse.objects.all():
        course = Course.objects.filter(catalogue_course=entry).first()
        if course is None:
            course = Course(
                tenant=tenant,
                catalogue_course=entry,
                title=entry.title,
                provider=entry.provider,
                validity_months=entry.validity_months,
                evidence_required=entry.evidence_required,
            )
            course.full_clean()
            course.save()
            audit_event_record(event=EventType.TRAINING_COURSE_ADOPTED, target=course, system_principal=OPERATOR,
                               extra={"catalogue": entry.code, "reason": reason})  # fmt: skip
        courses[entry.code] = course
    return courses


@transaction.atomic
def requirement_set_by_operator(*, course: Course, role: str, blocking: bool, grace_days: int, reason: str) -> None:
    """Set a requirement as the platform operators, once: an existing one is left as the tenant has it."""
    if Requirement.objects.filter(course=course, role=role).exists():
        return
    requirement = Requirement(tenant=current_tenant(), course=course, role=role, blocking=blocking,
                              grace_days=grace_days)  # fmt: skip
    requirement.full_clean()
    requirement.save()
    audit_event_record(event=EventType.TRAINING_REQUIREMENT_SET, target=requirement, system_principal=OPERATOR,
                       extra={"course": course.title, "role": role, "blocking": blocking, "grace_days": grace_days,
                              "reason": reason})  # fmt: skip


@transaction.atomic
def completion_record_by_operator(
    *,
    user: Any,
    course: Course,
    completed_on: date,
    expires_on: date,
    pending: bool = False,
    reason: str,
    evidence: bytes | None = None,
) -> Completion | None:
    """Record a completion as the platform operators (the demo), unless `user` already has one of `course`:
    approved, or self-reported and pending. Records TRAINING_COMPLETION_RECORDED."""
    if Completion.objects.filter(user=user, course=course).exists():
        return None
    blob, name, media_type = _evidence_store(evidence, "certificate.pdf")
    completion = Completion(
        tenant=current_tenant(), user=user, course=course, completed_on=completed_on, expires_on=expires_on,
        source=Completion.Source.SELF_REPORTED if pending else Completion.Source.RECORDED,
        status=Completion.Status.PENDING if pending else Completion.Status.APPROVED,
        evidence=blob, evidence_name=name, evidence_type=media_type, note=reason[:300],
    )  # fmt: skip
    completion.full_clean()
    completion.save()
    audit_event_record(event=EventType.TRAINING_COMPLETION_RECORDED, target=completion, participants=[user],
                       system_principal=OPERATOR,
                       extra={"course": course.title, "expires_on": expires_on.isoformat(),
                              "status": completion.status, "reason": reason})  # fmt: skip
    return completion
