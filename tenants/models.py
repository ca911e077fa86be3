from __future__ import annotations

import hashlib
import ipaddress
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from tenants.scoping import PlatformManager, TenantScopedManager, TenantScopeError, current_tenant_or_none


class CaseInsensitiveUserManager(UserManager):
    def get_by_natural_key(self, username: str | None) -> Any:
        return self.get(username__iexact=username)


class User(AbstractUser):
    """A person or a service principal. Unique by username in any case (HIPAA 164.312(a)(2)(i)).

    Users are deactivated, never deleted, so that the audit trail always names someone.
    """

    subject_uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)

    objects = CaseInsensitiveUserManager()  # type: ignore[misc]  # django-stubs types AbstractUser.objects

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("username"), name="tenants_user_username_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.username


class Tenant(models.Model):
    """A hospital group. Not tenant-owned itself: it is the owner."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    # The called AE title that DICOM peers use to reach this tenant's archive (one per tenant).
    ae_title = models.CharField(max_length=16, unique=True, null=True, blank=True)
    # Working hours (in `time_zone`, on `working_days`, ISO weekday digits 1 = Monday): reads of patient data
    # outside them raise an alert (audit.rules). Unset: no such rule.
    working_hours_start = models.TimeField(null=True, blank=True)
    working_hours_end = models.TimeField(null=True, blank=True)
    working_days = models.CharField(max_length=7, default="12345", blank=True)
    time_zone = models.CharField(max_length=64, default="UTC")
    # Ingestion volume allowed per hour and per day, in bytes, across C-STORE, STOW-RS and upload; empty: the
    # platform's INGEST_QUOTA_BYTES_PER_HOUR / INGEST_QUOTA_BYTES_PER_DAY (0 there: no quota).
    ingest_quota_bytes_per_hour = models.PositiveBigIntegerField(null=True, blank=True)
    ingest_quota_bytes_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    # A copy of its TrustedNetwork rows (CIDR strings), kept by tenants.services in the same transaction, so the
    # check every request makes (tenants.access.network_allows) reads the row already loaded. Empty: any address.
    network_ranges = models.JSONField(default=list, blank=True, editable=False)
    # With it, an identified export (a disclosure) must be a password-encrypted bundle (SECURITY.md C5).
    exports_must_be_encrypted = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        # Tenant-wide permissions. They are granted as django-guardian object permissions on the Tenant row to
        # the role groups `<slug>:<role>` (tenants.access.ROLE_PERMISSIONS), never globally.
        default_permissions = ()
        permissions = [
            ("view_members", "See the members of the tenant"),
            ("manage_members", "Add members, change roles and end dates, deactivate"),
            ("view_audit", "Read the tenant's audit trail"),
            ("manage_devices", "Register and approve devices"),
            ("view_devices", "See the device register (read-only)"),
            ("view_studies", "See every study of the tenant"),
            ("upload_studies", "Send studies into the archive"),
            ("share_studies", "Share the studies one sees with other people"),
            ("review_break_glass", "Review and sign off emergency (break-glass) access"),
            ("export_identified", "Export studies with patient identity (a disclosure)"),
            ("view_training", "See everyone's training records"),
            ("manage_training", "Manage courses and requirements, record and approve completions"),
            ("manage_retention", "Set retention policies and legal holds, approve or reject deletions"),
            ("manage_networks", "Set the address ranges the tenant may be reached from"),
            ("manage_export_policy", "Set whether identified exports must be password-encrypted"),
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class TenantOwnedModel(models.Model):
    """Base of every row that belongs to one tenant.

    `objects` is scoped to the active tenant and fails closed; `unscoped_objects` is the allow-listed bypass.
    Saving checks that the row, and every foreign key it points at, belongs to the scope's tenant: forward
    foreign keys are read through Django's unfiltered base manager, so this is where a cross-tenant link
    would otherwise slip in.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, editable=False, related_name="+")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager()
    unscoped_objects = PlatformManager()

    class Meta:
        abstract = True

    def clean(self) -> None:
        super().clean()
        for field in self._meta.concrete_fields:
            if not isinstance(field, models.ForeignKey) or field.name == "tenant":
                continue
            target = getattr(self, field.name, None)
            target_tenant = getattr(target, "tenant_id", None)
            if target is not None and target_tenant is not None and target_tenant != self.tenant_id:
                raise ValidationError({field.name: "This belongs to another tenant."})

    def save(self, *args: Any, **kwargs: Any) -> None:
        scope = current_tenant_or_none()
        if scope is None:
            raise TenantScopeError(f"Saving a {type(self).__name__} needs an active tenant scope.")
        if self.tenant_id is None:
            self.tenant = scope
        elif self.tenant_id != scope.pk:
            raise TenantScopeError(f"This {type(self).__name__} belongs to another tenant than the scope.")
        self.clean()
        super().save(*args, **kwargs)

    def get_additional_data(self) -> dict[str, Any]:
        """django-auditlog stores this with every change, so a tenant's audit page can find its own entries."""
        return {"tenant_id": self.tenant_id}


