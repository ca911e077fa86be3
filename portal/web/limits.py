"""Rate limits: one policy (settings.RATE_LIMITS), counted in Redis, for pages, the API, DICOMweb and DIMSE.

An action (login, search, retrieve, export) has a limit per kind of key: the person (whatever token, session or
address they use), the token, the client address, the DICOM device. Each is a fixed window counter in the Django
cache (Redis): INCR on a key named by action, kind, key and window, expiring with the window. A caller over any of
its limits is refused until the window ends (`Limited.retry_after`, sent as Retry-After), and the first refusal
of a window is on the audit trail (RATE_LIMITED), the later ones of the same window are not: a client hammering a
limit writes one event per window, not one per request.

Doors: `PolicyThrottle` for the API and DICOMweb (DRF: 429 problem document with Retry-After), `TenantPageView`
for pages (a 429 page), the sign-in view, and the DICOM listener (studies.net: the DIMSE out-of-resources status).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle
from rest_framework.throttling import UserRateThrottle as DrfUserRateThrottle

from audit.events import EventType, Outcome
from audit.services import audit_event_record
from tenants.access import membership_current_get
from tenants.models import Tenant

PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
KINDS = ("person", "token", "address", "device")


@dataclass(frozen=True)
class Limited:
    """A refusal: which action and key kind ran out, and in how many seconds the window ends."""

    action: str
    kind: str
    limit: str
    retry_after: int
    first: bool  # the first refusal of this window (the one that is audited)

    @property
    def message(self) -> str:
        return f"Too many {self.action} requests; try again in {self.retry_after} seconds."


def rate_parse(text: str) -> tuple[int, int]:
    """ "300/minute" -> (300, 60). Raises ValueError for anything else (checked at start by tests)."""
    count, _, period = text.partition("/")
    if period not in PERIODS or not count.strip().isdigit():
        raise ValueError(f"A rate is N/second, N/minute, N/hour or N/day, not {text!r}.")
    return int(count), PERIODS[period]


_Window = tuple[str, str, int, int, int]  # kind, Redis key, limit, period, window


def _windows(action: str, policy: dict[str, str], now: float, keys: dict[str, Any]) -> list[_Window]:
    """The counters of `action` for the given keys at `now`, in KINDS order: (kind, Redis key, limit, period, window);
    a kind without a key or without a limit in `policy` is left out."""
    windows = []
    for kind in KINDS:
        ident = keys.get(kind)
        if ident in (None, "") or kind not in policy:
            continue
        count, period = rate_parse(policy[kind])
        window = int(now // period)
        windows.append((kind, f"enclave:rate:{action}:{kind}:{ident}:{period}:{window}", count, period, window))
    return windows


class LimitCount:
    """One request counted against its limits: the counting sent when this is made, its answer read by `result()`
    (the first call; the later ones give the same). Between the two the caller may do what a refused request may
    also do (no statement, no read of patient data), which then overlaps Redis's round trip (`PolicyThrottle`)."""

    __slots__ = ("_answer", "_limited", "_now", "_policy", "_windows", "action")

    def __init__(self, action: str, **keys: Any) -> None:
        self.action = action
        self._policy = policy = settings.RATE_LIMITS.get(action, {})
        self._now = now = time.time()
        self._limited: Limited | None = None
        self._windows = _windows(action, policy, now, keys)
        self._answer: Callable[[], list[int] | None] | None = (
            _counted_sent([(key, period + 1, count) for _, key, count, period, _ in self._windows])
            if self._windows
            else None
        )

    def result(self) -> Limited | None:
        """The first limit passed, else None; None too when Redis was unreachable (not counted)."""
        answer, self._answer = self._answer, None
        if answer is None:
            return self._limited
        used = answer()
        if used is None:  # Redis unreachable: not counted (portal.web.cache, emergency mode)
            return None
        for (kind, _, count, period, window), hits in zip(self._windows, used, strict=False):
            if hits > count:
                retry_after = max(1, math.ceil((window + 1) * period - self._now))
                self._limited = Limited(self.action, kind, self._policy[kind], retry_after, first=hits == count + 1)
                break
        return self._limited


def limit_hit(action: str, **keys: Any) -> Limited | None:
    """Count one `action` under each given key (`person=`, `token=`, `address=`, `device=`; None or "" skips a
    kind) against the policy; the first limit passed is returned, else None (the kinds after it are not counted). One
    Redis round trip for all kinds (`EmergencyRedisCache.incr_counters`)."""
    return LimitCount(action, **keys).result()


def _counted_sent(counters: list[tuple[str, int, int]]) -> Callable[[], list[int] | None]:
    """One more on each (key, timeout, limit) counter until one passes its limit, the answer read by the function
    returned: in one round trip on the deployed cache, sent now; else key by key, counted now."""
    incr_counters_sent = getattr(cache, "incr_counters_sent", None)
    if incr_counters_sent is not None:
        answer: Callable[[], list[int] | None] = incr_counters_sent(counters)
        return answer
    used = []
    for key, timeout, limit in counters:
        cache.add(key, 0, timeout=timeout)
        try:
            used.append(cache.incr(key))
        except ValueError:  # expired between add and incr: a new window has begun
            cache.add(key, 1, timeout=timeout)
            used.append(1)
        if used[-1] > limit:
            break
    return lambda: used


