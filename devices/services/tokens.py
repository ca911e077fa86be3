"""Device-bound credentials: enrolment codes, tokens bound to person + device + tenant, attestation at enrolment
and at every refresh, and the check of each request made with them."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.events import EventType, Outcome
from audit.services import audit_event_record
from devices.models import (
    DEVICE_TOKEN_PREFIX,
    ENROLMENT_CODE_PREFIX,
    Device,
    DeviceToken,
    EnrolmentCode,
)
from devices.services.registry import MANAGE, _attestation_record, _locked, device_policy_get, tokens_revoke
from tenants import access
from tenants.models import User
from tenants.scoping import tenant_scope


@transaction.atomic
def enrolment_code_issue(*, actor: Any, device: Device) -> tuple[EnrolmentCode, str]:
    """An enrolment code for an approved mobile device or workstation, bound to its custodian: shown once, valid
    15 minutes, single use. Issued by the custodian or an administrator (`tenants.manage_devices`).
    Records DEVICE_ENROLMENT_CODE_ISSUED."""
    is_custodian = isinstance(actor, User) and device.custodian_id == actor.pk
    if not is_custodian:
        access.require(actor, MANAGE, device)
    device = _locked(device)
    if not device.uses_tokens:
        raise ValidationError({"device": "Only mobile devices and workstations enrol for a token."})
    if device.status != Device.Status.APPROVED:
        raise ValidationError({"device": f"A {device.get_status_display().lower()} device cannot enrol."})
    if device.custodian is None:
        raise ValidationError({"device": "Give the device a custodian first: its token is bound to them."})
    raw = ENROLMENT_CODE_PREFIX + secrets.token_urlsafe(24)
    code = EnrolmentCode(
        tenant=device.tenant,
        device=device,
        user=device.custodian,
        issued_by=actor,
        digest=EnrolmentCode.digest_of(raw),
        expires_at=EnrolmentCode.expiry(),
    )
    code.full_clean()
    code.save()
    audit_event_record(
        event=EventType.DEVICE_ENROLMENT_CODE_ISSUED,
        actor=actor,
        target=device,
        extra={"custodian": device.custodian.username, "expires_at": code.expires_at.isoformat()},
    )
    return code, raw


def _token_issue(*, device: Device, user: User, attested_at: Any) -> tuple[DeviceToken, str]:
    policy = device_policy_get(tenant=device.tenant)
    raw = DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = DeviceToken(
        tenant=device.tenant,
        device=device,
        user=user,
        prefix=raw[: len(DEVICE_TOKEN_PREFIX) + 6],
        digest=DeviceToken.digest_of(raw),
        attested_at=attested_at,
        expires_at=timezone.now() + timedelta(hours=policy.token_hours),
    )
    token.full_clean()
    token.save()
    return token, raw


class AttestationRefused(access.Forbidden):
    """The device does not meet the tenant's policy: a 403 naming what is missing."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("The device does not meet the policy: " + "; ".join(failures) + ".", code="attestation_failed")
        self.failures = failures


def device_enrol(*, code: EnrolmentCode, attestation: dict[str, Any]) -> tuple[DeviceToken, str]:
    """Exchange an enrolment code for a device token, after checking the device's attestation against the policy.
    The code is used up either way. Records DEVICE_ATTESTED and DEVICE_ENROLLED; a refused attestation raises
    `AttestationRefused` after the attestation and the spent code are committed (kept on the trail)."""
    with transaction.atomic():
        code = EnrolmentCode.objects.select_for_update().get(pk=code.pk)
        if not code.is_usable():
            raise access.Forbidden("This enrolment code is used or expired.", code="code_unusable")
        device = _locked(code.device)
        if device.status != Device.Status.APPROVED or device.custodian_id != code.user_id:
            raise access.Forbidden("This device cannot enrol now.", code="device_not_approved")
        code.used_at = timezone.now()
        code.save(update_fields=["used_at", "updated_at"])
        row = _attestation_record(device=device, actor=code.user, attestation=attestation)
        if row.accepted:
            token, raw = _token_issue(device=device, user=code.user, attested_at=row.created_at)
            audit_event_record(
                event=EventType.DEVICE_ENROLLED,
                actor=code.user,
                target=device,
                extra={"token": token.prefix, "expires_at": token.expires_at.isoformat()},
            )
            return token, raw
    raise AttestationRefused(row.failures)