class Role(models.TextChoices):
    TENANT_ADMIN = "tenant_admin", "Tenant administrator"
    COMPLIANCE_OFFICER = "compliance_officer", "Compliance officer"
    RADIOLOGIST = "radiologist", "Radiologist"
    TECHNOLOGIST = "technologist", "Technologist"
    REFERRING_PHYSICIAN = "referring_physician", "Referring physician"
    AUDITOR = "auditor", "Auditor"


class Membership(TenantOwnedModel):
    """A user's place in a tenant: one role, and for auditors a date when it ends."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        ENDED = "ended", "Ended"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=32, choices=Role.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    ends_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True, editable=False)
    ended_reason = models.CharField(max_length=200, blank=True, editable=False)

    class Meta:
        ordering = ["user__username"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="tenants_membership_tenant_user_unique"),
            models.CheckConstraint(
                condition=~models.Q(role="auditor") | models.Q(ends_at__isnull=False),
                name="tenants_membership_auditor_has_end",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.get_role_display().lower()}"

    def clean(self) -> None:
        super().clean()
        if self.role == Role.AUDITOR and self.ends_at is None:
            raise ValidationError({"ends_at": "An auditor's membership must have an end date."})

    def is_current(self, at: Any = None) -> bool:
        at = at or timezone.now()
        return self.status == self.Status.ACTIVE and (self.ends_at is None or self.ends_at > at)


class ApiToken(TenantOwnedModel):
    """A bearer token for the REST API: bound to one user and one tenant, expiring, stored as a SHA-256 digest.

    The token itself is 256 random bits, so a plain digest (not a slow hash) is enough to make a stolen
    database row useless.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Not a column: the user's active membership of the token's tenant (a tuple of one, None inside when there is
    # none) when tenants.selectors.api_token_authenticate read it with the token, for the request to use instead of
    # reading it again (tenants.selectors.tenant_get_for_member); None when it was not read so.
    membership_read: tuple[Membership | None] | None = None
    # Not a column either: (the tenant's id, a statement and its values, its rows) when api_token_authenticate sent the
    # request's own first statement in the token's round trip (its `statement_ahead`); None when it did not.
    read_ahead: tuple[int, tuple[str, Any], list[tuple[Any, ...]]] | None = None

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @staticmethod
    def digest_of(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    def is_usable(self, at: Any = None) -> bool:
        at = at or timezone.now()
        return self.revoked_at is None and self.expires_at > at

    @property
    def status(self) -> str:
        """The token's state for pages and API output: "revoked", "expired" or "active"."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.expires_at > timezone.now() else "expired"


class Invitation(TenantOwnedModel):
    """An offer to join the tenant in a role, sent to an e-mail address. The person accepts it with the link's
    token (stored only as a SHA-256 digest), signed in with their account or by creating one. Single use and
    expiring; a tenant administrator may withdraw it while it is pending."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Withdrawn"
        EXPIRED = "expired", "Expired"

    class Purpose(models.TextChoices):
        MEMBER = "member", "Membership"
        SHARE = "share", "Study shared"

    purpose = models.CharField(
        max_length=16,
        choices=Purpose.choices,
        default=Purpose.MEMBER,
        editable=False,
        help_text="Why it was sent: to make a member, or to share a study (an app applies the share on acceptance).",
    )
    email = models.EmailField()
    first_name = models.CharField(max_length=150, blank=True)
    last_name = models.CharField(max_length=150, blank=True)
    role = models.CharField(max_length=32, choices=Role.choices)
    ends_at = models.DateTimeField(null=True, blank=True, help_text="When the membership it opens ends.")
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+", editable=False
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True, editable=False)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+", editable=False
    )
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(role="auditor") | models.Q(ends_at__isnull=False),
                name="tenants_invitation_auditor_has_end",
            ),
        ]

    def __str__(self) -> str:
        return f"invitation as {self.get_role_display().lower()}"

    @staticmethod
    def digest_of(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @property
    def status(self) -> str:
        if self.accepted_at is not None:
            return self.Status.ACCEPTED
        if self.revoked_at is not None:
            return self.Status.REVOKED
        return self.Status.PENDING if self.expires_at > timezone.now() else self.Status.EXPIRED

    def is_open(self) -> bool:
        return self.status == self.Status.PENDING


def network_parse(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address range written as CIDR (10.1.0.0/16, 2001:db8::/48) or one address; ValidationError with the
    reason otherwise. Host bits set (10.1.2.3/16) are refused rather than silently widened or narrowed."""
    text = (value or "").strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            wider = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValidationError(f"“{text[:60]}” is not an IPv4 or IPv6 address range in CIDR form.") from exc
        raise ValidationError(f"“{text[:60]}” has host bits set: did you mean {wider}?") from exc


class TrustedNetwork(TenantOwnedModel):
    """One address range the tenant's pages, API, DICOMweb and DICOM listener may be reached from. A tenant with
    none may be reached from anywhere; with some, from those only (tenants.access.network_allows)."""

    network = models.CharField(max_length=49, help_text="CIDR, IPv4 or IPv6: 10.20.0.0/16, 2001:db8:5::/48.")
    label = models.CharField(max_length=100, blank=True, help_text="What the range is: a site, a VPN, a PACS.")

    class Meta:
        ordering = ["network"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "network"], name="tenants_trustednetwork_tenant_network_unique"),
        ]

    def __str__(self) -> str:
        return self.network

    def clean(self) -> None:
        super().clean()
        try:
            self.network = str(network_parse(self.network))
        except ValidationError as exc:
            raise ValidationError({"network": exc.messages}) from exc


class UserSession(models.Model):
    """Which browser sessions a user holds, so that deactivation and ended memberships can end them at once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"session of {self.user_id}"


class OutboundMail(models.Model):
    """One e-mail queued by `tenants.services.mail_queue`, kept until it is delivered: the outbox. The row is
    written in the transaction of the change that causes the mail, so a broker that is down when it commits loses
    no mail (the sweep queues it again); `sent_at` is set in the transaction that delivers it, under a row lock, so
    no mail goes twice. Never patient data (callers put none in a message); delivered rows are removed after
    MAIL_OUTBOX_KEEP_DAYS."""

    subject = models.CharField(max_length=300)
    body = models.TextField()
    recipients = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    attempted_at = models.DateTimeField(null=True, blank=True)  # the last delivery attempt's start
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["created_at"], condition=models.Q(sent_at__isnull=True), name="outbound_mail_unsent")
        ]

    def __str__(self) -> str:
        return f"mail {self.pk}"


