"""The staff training and certification registry (HIPAA 164.308(a)(5)): courses, requirements by role,
completions with their evidence, and the reminders already sent.

A completion is never edited: a correction is a new completion that supersedes it, so the history stays whole.
Only a self-reported completion's review (approved or rejected, by whom, when, why) is written once, later.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from tenants.models import Role, TenantOwnedModel


def add_months(day: date, months: int) -> date:
    """`day` plus whole months, on the last day of a shorter month (31 Jan + 1 month is 28/29 Feb)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    for candidate in (day.day, 30, 29, 28):
        try:
            return day.replace(year=year, month=month, day=candidate)
        except ValueError:
            continue
    raise ValueError(day)  # unreachable: every month has 28 days


class CatalogueCourse(models.Model):
    """A course of the platform's catalogue, which any tenant may adopt. Not tenant data: the same for all."""

    code = models.SlugField(max_length=60, unique=True)
    title = models.CharField(max_length=200)
    provider = models.CharField(max_length=200)
    validity_months = models.PositiveSmallIntegerField()
    evidence_required = models.BooleanField(default=True)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title


class Course(TenantOwnedModel):
    """A course a tenant tracks: adopted from the platform catalogue or its own."""

    catalogue_course = models.ForeignKey(
        CatalogueCourse, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    title = models.CharField(max_length=200)
    provider = models.CharField(max_length=200)
    validity_months = models.PositiveSmallIntegerField(help_text="How long a completion stays valid.")
    evidence_required = models.BooleanField(default=True, help_text="A completion needs a certificate file.")

    class Meta:
        ordering = ["title"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "title"], name="training_course_tenant_title_unique"),
            models.UniqueConstraint(
                fields=["tenant", "catalogue_course"],
                condition=models.Q(catalogue_course__isnull=False),
                name="training_course_tenant_catalogue_unique",
            ),
            models.CheckConstraint(
                condition=models.Q(validity_months__gte=1) & models.Q(validity_months__lte=120),
                name="training_course_validity_range",
            ),
        ]

    def __str__(self) -> str:
        return self.title

    def clean(self) -> None:
        super().clean()
        if not 1 <= (self.validity_months or 0) <= 120:
            raise ValidationError({"validity_months": "A course is valid for 1 to 120 months."})

    def expiry_for(self, completed_on: date) -> date:
        return add_months(completed_on, self.validity_months)


class Requirement(TenantOwnedModel):
    """Members of `role` must hold a current completion of `course`. A lapse past the grace days blocks their
    access to patient data (`blocking`) or only shows a warning."""

    course = models.ForeignKey(Course, on_delete=models.PROTECT, related_name="requirements")
    role = models.CharField(max_length=32, choices=Role.choices)
    blocking = models.BooleanField(default=True, help_text="A lapse blocks access to patient data.")
    grace_days = models.PositiveSmallIntegerField(
        default=0,
        help_text="Days after expiry (or after the requirement is set, for someone who never held the "
        "course) before a lapse counts.",
    )

    class Meta:
        ordering = ["course__title", "role"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "course", "role"], name="training_requirement_tenant_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.course} for {self.get_role_display()}"

    def clean(self) -> None:
        super().clean()
        if (self.grace_days or 0) > 365:
            raise ValidationError({"grace_days": "A grace period is at most 365 days."})


class Completion(TenantOwnedModel):
    """One person's completion of one course. Never edited: a correction supersedes it."""

    class Source(models.TextChoices):
        RECORDED = "recorded", "Recorded by a compliance officer"
        SELF_REPORTED = "self_reported", "Self-reported"
        IMPORTED = "imported", "Imported from a learning system"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    course = models.ForeignKey(Course, on_delete=models.PROTECT, related_name="completions")
    completed_on = models.DateField()
    expires_on = models.DateField()
    source = models.CharField(max_length=16, choices=Source.choices)
    status = models.CharField(max_length=12, choices=Status.choices)
    evidence = models.ForeignKey("studies.Blob", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    evidence_name = models.CharField(max_length=200, blank=True)
    evidence_type = models.CharField(max_length=40, blank=True)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    note = models.CharField(max_length=300, blank=True)
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-completed_on", "-pk"]
        indexes = [models.Index(fields=["tenant", "user", "course"], name="training_completion_person")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_on__gt=models.F("completed_on")), name="training_completion_expiry_after"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.course} by {self.user} on {self.completed_on}"

    def clean(self) -> None:
        super().clean()
        if self.completed_on and self.expires_on and self.expires_on <= self.completed_on:
            raise ValidationError({"expires_on": "The expiry must come after the completion date."})


class ReminderSent(TenantOwnedModel):
    """A reminder claimed for one person, course, expiry and stage: the unique row is what makes it go once."""

    class Stage(models.TextChoices):
        DAYS_30 = "30", "30 days before"
        DAYS_7 = "7", "7 days before"
        ON_THE_DAY = "0", "On the day"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    course = models.ForeignKey(Course, on_delete=models.PROTECT, related_name="+")
    expires_on = models.DateField()
    stage = models.CharField(max_length=2, choices=Stage.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "user", "course", "expires_on", "stage"], name="training_remindersent_once"
            ),
        ]


class OperatorCompletion(models.Model):
    """A platform operator's completion of a catalogue course. Operators belong to no tenant, so their records
    are the platform's; every tenant sees them on its operators' page ("who at the vendor can reach your data,
    and is their training current"). Recorded in the operators' admin; never edited (add a newer one)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    course = models.ForeignKey(CatalogueCourse, on_delete=models.PROTECT, related_name="+")
    completed_on = models.DateField()
    expires_on = models.DateField()
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-completed_on", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_on__gt=models.F("completed_on")), name="training_operatorcompletion_expiry"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.course} by {self.user} on {self.completed_on}"


class DigestSent(TenantOwnedModel):
    """The weekly digest to compliance officers, claimed once per tenant and ISO week (its Monday)."""

    week_of = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "week_of"], name="training_digestsent_once")]


def lapse_date(expires_on: date, grace_days: int) -> date:
    """The first day on which an expiry counts as a lapse."""
    return expires_on + timedelta(days=grace_days)