def limit_reached(action: str, **keys: Any) -> Limited | None:
    """Whether a key is already over its limit of `action` in the current window, without counting this request
    (a refusal found this way is never the window's first: that one was recorded when it was counted)."""
    policy = settings.RATE_LIMITS.get(action, {})
    now = time.time()
    for kind, key, count, period, window in _windows(action, policy, now, keys):
        used = cache.get(key) or 0
        if used > count:
            return Limited(action, kind, policy[kind], max(1, math.ceil((window + 1) * period - now)), first=False)
    return None


def limit_hit_record(limited: Limited, *, actor: Any = None, tenant: Tenant | None = None, door: str) -> None:
    """The first refusal of a window, on the audit trail of `tenant` (the platform's when None)."""
    if not limited.first:
        return
    audit_event_record(
        event=EventType.RATE_LIMITED,
        actor=actor,
        tenant=tenant,
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=f"{limited.action}: more than {limited.limit} per {limited.kind}",
        extra={"action": limited.action, "kind": limited.kind, "limit": limited.limit, "door": door},
    )


def credential_key(credential: Any) -> str | None:
    """A token row as a rate-limit key: its kind and id (API token, device token, enrolment code)."""
    if credential is None or getattr(credential, "pk", None) is None:
        return None
    return f"{type(credential).__name__}:{credential.pk}"


def person_key(user: Any) -> str | None:
    return str(user.pk) if getattr(user, "is_authenticated", False) and user.pk is not None else None


def request_limit_count(action: str, request: HttpRequest | Request, *, credential: Any = None) -> LimitCount:
    return LimitCount(
        action,
        person=person_key(getattr(request, "user", None)),
        token=credential_key(credential),
        address=request.META.get("REMOTE_ADDR"),
    )


def request_limit_hit(action: str, request: HttpRequest | Request, *, credential: Any = None) -> Limited | None:
    return request_limit_count(action, request, credential=credential).result()


def limited_page(request: HttpRequest, limited: Limited) -> HttpResponse:
    """The 429 page: what happened and when to come back; Retry-After says it to machines."""
    response = render(
        request,
        "_error.html",
        {"error_code": 429, "error_title": "Too many requests", "error_text": limited.message},
        status=429,
    )
    response["Retry-After"] = str(limited.retry_after)
    return response


class RateLimited(exceptions.Throttled):
    """DRF's Throttled (429, Retry-After) for a request whose count was answered after `PolicyThrottle` had let it
    go on (`TenantApi` reads the answer later); `limited` says which limit, for the audit trail."""

    def __init__(self, limited: Limited) -> None:
        super().__init__(wait=limited.retry_after)
        self.limited = limited


def limit_refusal_record(limited: Limited, request: Request, view: Any) -> None:
    """The first refusal of a window of an API or DICOMweb request, recorded in the chain of the tenant in the URL
    when the caller is a member of it, else the platform's."""
    if not limited.first:
        return
    tenant = Tenant.objects.filter(slug=view.kwargs.get("tenant", "")).first()
    if tenant is not None and membership_current_get(user=request.user, tenant=tenant) is None:
        tenant = None
    limit_hit_record(limited, actor=request.user, tenant=tenant, door=getattr(view, "DOOR", "API"))


class PolicyThrottle(BaseThrottle):
    """RATE_LIMITS for an API or DICOMweb view that names its action (`rate_limit = "search"`). Runs in DRF's
    `initial`, after authentication and before the tenant is opened; a refusal is DRF's Throttled (429, problem
    document, Retry-After), recorded in the chain of the tenant in the URL when the caller is a member of it.

    The count is sent to Redis here. A view that takes it (`limit_count_defer`: every `TenantApi`) reads the answer
    itself, before the first statement or response that a refused request must not make, and raises `RateLimited`
    then; any other view waits for the answer here."""

    def __init__(self) -> None:
        self._wait: int | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        action = getattr(view, "rate_limit", None)
        if not action:
            return True
        count = request_limit_count(action, request, credential=request.auth)
        deferred = getattr(view, "limit_count_defer", None)
        if deferred is not None:
            deferred(count)
            return True
        limited = count.result()
        if limited is None:
            return True
        self._wait = limited.retry_after
        limit_refusal_record(limited, request, view)
        return False

    def wait(self) -> float | None:
        return self._wait


class UserRateThrottle(DrfUserRateThrottle):
    """DRF's per-person throttle (`THROTTLE_USER`), for the API views that name no RATE_LIMITS action. A view that
    names one (`rate_limit = "search"`: the DICOMweb reads, ...) is counted by the policy (`PolicyThrottle`: the
    person, the token and the address, in one Redis round trip), the one limit of that action on every door. DRF's
    count beside it would be a second and different limit on the same person (600/min, where the policy allows 3000
    retrievals a minute) and two more Redis commands on every request."""

    def allow_request(self, request: Request, view: Any) -> bool:
        if getattr(view, "rate_limit", None) and settings.RATE_LIMITS.get(view.rate_limit, {}).get("person"):
            return True
        return super().allow_request(request, view)
