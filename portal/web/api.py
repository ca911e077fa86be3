"""The base class of every tenant API: authentication (and rate limits), membership, the tenant's trusted networks,
tenant scope and auditlog actor, in that order.

Every routed API under /api/v1/t/<tenant>/ subclasses `TenantApi` (tests/test_architecture.py checks it).
Subclasses may not override the methods that enforce this (the guard PostHog's team-scoped mixin uses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, HttpResponseBase
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.web.actor import actor_set
from portal.web.limits import LimitCount, RateLimited, limit_refusal_record
from tenants import access
from tenants.models import ApiToken, Membership, Tenant
from tenants.scoping import tenant_scope
from tenants.selectors import tenant_get_for_member
from tenants.services import network_require

GUARDED = ("initial", "dispatch", "get_permissions", "get_authenticators", "finalize_response", "handle_exception")


def _tenant_read_with(credential: Any) -> tuple[Tenant | None, tuple[Membership | None] | None]:
    """The tenant row an API token was read with (tenants.selectors.api_token_authenticate joins it), if it was,
    and the user's membership of it read in the same statement: two statements fewer per request. Any other
    credential: None, None (the tenant is read by its slug, the membership by the tenant and user)."""
    if isinstance(credential, ApiToken) and ApiToken.tenant.is_cached(credential):
        return credential.tenant, credential.membership_read
    return None, None


@contextmanager
def _before_every_statement(wrapper: Callable[..., Any]) -> Iterator[None]:
    """`wrapper` as the first of the connection's execute wrappers (Django's `execute_wrapper` adds the last), so
    that it runs before any other, the backend's own (tenants.db, which may send the scope's setting apart) too:
    every statement of the request's thread on the connection passes it before anything is sent."""
    wrappers = connections[DEFAULT_DB_ALIAS].execute_wrappers
    wrappers.insert(0, wrapper)
    try:
        yield
    finally:
        wrappers.remove(wrapper)


class TenantApi(APIView):
    """`self.tenant` and `self.membership` are set, and the tenant scope is open, when a handler runs."""

    tenant: Tenant
    membership: Membership
    _limit_count: LimitCount | None  # PolicyThrottle's count of this request while its answer is not read
    PUBLIC: ClassVar[bool] = False
    # Whether a device-bound credential (a device's token or enrolment code) may call this API at all. Off by
    # default (minimum necessary): only the DICOMweb reads and the devices' own endpoints accept them; there the
    # device gate in tenants.access narrows every decision further.
    DEVICE_CREDENTIALS: ClassVar[bool] = False
    DOOR: ClassVar[str] = "API"  # how a refusal names where the request came in
    # The RATE_LIMITS action this API counts against ("search", "retrieve", "export"), if any (PolicyThrottle).
    rate_limit: ClassVar[str | None] = None
    # When the rate limit's answer is read. PolicyThrottle sends the count to Redis; its answer is read before the
    # request's next statement, before an error is handled and before the response is made, and, unless this is
    # set, at the end of `initial` (before the handler). Set it only where the handler does nothing before its
    # first statement that a refused request may not do (no file read, no call out, nothing of patient data): its
    # work up to that statement (a search's parsing and statement building) then overlaps Redis's round trip.
    RATE_LIMIT_READ_AT_STATEMENT: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in GUARDED if name in cls.__dict__]
        if overridden:
            raise TypeError(f"{cls.__name__} may not override {', '.join(overridden)}: TenantApi enforces them.")

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication, IsAuthenticated, throttles
        read, membership_read = _tenant_read_with(request.auth)
        try:
            tenant, membership = tenant_get_for_member(
                user=request.user, slug=kwargs.get("tenant", ""), read=read, membership_read=membership_read
            )
        except access.NotVisible as exc:
            raise NotFound() from exc
        if getattr(request.auth, "tenant_id", tenant.pk) != tenant.pk:
            raise NotFound()  # a token works only for its own tenant: elsewhere it is as if nothing were there
        # The tenant's trusted networks, before anything of it is read (a 403, recorded, that names no range),
        # decided once here; only a refused request goes on to `network_require`, which records it. Its refusal
        # takes the address's alert marker (Redis) before its first statement: a request past its rate limit is
        # refused for that first, and leaves the marker to a request within it.
        address = request.META.get("REMOTE_ADDR")
        if not access.network_allows(tenant, address):
            self._limit_settle()
            network_require(tenant=tenant, address=address, door=self.DOOR, actor=request.user)
        self.tenant, self.membership = tenant, membership
        request.tenant = tenant  # type: ignore[attr-defined]
        request.membership = membership  # type: ignore[attr-defined]
        self._scope = tenant_scope(tenant)
        self._scope.__enter__()
        # A device-bound token narrows every decision of the request to what its device may do (tenants.access).
        self._credential = access.credential_scope(request.auth)
        self._credential.__enter__()
        if not self.DEVICE_CREDENTIALS and access.credential_is_device_bound(request.auth):
            raise access.Forbidden("A device's token does not work here.", code="device_not_granted")
        self._actor = actor_set(request.user, remote_addr=request.META.get("REMOTE_ADDR"))
        self._actor.__enter__()
        if not self.RATE_LIMIT_READ_AT_STATEMENT:
            self._limit_settle()

    def limit_count_defer(self, count: LimitCount) -> None:
        """PolicyThrottle's count of this request, its answer read later (`RATE_LIMIT_READ_AT_STATEMENT`)."""
        self._limit_count = count

    def _limit_settle(self) -> None:
        """Raise RateLimited if this request's count, sent by PolicyThrottle, passed a limit (its answer read now,
        if it was not yet)."""
        count, self._limit_count = self._limit_count, None
        if count is not None and (limited := count.result()) is not None:
            raise RateLimited(limited)

    def _limit_before_statement(self, execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
        if self._limit_count is not None:
            self._limit_settle()
        return execute(sql, params, many, context)

    def handle_exception(self, exc: Exception) -> Response:
        # An error's handling may write to the audit trail (a 404, a refusal): a request past its limit is a 429
        # instead, before any of it.
        if self._limit_count is not None:
            try:
                self._limit_settle()
            except RateLimited as refused:
                exc = refused
        if isinstance(exc, RateLimited):
            limit_refusal_record(exc.limited, self.request, self)
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if self._limit_count is not None:  # a handler that made no statement (its response is dropped unsent)
            try:
                self._limit_settle()
            except RateLimited as refused:
                response = self.handle_exception(refused)
        return super().finalize_response(request, response, *args, **kwargs)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        self._scope = self._actor = self._credential = None  # type: ignore[assignment]
        self._limit_count = None
        try:
            with _before_every_statement(self._limit_before_statement) if self.rate_limit else nullcontext():
                return super().dispatch(request, *args, **kwargs)
        finally:
            if self._limit_count is not None:  # never read (an error DRF did not handle): the connection given back
                self._limit_count.result()
            # Closed in reverse order; each was opened in initial() only if the caller got that far.
            if self._actor is not None:
                self._actor.__exit__(None, None, None)
            if self._credential is not None:
                self._credential.__exit__(None, None, None)
            if self._scope is not None:
                self._scope.__exit__(None, None, None)