class RecertificationCampaign(TenantOwnedModel):
    """One periodic review of who has access to the tenant (HIPAA 164.308(a)(4)(ii)(C), SECURITY.md B6): every
    current membership is listed for a tenant administrator to confirm or revoke before `due_at`; what is not
    confirmed by then ends. Opened by the recertification job every RECERTIFICATION_INTERVAL_DAYS."""

    opened_at = models.DateTimeField(default=timezone.now)
    due_at = models.DateTimeField()
    reminded_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]

    def __str__(self) -> str:
        return f"recertification of {self.opened_at:%Y-%m-%d}"


class RecertificationItem(TenantOwnedModel):
    """One membership to confirm or revoke in a campaign, with its role and last sign-in when the campaign opened."""

    class Decision(models.TextChoices):
        PENDING = "pending", "Waiting for a decision"
        CONFIRMED = "confirmed", "Confirmed"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Not confirmed in time: ended"
        KEPT = "kept", "Not confirmed in time: kept as the last administrator"

    campaign = models.ForeignKey(RecertificationCampaign, on_delete=models.PROTECT, related_name="items")
    membership = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=32, choices=Role.choices)
    last_login = models.DateTimeField(null=True, blank=True)
    decision = models.CharField(max_length=16, choices=Decision.choices, default=Decision.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["membership__user__username"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "membership"], name="tenants_recert_item_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.membership} ({self.decision})"
