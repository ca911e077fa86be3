"""The second factor (HIPAA 164.312(d)) as django-otp checks it, for every door that asks for a code: the sign-in
pages (portal.accounts) and the step-up before a sensitive act such as break-glass (a studies service). It lives
here, below the doors and beside the other services of the people in a tenant, so a service can ask for a fresh
code without importing the sign-in pages."""

from __future__ import annotations

from typing import Any

import django_otp
from django.utils import timezone
from django_otp.models import Device
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.events import EventType, Outcome
from audit.services import auth_event_record

FACTOR_TOTP = "totp"


def code_normalized(token: str) -> str:
    """Codes as people type them: spaces and dashes dropped, backup codes in any case."""
    return "".join(token.split()).replace("-", "").lower()


def retry_after(device: Device) -> int:
    """The seconds a person must wait because of earlier wrong codes (django-otp's throttling), 0 when none."""
    allowed, data = device.verify_is_allowed()
    if allowed:
        return 0
    locked_until = (data or {}).get("locked_until")
    if locked_until is None:
        return 1
    return max(1, int((locked_until - timezone.now()).total_seconds() + 0.999))


def authenticator_get(*, user: Any) -> TOTPDevice | None:
    """The person's confirmed authenticator app, or None when they have not enrolled one yet."""
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()


def mfa_step_up_check(*, user: Any, token: str, purpose: str) -> bool:
    """Confirm a signed-in person is present again with a fresh code of their authenticator app (not a backup
    code), before a sensitive act such as break-glass. The same django-otp check as the sign-in's: a code used
    before is refused, and wrong codes throttle. Records MFA_FAILED (outcome 4) on failure and nothing on
    success (the caller records the act). Commits on its own: call it outside the caller's transaction, so the
    failure record and django-otp's throttle survive the caller's refusal."""
    code = code_normalized(token)
    device = authenticator_get(user=user)
    verified = None
    wait = retry_after(device) if device is not None else 0
    if device is not None and code.isdigit() and len(code) == device.digits and not wait:
        verified = django_otp.verify_token(user, device.persistent_id, code)
    if verified is None:
        reason = "too soon after a wrong code" if wait else "wrong or already used code"
        auth_event_record(
            event=EventType.MFA_FAILED,
            user=user,
            outcome=Outcome.MINOR_FAILURE,
            outcome_description=reason,
            extra={"factor": FACTOR_TOTP, "step": purpose},
        )
        return False
    return True
