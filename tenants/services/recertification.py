"""Periodic recertification of access (HIPAA 164.308(a)(4)(ii)(C) and (a)(1)(ii)(D), SECURITY.md B6).

Every RECERTIFICATION_INTERVAL_DAYS the job opens a campaign per tenant: each current membership (person, role,
last sign-in) is listed for a tenant administrator to confirm or revoke within RECERTIFICATION_WINDOW_DAYS. Nobody
confirms their own access (another administrator does). The administrators are mailed when it opens and again
RECERTIFICATION_REMINDER_DAYS before the deadline (once). At the deadline every membership still unconfirmed
ends (through `membership_end`: tokens revoked, sessions ended when it was the person's last tenant), except the
last current administrator's, which is kept and marked so (a tenant is never left without one). Every step is on
the tenant's audit trail.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from audit.events import EventType
from audit.services import audit_event_record, participant
from tenants import access
from tenants.models import Membership, RecertificationCampaign, RecertificationItem, Role, Tenant
from tenants.scoping import current_tenant
from tenants.services.links import absolute
from tenants.services.mail import mail_queue
from tenants.services.memberships import membership_end

PRINCIPAL = "enclave:recertification"
CONFIRM, REVOKE = "confirm", "revoke"


def _admin_emails() -> list[str]:
    now = timezone.now()
    admins = Membership.objects.filter(role=Role.TENANT_ADMIN, status=Membership.Status.ACTIVE).select_related("user")
    return [m.user.email for m in admins if m.is_current(now) and m.user.is_active and m.user.email]


def _mail(tenant: Tenant, campaign: RecertificationCampaign, subject: str) -> None:
    """Tell the tenant's administrators: names the campaign's size and deadline, never a patient."""
    pending = campaign.items.filter(decision=RecertificationItem.Decision.PENDING).count()
    link = absolute(reverse("portal:recertification", kwargs={"tenant": tenant.slug}))
    body = (
        f"{pending} memberships of {tenant.name} wait for an administrator to confirm or revoke them by "
        f"{campaign.due_at:%Y-%m-%d %H:%M} UTC. Those not confirmed by then end.\n\nReview them here: {link}\n"
    )
    mail_queue(subject=subject, body=body, to=_admin_emails())


def recertification_current(*, actor: Any) -> RecertificationCampaign | None:
    """The open campaign of the current tenant, if `actor` may see who has access (`tenants.view_members`)."""
    if not access.has_perm(actor, "tenants.view_members", current_tenant()):
        raise access.Forbidden()
    return RecertificationCampaign.objects.filter(closed_at__isnull=True).first()


def recertification_last_closed() -> RecertificationCampaign | None:
    return RecertificationCampaign.objects.filter(closed_at__isnull=False).first()


def recertification_items(*, actor: Any, campaign: RecertificationCampaign) -> models.QuerySet[RecertificationItem]:
    return access.visible(actor, "tenants.view_members", campaign.items.all()).select_related(
        "membership__user", "decided_by"
    )


def recertification_item_get(*, actor: Any, public_id: Any) -> RecertificationItem:
    """One item of the current tenant by public id, or `NotVisible` (also for a malformed id)."""
    try:
        qs = access.visible(actor, "tenants.view_members", RecertificationItem.objects.all())
        return qs.select_related("membership__user", "campaign").get(public_id=public_id)
    except (RecertificationItem.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise access.NotVisible() from exc


@transaction.atomic
def recertification_open(*, tenant: Tenant, now: datetime | None = None) -> RecertificationCampaign | None:
    """Open the current tenant's campaign when none is open and the last opened RECERTIFICATION_INTERVAL_DAYS
    ago or more (or never). System job in the tenant's scope; idempotent. Returns the campaign opened, or None."""
    now = now or timezone.now()
    Tenant.objects.select_for_update().get(pk=tenant.pk)  # one opener at a time
    last = RecertificationCampaign.objects.order_by("-opened_at").first()
    if last is not None and (
        last.closed_at is None or last.opened_at > now - timedelta(days=settings.RECERTIFICATION_INTERVAL_DAYS)
    ):
        return None
    campaign = RecertificationCampaign.objects.create(
        tenant=tenant, opened_at=now, due_at=now + timedelta(days=settings.RECERTIFICATION_WINDOW_DAYS)
    )
    members = Membership.objects.filter(status=Membership.Status.ACTIVE).select_related("user")
    items = [
        RecertificationItem(tenant=tenant, campaign=campaign, membership=m, role=m.role, last_login=m.user.last_login)
        for m in members
        if m.is_current(now)
    ]
    RecertificationItem.objects.bulk_create(items)
    audit_event_record(
        event=EventType.RECERTIFICATION_OPENED, tenant=tenant, system_principal=PRINCIPAL,
        target={"type": "recertification", "id": str(campaign.public_id), "name": str(campaign)},
        extra={"memberships": len(items), "due_at": campaign.due_at.isoformat()},
    )  # fmt: skip
    _mail(tenant, campaign, f"Access review of {tenant.name}: confirm who keeps access")
    return campaign