def device_token_refresh(*, token: DeviceToken, attestation: dict[str, Any]) -> tuple[DeviceToken, str]:
    """Check the device's attestation again and, if it still meets the policy, replace `token` by a new one (the
    old one stops working). If not, every token of the device is revoked and `AttestationRefused` raised; the
    attestation and the revocation stay on the trail. Records DEVICE_ATTESTED and DEVICE_ENROLLED."""
    with transaction.atomic():
        device = _locked(token.device)
        if device.status != Device.Status.APPROVED:  # a device whose wipe is ordered gets no new token
            raise access.Forbidden(
                f"A {device.get_status_display().lower()} device gets no new token.", code="device_not_approved"
            )
        row = _attestation_record(device=device, actor=token.user, attestation=attestation)
        now = timezone.now()
        if not row.accepted:
            tokens_revoke(device=device, actor=token.user, why="attestation failed at refresh")
        else:
            DeviceToken.objects.filter(pk=token.pk).update(revoked_at=now)
            new, raw = _token_issue(device=device, user=token.user, attested_at=row.created_at)
            audit_event_record(
                event=EventType.DEVICE_ENROLLED,
                actor=token.user,
                target=device,
                extra={"token": new.prefix, "replaces": token.prefix},
            )
            return new, raw
    raise AttestationRefused(row.failures)


def _refusal(credential: DeviceToken | EnrolmentCode) -> str:
    """Why a known device credential may not be used now; "" if it may."""
    now = timezone.now()
    device, user = credential.device, credential.user
    if isinstance(credential, EnrolmentCode):
        if not credential.is_usable():
            return "The enrolment code is used or expired."
        return ""
    if device.status not in (Device.Status.APPROVED, Device.Status.WIPE_ORDERED):
        return f"The device is {device.get_status_display().lower()}."
    if credential.revoked_at is not None:
        return "The device token is revoked."
    if credential.expires_at <= now:
        return "The device token has expired: enrol the device again."
    if device.custodian_id != user.pk:
        return "The device is no longer in this person's custody."
    policy = device_policy_get(tenant=device.tenant)
    if credential.attested_at + timedelta(hours=policy.attestation_max_age_hours) <= now:
        return "The device's attestation is out of date: refresh the token with a new attestation."
    if not user.is_active or access.membership_current_get(user=user, tenant=device.tenant) is None:
        return "The person is no longer a member."
    return ""


def device_credential_authenticate(
    *, raw: str, source_address: str | None = None
) -> tuple[DeviceToken | EnrolmentCode | None, str]:
    """The device token or enrolment code `raw`, with its device, person and tenant, if it may be used now;
    otherwise None and why. A known credential that is refused (its device lost, suspended, wiped or retired, its
    attestation lapsed, its person gone) is recorded as DEVICE_TOKEN_REFUSED in its tenant's trail.

    Runs before any scope (the tenant comes from the credential), so it reads unscoped.
    """
    model: type[DeviceToken] | type[EnrolmentCode] = (
        DeviceToken if raw.startswith(DEVICE_TOKEN_PREFIX) else EnrolmentCode
    )
    credential = (
        model.unscoped_objects.filter(digest=model.digest_of(raw))  # type: ignore[attr-defined]
        .select_related("device", "user", "tenant")
        .first()
    )
    if credential is None:
        return None, "The token is unknown, expired or revoked."
    with tenant_scope(credential.tenant):
        why = _refusal(credential)
        if why:
            audit_event_record(
                event=EventType.DEVICE_TOKEN_REFUSED,
                actor=credential.user,
                target=credential.device,
                outcome=Outcome.MINOR_FAILURE,
                outcome_description=why,
                source_address=source_address,
                extra={"why": why, "credential": getattr(credential, "prefix", "enrolment code")},
            )
            return None, why
        if isinstance(credential, DeviceToken):
            DeviceToken.objects.filter(pk=credential.pk).update(last_used_at=timezone.now())
    return credential, ""


def device_gate(credential: Any, actor: Any, use: str) -> bool | None:
    """The devices app's answer to tenants.access for a request made with a device credential: the device may be
    used for `use` only while approved, and only for a use it holds a grant for. An enrolment code, or a device
    whose wipe is ordered, may be used for nothing but its own device endpoints. None for other credentials."""
    if isinstance(credential, EnrolmentCode):
        return False
    if not isinstance(credential, DeviceToken):
        return None
    device = Device.objects.filter(pk=credential.device_id).only("status", "grants").first()
    return device is not None and device.status == Device.Status.APPROVED and use in device.grants
