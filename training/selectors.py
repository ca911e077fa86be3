"""Reads of the training registry: courses, requirements, completions, and where each person stands.

Where a person stands is computed here once and used by the gate, the pages, the API, the CSV export and the
reminders: for each requirement of their role, the latest expiry among their approved completions that no
correction has superseded.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db import connection, models
from django.db.models import Max, OuterRef, Subquery
from django.utils import timezone

from audit.selectors import ReportSection
from tenants import access
from tenants.db.base import prepared_statements
from tenants.models import Membership, User
from tenants.scoping import current_tenant
from training.models import CatalogueCourse, Completion, Course, OperatorCompletion, Requirement, lapse_date

EXPIRING_WITHIN_DAYS = 30
VIEW, MANAGE = "tenants.view_training", "tenants.manage_training"


class State:
    CURRENT = "current"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    MISSING = "missing"

    LABELS = {
        CURRENT: "Current",
        EXPIRING: f"Expires within {EXPIRING_WITHIN_DAYS} days",
        EXPIRED: "Expired",
        MISSING: "Missing",
    }


@dataclass(frozen=True)
class RequirementStatus:
    """One requirement as it stands for one person on one day."""

    requirement: Requirement
    expires_on: date | None
    state: str
    lapses_on: date  # the day a lapse counts (expiry or the requirement's start, plus the grace days)
    lapsed: bool  # past the grace period: blocks access when the requirement is blocking

    @property
    def course(self) -> Course:
        return self.requirement.course

    @property
    def blocks(self) -> bool:
        return self.lapsed and self.requirement.blocking

    @property
    def warns(self) -> bool:
        return self.state != State.CURRENT and not self.blocks

    @property
    def reason_code(self) -> str:
        return "training_missing" if self.expires_on is None else "training_expired"

    @property
    def state_label(self) -> str:
        return State.LABELS[self.state]


def _state_of(expires_on: date | None, today: date) -> str:
    if expires_on is None:
        return State.MISSING
    if expires_on <= today:
        return State.EXPIRED
    if expires_on <= today + timedelta(days=EXPIRING_WITHIN_DAYS):
        return State.EXPIRING
    return State.CURRENT


def _status(requirement: Requirement, expires_on: date | None, today: date) -> RequirementStatus:
    start = expires_on if expires_on is not None else timezone.localdate(requirement.created_at)
    lapses_on = lapse_date(start, requirement.grace_days)
    state = _state_of(expires_on, today)
    lapsed = state in (State.EXPIRED, State.MISSING) and today >= lapses_on
    return RequirementStatus(requirement, expires_on, state, lapses_on, lapsed)


def _current_role_of(user: Any) -> str | None:
    membership = Membership.objects.filter(user=user, status=Membership.Status.ACTIVE).first()
    return membership.role if membership is not None and membership.is_current() else None


def latest_expiries(*, user_ids: Iterable[int], course_ids: Iterable[int]) -> dict[tuple[int, int], date]:
    """(user id, course id) -> the latest expiry among approved completions no correction has superseded."""
    rows = (
        Completion.objects.filter(
            user_id__in=list(user_ids),
            course_id__in=list(course_ids),
            status=Completion.Status.APPROVED,
            superseded_by__isnull=True,
        )
        .values("user_id", "course_id")
        .annotate(latest=Max("expires_on"))
    )
    return {(row["user_id"], row["course_id"]): row["latest"] for row in rows}


def _requirements_with_expiry(user: Any, requirements: models.QuerySet[Requirement]) -> list[Requirement]:
    """`requirements`, each annotated with `latest`: the user's latest expiry of that course among approved
    completions no correction has superseded (None: none). One query."""
    latest = (
        Completion.objects.filter(
            user=user, course_id=OuterRef("course_id"), status=Completion.Status.APPROVED, superseded_by__isnull=True
        )
        .order_by("-expires_on")
        .values("expires_on")[:1]
    )
    return list(requirements.select_related("course").annotate(latest=Subquery(latest)).order_by("course__title"))


def person_status(*, user: Any, role: str | None = None, today: date | None = None) -> list[RequirementStatus]:
    """Every requirement of `user`'s current role in the current tenant (or of `role`), with where they stand.
    No permission check: the gate, the person themselves and the officers' selectors build on it. One query
    when the role is given."""
    today = today or timezone.localdate()
    role = role or _current_role_of(user)
    if role is None:
        return []
    requirements = _requirements_with_expiry(user, Requirement.objects.filter(role=role))
    return [_status(r, r.latest, today) for r in requirements]  # type: ignore[attr-defined]


@functools.cache
def _blocking_statement() -> str:
    """The gate's one statement: for each blocking requirement of `user`'s active roles in tenant `tenant`, its
    id, set-up time and grace days and `user`'s latest expiry of its course among approved completions no
    correction has superseded, in course-title order. The same question `_requirements_with_expiry` asks through
    the ORM, written once as SQL: the gate asks it on every read of patient data, and the ORM spent about 2.5 ms of
    CPU compiling it each time (docs/BENCHMARKS.md). Table and column names from the models' metadata; every value
    a parameter. Row security applies to it as to any statement."""
    quote = connection.ops.quote_name
    requirement, course = quote(Requirement._meta.db_table), quote(Course._meta.db_table)
    completion, membership = quote(Completion._meta.db_table), quote(Membership._meta.db_table)
    supersedes = quote(Completion._meta.get_field("supersedes").column)
    return f"""
        SELECT r.id, r.created_at, r.grace_days,
               (SELECT c.expires_on FROM {completion} c
                 WHERE c.tenant_id = %(tenant)s AND c.user_id = %(user)s AND c.course_id = r.course_id
                   AND c.status = %(approved)s
                   AND NOT EXISTS (SELECT 1 FROM {completion} s WHERE s.{supersedes} = c.id)
                 ORDER BY c.expires_on DESC LIMIT 1)
          FROM {requirement} r JOIN {course} k ON k.id = r.course_id
         WHERE r.tenant_id = %(tenant)s AND r.blocking
           AND r.role IN (SELECT m.role FROM {membership} m
                           WHERE m.tenant_id = %(tenant)s AND m.user_id = %(user)s AND m.status = %(active)s)
         ORDER BY k.title, r.role"""  # noqa: S608 # nosec B608


def training_block_get(*, user: Any) -> RequirementStatus | None:
    """The first blocking requirement `user` has let lapse in the current tenant, or None. The gate's question,
    asked on every read of patient data (fresh each time: nothing is remembered between calls): one statement,
    and one more only when it refuses (the requirement and its course, for the message)."""
    statement, params = training_block_statement(user=user)
    with prepared_statements(), connection.cursor() as cursor:  # prepared once per connection (tenants.db)
        cursor.execute(statement, params)
        rows = cursor.fetchall()
    return training_block_of(rows)


def training_block_statement(*, user: Any) -> tuple[str, dict[str, Any]]:
    """`training_block_get`'s one statement and its values for `user` in the current tenant, for a caller that
    sends it with others in one round trip (tenants.access, through the gate registered by training.apps);
    `training_block_of` reads its rows."""
    params = {
        "tenant": current_tenant().pk,
        "user": user.pk,
        "approved": Completion.Status.APPROVED,
        "active": Membership.Status.ACTIVE,
    }
    return _blocking_statement(), params


def training_block_of(rows: list[tuple[Any, ...]]) -> RequirementStatus | None:
    """`training_block_get`'s answer from the rows of `training_block_statement`, read just now."""
    today = timezone.localdate()
    for requirement_id, created_at, grace_days, latest in rows:
        start = latest if latest is not None else timezone.localdate(created_at)
        state = _state_of(latest, today)
        if state in (State.EXPIRED, State.MISSING) and today >= lapse_date(start, grace_days):
            blocking = Requirement.objects.select_related("course").get(pk=requirement_id)
            status = _status(blocking, latest, today)
            if status.blocks:
                return status
    return None


