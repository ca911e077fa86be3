"""Writes for the second factor (HIPAA 164.312(d)): enrolling an authenticator app, backup codes, and the check
at each sign-in. Each records its audit event in its transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import django_otp
from django.conf import settings
from django.db import transaction
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.events import EventType, Outcome
from audit.services import auth_event_record
from portal.accounts import selectors
from tenants.mfa import FACTOR_TOTP, authenticator_get, code_normalized, retry_after

FACTOR_BACKUP_CODE = "backup_code"


@dataclass(frozen=True)
class MfaCheck:
    """What a code proved. `device` is None when it proved nothing; `retry_after` is the seconds the person must
    wait because of earlier wrong codes (django-otp's throttling), 0 when they need not."""

    device: Device | None
    factor: str
    retry_after: int = 0
    backup_codes_left: int | None = None

    @property
    def ok(self) -> bool:
        return self.device is not None


def authenticator_pending_get_or_create(*, user: Any) -> TOTPDevice:
    """The authenticator app being enrolled (unconfirmed). The same one until it is confirmed, so a reload of the
    enrolment page keeps the secret the person may already have scanned."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
    return device


def _backup_codes_replace(*, user: Any) -> list[str]:
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name="Backup codes", confirmed=True)
    codes: set[str] = set()
    while len(codes) < settings.MFA_BACKUP_CODE_COUNT:
        codes.add(StaticToken.random_token())
    for code in sorted(codes):
        StaticToken.objects.create(device=device, token=code)
    return sorted(codes)


@transaction.atomic
def authenticator_enrol(*, user: Any, device: TOTPDevice, token: str) -> tuple[TOTPDevice, list[str]] | None:
    """Confirm the pending authenticator `device` of `user` with a code it shows.

    On success the device is confirmed, any other pending one is removed, a fresh set of
    MFA_BACKUP_CODE_COUNT backup codes replaces the old ones, and MFA_ENROLLED and LOGIN_SUCCEEDED (enrolment
    completes the sign-in) are recorded. Returns the device and the backup codes, which the caller shows once
    and never stores. A wrong code returns None and records MFA_FAILED.
    Only for a person without a confirmed authenticator: the caller checks that.
    """
    pending = TOTPDevice.objects.select_for_update().filter(pk=device.pk, user=user, confirmed=False).first()
    if pending is None:
        return None  # confirmed meanwhile by a parallel request: the caller sends the person on
    device = pending
    if not device.verify_token(code_normalized(token)):
        auth_event_record(
            event=EventType.MFA_FAILED,
            user=user,
            outcome=Outcome.MINOR_FAILURE,
            outcome_description="wrong code while enrolling an authenticator",
            extra={"step": "enrolment"},
        )
        return None
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    TOTPDevice.objects.filter(user=user, confirmed=False).exclude(pk=device.pk).delete()
    codes = _backup_codes_replace(user=user)
    auth_event_record(event=EventType.MFA_ENROLLED, user=user, extra={"backup_codes": len(codes)})
    auth_event_record(event=EventType.LOGIN_SUCCEEDED, user=user, extra={"factor": FACTOR_TOTP, "enrolment": True})
    return device, codes


@transaction.atomic
def mfa_check(*, user: Any, token: str) -> MfaCheck:
    """Check a second-factor code of `user`: a code of their authenticator app, or one of their backup codes.

    django-otp refuses a code used before (TOTP) and deletes a backup code when it is used; after a wrong code it
    refuses every code for a doubling wait. Records LOGIN_SUCCEEDED on success, else MFA_FAILED (outcome 4).
    Counting failures toward the lockout is the caller's part: it needs the request.
    """
    code = code_normalized(token)
    totp = authenticator_get(user=user)
    if totp is not None and code.isdigit() and len(code) == totp.digits:
        factor, device = FACTOR_TOTP, totp
    else:
        factor, device = FACTOR_BACKUP_CODE, selectors.backup_code_device_get(user=user)
    wait = retry_after(device) if device is not None else 0
    verified = None
    if device is not None and not wait:
        verified = django_otp.verify_token(user, device.persistent_id, code)
    if verified is None:
        reason = "too soon after a wrong code" if wait else "wrong or already used code"
        auth_event_record(
            event=EventType.MFA_FAILED,
            user=user,
            outcome=Outcome.MINOR_FAILURE,
            outcome_description=reason,
            extra={"factor": factor},
        )
        return MfaCheck(device=None, factor=factor, retry_after=wait)
    left = selectors.backup_codes_remaining(user=user) if factor == FACTOR_BACKUP_CODE else None
    extra: dict[str, Any] = {"factor": factor}
    if left is not None:
        extra["backup_codes_left"] = left
    auth_event_record(event=EventType.LOGIN_SUCCEEDED, user=user, extra=extra)
    return MfaCheck(device=verified, factor=factor, backup_codes_left=left)
