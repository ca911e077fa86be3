"""Sign-in refusals and lockouts on the audit trail, in one place for every login form (ours and the admin's).

Connected by `portal.apps.PortalConfig.ready`. Axes' own receivers are connected first (its app comes first in
INSTALLED_APPS), so when ours run the request already carries axes' verdict (`axes_locked_out`,
`axes_failures_since_start`).
"""

from __future__ import annotations

from typing import Any

from axes.helpers import get_failure_limit
from axes.signals import user_locked_out
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from audit.events import EventType, Outcome
from audit.services import auth_event_record
from portal.accounts.lockout import cool_off_minutes
from portal.accounts.selectors import user_by_username


@receiver(user_login_failed, dispatch_uid="enclave_login_failed_audit")
def login_failed_record(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """LOGIN_FAILED, outcome 4. Only the user name is kept (Django has already masked the password); an unknown
    name goes to the platform chain, a known one to the chains of the person's tenants."""
    username = str(credentials.get("username") or "")
    failures = getattr(request, "axes_failures_since_start", None)
    limit = get_failure_limit(request, credentials) if request is not None else None
    if getattr(request, "axes_locked_out", False) and (failures is None or limit is None or failures > limit):
        description = "refused: locked out after repeated failures"
    else:
        description = "wrong user name or password"
    auth_event_record(
        event=EventType.LOGIN_FAILED,
        user=user_by_username(username=username),
        username=username,
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=description,
        extra={"failures": failures} if failures is not None else None,
    )


@receiver(user_locked_out, dispatch_uid="enclave_locked_out_audit")
def locked_out_record(
    sender: Any, request: HttpRequest | None = None, username: str | None = None, **kwargs: Any
) -> None:
    """LOCKED_OUT, once per lockout: axes signals every refused attempt during a lockout too, and only the
    attempt that reaches the limit starts one."""
    if request is None:
        return
    credentials = getattr(request, "axes_credentials", None)
    failures = getattr(request, "axes_failures_since_start", None)
    limit = get_failure_limit(request, credentials)
    if failures != limit:
        return
    auth_event_record(
        event=EventType.LOCKED_OUT,
        user=user_by_username(username=username or ""),
        username=username or "",
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=f"locked out from this address after {limit} failed attempts",
        extra={"failures": failures, "cool_off_minutes": cool_off_minutes(request)},
    )