def catalogue_list() -> models.QuerySet[CatalogueCourse]:
    """The platform's catalogue. Not tenant data: every member may read it."""
    return CatalogueCourse.objects.all()


def course_list(*, actor: Any) -> models.QuerySet[Course]:
    """The current tenant's courses. Every member may read them (they are not personal data)."""
    del actor
    return Course.objects.select_related("catalogue_course").order_by("title", "pk")


def course_get(*, actor: Any, public_id: UUID | str) -> Course:
    try:
        return course_list(actor=actor).get(public_id=public_id)
    except (Course.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def requirement_list(*, actor: Any) -> models.QuerySet[Requirement]:
    """The current tenant's requirements, by course and role. Every member may read them."""
    del actor
    return Requirement.objects.select_related("course").order_by("course__title", "role", "pk")


def requirement_get(*, actor: Any, public_id: UUID | str) -> Requirement:
    try:
        return requirement_list(actor=actor).get(public_id=public_id)
    except (Requirement.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def completion_list(
    *,
    actor: Any,
    user: Any = None,
    course: Course | None = None,
    status: str | None = None,
    include_superseded: bool = True,
) -> models.QuerySet[Completion]:
    """Completions of the current tenant: all of them for `tenants.view_training`, else only the actor's own.
    Newest first, with the people and course."""
    qs = Completion.objects.all()
    if not access.has_perm(actor, VIEW, current_tenant()):
        qs = qs.filter(user=actor)
    if user is not None:
        qs = qs.filter(user=user)
    if course is not None:
        qs = qs.filter(course=course)
    if status:
        qs = qs.filter(status=status)
    if not include_superseded:
        qs = qs.filter(superseded_by__isnull=True)
    return qs.select_related("user", "course", "recorded_by", "reviewed_by", "supersedes").order_by(
        "-created_at", "-pk"
    )


def completion_get(*, actor: Any, public_id: UUID | str) -> Completion:
    """One completion the actor may see (their own, or any with `tenants.view_training`); else NotVisible."""
    try:
        return completion_list(actor=actor).get(public_id=public_id)
    except (Completion.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


def approval_queue(*, actor: Any) -> models.QuerySet[Completion]:
    """Self-reported completions waiting for a compliance officer (`tenants.manage_training`), oldest first."""
    access.require(actor, MANAGE, current_tenant())
    return completion_list(actor=actor, status=Completion.Status.PENDING).order_by("created_at", "pk")


def member_get(*, actor: Any, public_id: UUID | str) -> User:
    """A current member of the tenant by their subject id: the actor themselves, or anyone for
    `tenants.view_training` (else Forbidden); NotVisible for anyone who is not a member."""
    return _member(actor, user__subject_uuid=public_id)


def member_by_username(*, actor: Any, username: str) -> User:
    """The same as `member_get`, by username (case-insensitive), for learning systems that know no ids."""
    return _member(actor, user__username__iexact=(username or "").strip())


def _member(actor: Any, **lookup: Any) -> User:
    try:
        membership = Membership.objects.select_related("user", "tenant").get(status=Membership.Status.ACTIVE, **lookup)
    except (Membership.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc
    if membership.user_id != getattr(actor, "pk", None):
        access.require(actor, VIEW, membership.tenant)
    return membership.user


@dataclass(frozen=True)
class MatrixRow:
    membership: Membership
    cells: dict[int, RequirementStatus]  # course id -> status, for the courses the person's role requires


@dataclass(frozen=True)
class Matrix:
    courses: list[Course]
    rows: list[MatrixRow]


def training_matrix(*, actor: Any, role: str = "", course: Course | None = None) -> Matrix:
    """People by required course (`tenants.view_training`): each current member with the status of every course
    their role requires. Filters by role and by course. Three queries whatever the number of people."""
    access.require(actor, VIEW, current_tenant())
    today = timezone.localdate()
    memberships = Membership.objects.filter(status=Membership.Status.ACTIVE).select_related("user")
    if role:
        memberships = memberships.filter(role=role)
    members = [m for m in memberships.order_by("user__username") if m.is_current()]
    requirements = list(Requirement.objects.select_related("course"))
    if course is not None:
        requirements = [r for r in requirements if r.course_id == course.pk]
    by_role: dict[str, list[Requirement]] = {}
    for requirement in requirements:
        by_role.setdefault(requirement.role, []).append(requirement)
    courses = sorted({r.course for r in requirements}, key=lambda c: (c.title, c.pk))
    expiries = latest_expiries(user_ids=[m.user_id for m in members], course_ids=[c.pk for c in courses])
    rows = [
        MatrixRow(
            membership=m,
            cells={
                r.course_id: _status(r, expiries.get((m.user_id, r.course_id)), today) for r in by_role.get(m.role, [])
            },
        )
        for m in members
    ]
    return Matrix(courses=courses, rows=rows)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # a share (0..1) for coverage, a count for expiries
    height: int  # in the chart's pixels, at most 100

    @property
    def y(self) -> int:  # the top of the bar in an SVG whose baseline is at 110
        return 110 - self.height

    @property
    def percent(self) -> int:
        return round(self.value * 100)


def training_charts(*, actor: Any, role: str = "", today: date | None = None) -> dict[str, list[Bar]]:
    """The matrix page's two charts (`tenants.view_training`), for today's members and requirements:
    `coverage`, the share of required (person, course) pairs held current at the end of each of the last 12
    months; `expiries`, how many current pairs expire in each of the next 13 weeks (90 days). Two queries."""
    access.require(actor, VIEW, current_tenant())
    today = today or timezone.localdate()
    memberships = Membership.objects.filter(status=Membership.Status.ACTIVE)
    if role:
        memberships = memberships.filter(role=role)
    members = [m for m in memberships if m.is_current()]
    by_role: dict[str, set[int]] = {}
    for requirement in Requirement.objects.all():
        by_role.setdefault(requirement.role, set()).add(requirement.course_id)
    pairs = [(m.user_id, course_id) for m in members for course_id in by_role.get(m.role, set())]
    spans: dict[tuple[int, int], list[tuple[date, date]]] = {}
    rows = Completion.objects.filter(
        user_id__in={u for u, _ in pairs},
        status=Completion.Status.APPROVED,
        superseded_by__isnull=True,
    ).values_list("user_id", "course_id", "completed_on", "expires_on")
    for user_id, course_id, completed_on, expires_on in rows:
        spans.setdefault((user_id, course_id), []).append((completed_on, expires_on))

    def held_on(pair: tuple[int, int], day: date) -> bool:
        return any(start <= day < end for start, end in spans.get(pair, []))

    coverage = []
    for back in range(11, -1, -1):
        next_month = today.year * 12 + today.month - back  # 0-based month count of the month after
        end = today if back == 0 else date(next_month // 12, next_month % 12 + 1, 1) - timedelta(days=1)
        share = sum(held_on(p, end) for p in pairs) / len(pairs) if pairs else 0.0
        coverage.append(Bar(label=end.strftime("%b %y"), value=share, height=round(share * 100)))
    latest = {p: max(end for _, end in spans[p]) for p in pairs if p in spans}
    counts = [0] * 13
    for expires_on in latest.values():
        days = (expires_on - today).days
        if 0 <= days < 91:
            counts[min(days // 7, 12)] += 1
    peak = max(counts) or 1
    expiries = [
        Bar(label=(today + timedelta(days=7 * week)).strftime("%d %b"), value=n, height=round(100 * n / peak))
        for week, n in enumerate(counts)
    ]
    return {"coverage": coverage, "expiries": expiries}


# The catalogue courses every platform operator must hold.
OPERATOR_COURSES = ("hipaa-security-awareness", "hipaa-privacy")


@dataclass(frozen=True)
class OperatorStatus:
    user: User
    cells: list[tuple[CatalogueCourse, date | None, str]]  # course, latest expiry, state

    @property
    def current(self) -> bool:
        return all(state in (State.CURRENT, State.EXPIRING) for _, _, state in self.cells)


def operator_training_list(*, actor: Any) -> list[OperatorStatus]:
    """The platform operators (active staff accounts) who can reach the platform, each with the state of the
    operator courses (`tenants.view_training` in the current tenant). Reads no tenant data."""
    access.require(actor, VIEW, current_tenant())
    today = timezone.localdate()
    courses = list(CatalogueCourse.objects.filter(code__in=OPERATOR_COURSES).order_by("title"))
    operators = list(User.objects.filter(is_staff=True, is_active=True).order_by("username"))
    latest = {
        (row["user_id"], row["course_id"]): row["latest"]
        for row in OperatorCompletion.objects.filter(user__in=operators, course__in=courses)
        .values("user_id", "course_id")
        .annotate(latest=Max("expires_on"))
    }
    return [
        OperatorStatus(
            user=operator,
            cells=[
                (c, latest.get((operator.pk, c.pk)), _state_of(latest.get((operator.pk, c.pk)), today)) for c in courses
            ],
        )
        for operator in operators
    ]


def training_compliance_section(actor: Any) -> ReportSection:
    """The compliance report's training section (audit.selectors.compliance_section_register): who holds every
    course their role requires, and who is blocked from patient data by a lapsed blocking course."""
    try:
        matrix = training_matrix(actor=actor)
    except access.Forbidden:
        return ReportSection("Security training", [("Not shown", "reading training records needs view_training")])
    people = len(matrix.rows)
    current = sum(1 for row in matrix.rows if all(c.state != State.EXPIRED and c.state != State.MISSING
                                                     for c in row.cells.values()))  # fmt: skip
    blocked = sorted(row.membership.user.username for row in matrix.rows if any(c.blocks for c in row.cells.values()))
    percent = round(100 * current / people) if people else 100
    rows = [
        ("Required courses", str(len(matrix.courses))),
        ("Members with every required course held", f"{current} of {people} ({percent}%)"),
        ("Blocked from patient data (a blocking course lapsed)", ", ".join(blocked) or "nobody"),
    ]
    return ReportSection("Security training", rows, ok=current == people)


def training_records_export() -> dict[str, list[dict[str, Any]]]:
    """The current tenant's training records for its offboarding export (issue 13): courses, requirements and
    completions (evidence files are named, not included). For the offboarding service only (two operators
    approved it); plain JSON-ready data."""
    return {
        "courses": [dict(row) for row in Course.objects.order_by("pk").values()],
        "requirements": [dict(row) for row in Requirement.objects.order_by("pk").values()],
        "completions": list(
            Completion.objects.order_by("pk").values(*[f.attname for f in Completion._meta.concrete_fields])
        ),
    }