@transaction.atomic
def recertification_decide(*, actor: Any, item: RecertificationItem, decision: str) -> RecertificationItem:
    """Confirm or revoke one membership of the open campaign (`tenants.manage_members`; never one's own).
    Revoking ends the membership now. Records RECERTIFICATION_DECIDED (and MEMBERSHIP_ENDED on revoke)."""
    access.require(actor, "tenants.manage_members", item, visible_perm="tenants.view_members")
    if decision not in (CONFIRM, REVOKE):
        raise ValidationError({"decision": "Choose confirm or revoke."})
    item = (
        RecertificationItem.objects.select_for_update().select_related("membership__user", "campaign").get(pk=item.pk)
    )
    if item.membership.user_id == actor.pk:
        raise ValidationError({"decision": "Another administrator confirms or revokes your own access."})
    if item.campaign.closed_at is not None:
        raise ValidationError({"decision": "This review is closed."})
    if item.decision != RecertificationItem.Decision.PENDING:
        raise ValidationError({"decision": f"Already decided: {item.get_decision_display().lower()}."})
    if decision == REVOKE:
        membership_end(actor=actor, membership=item.membership, reason="revoked in an access review")
    decided = RecertificationItem.Decision
    item.decision = decided.CONFIRMED if decision == CONFIRM else decided.REVOKED
    item.decided_by, item.decided_at = actor, timezone.now()
    item.save(update_fields=["decision", "decided_by", "decided_at", "updated_at"])
    audit_event_record(
        event=EventType.RECERTIFICATION_DECIDED, actor=actor, target=item.membership,
        participants=[participant(item.membership.user, role="member")],
        extra={"decision": item.decision, "role": item.role, "campaign": str(item.campaign.public_id)},
    )  # fmt: skip
    return item


def recertification_remind(*, tenant: Tenant, now: datetime | None = None) -> int:
    """Mail the administrators once, RECERTIFICATION_REMINDER_DAYS before the deadline, while items wait.
    System job in the tenant's scope. Returns 1 when a reminder went, else 0."""
    now = now or timezone.now()
    with transaction.atomic():
        campaign = (
            RecertificationCampaign.objects.select_for_update()
            .filter(closed_at__isnull=True, reminded_at__isnull=True)
            .filter(due_at__lte=now + timedelta(days=settings.RECERTIFICATION_REMINDER_DAYS), due_at__gt=now)
            .first()
        )
        if campaign is None or not campaign.items.filter(decision=RecertificationItem.Decision.PENDING).exists():
            return 0
        campaign.reminded_at = now
        campaign.save(update_fields=["reminded_at", "updated_at"])
        _mail(tenant, campaign, f"Reminder: the access review of {tenant.name} closes soon")
        audit_event_record(
            event=EventType.RECERTIFICATION_REMINDER_SENT, tenant=tenant, system_principal=PRINCIPAL,
            target={"type": "recertification", "id": str(campaign.public_id), "name": str(campaign)},
        )  # fmt: skip
    return 1


def _last_admin(item: RecertificationItem, now: datetime) -> bool:
    if item.role != Role.TENANT_ADMIN:
        return False
    others = Membership.objects.filter(role=Role.TENANT_ADMIN, status=Membership.Status.ACTIVE).exclude(
        pk=item.membership_id
    )
    return not any(m.is_current(now) for m in others)


@transaction.atomic
def recertification_close_due(*, tenant: Tenant, now: datetime | None = None) -> int:
    """At the deadline, end every membership still unconfirmed (except the last administrator's, kept and
    marked), and close the campaign. System job in the tenant's scope; idempotent. Returns how many ended."""
    now = now or timezone.now()
    campaign = (
        RecertificationCampaign.objects.select_for_update().filter(closed_at__isnull=True, due_at__lte=now).first()
    )
    if campaign is None:
        return 0
    ended = kept = 0
    pending = campaign.items.filter(decision=RecertificationItem.Decision.PENDING).select_related("membership__user")
    for item in pending.order_by("role", "pk"):
        if item.membership.status == Membership.Status.ENDED:
            item.decision = RecertificationItem.Decision.EXPIRED
        elif _last_admin(item, now):
            item.decision = RecertificationItem.Decision.KEPT
            kept += 1
        else:
            membership_end(
                actor=None, membership=item.membership, reason="not confirmed in the access review",
                system_principal=PRINCIPAL,
            )  # fmt: skip
            item.decision = RecertificationItem.Decision.EXPIRED
            ended += 1
        item.decided_at = now
        item.save(update_fields=["decision", "decided_at", "updated_at"])
    campaign.closed_at = now
    campaign.save(update_fields=["closed_at", "updated_at"])
    counts = dict(campaign.items.values_list("decision").annotate(n=models.Count("pk")))
    audit_event_record(
        event=EventType.RECERTIFICATION_CLOSED, tenant=tenant, system_principal=PRINCIPAL,
        target={"type": "recertification", "id": str(campaign.public_id), "name": str(campaign)},
        extra={"ended": ended, "kept_last_administrator": kept, "decisions": counts},
    )  # fmt: skip
    return ended
