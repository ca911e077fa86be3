"""How API callers prove who they are: a bearer token, or a browser session that has passed MFA."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from devices.models import DEVICE_TOKEN_PREFIX, ENROLMENT_CODE_PREFIX, DeviceToken, EnrolmentCode
from devices.services import device_credential_authenticate
from portal.web.limits import limit_hit, limit_hit_record, limit_reached
from tenants.models import ApiToken
from tenants.selectors import api_token_authenticate
from tenants.services import api_token_touch

BAD_TOKEN = "bad_token"  # noqa: S105 -- the RATE_LIMITS action of refused bearer tokens (per address), not a secret


def _refused(address: str | None, detail: str) -> exceptions.APIException:
    """A refused token counts against its address (RATE_LIMITS["bad_token"]); past the limit the answer is a 429
    with Retry-After, and the first of the window is on the platform's audit trail (the caller is nobody yet)."""
    limited = limit_hit(BAD_TOKEN, address=address)
    if limited is None:
        return exceptions.AuthenticationFailed(detail)
    limit_hit_record(limited, door="bearer token")
    return exceptions.Throttled(wait=limited.retry_after, detail=limited.message)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <token>`. The token is bound to one user and one tenant; `TenantApi` refuses it
    for any other tenant's URL."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken | DeviceToken | EnrolmentCode] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if not parts or parts[0].lower() != self.keyword.lower():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send the token as: Authorization: Bearer <token>.")
        # An address that sent too many refused tokens is refused for the rest of the window before any token of
        # it is looked at, a valid one included: guessing tokens from one address gains nothing by interleaving
        # a known one.
        address = request.META.get("REMOTE_ADDR")
        blocked = limit_reached(BAD_TOKEN, address=address)
        if blocked is not None:
            raise exceptions.Throttled(wait=blocked.retry_after, detail=blocked.message)
        if parts[1].startswith((DEVICE_TOKEN_PREFIX, ENROLMENT_CODE_PREFIX)):
            # A device's token or enrolment code: refused (and the refusal recorded) once the device is lost,
            # suspended, wiped or retired, or its attestation has lapsed.
            device_credential, refusal = device_credential_authenticate(raw=parts[1], source_address=address)
            if device_credential is None:
                raise _refused(address, refusal)
            return device_credential.user, device_credential
        # A view whose first permission decision reads patient data (`DECISION_AHEAD`: a DICOMweb search) has the
        # decision's statements sent with the token's, in one round trip (tenants.selectors), and with them its own
        # first statement when it names one (`statement_ahead`: a WADO-RS retrieval's rows).
        view = (getattr(request, "parser_context", None) or {}).get("view")
        token = api_token_authenticate(
            raw=parts[1],
            decision_ahead=getattr(view, "DECISION_AHEAD", False),
            statement_ahead=getattr(view, "statement_ahead", None),
        )
        if token is None:
            raise _refused(address, "The token is unknown, expired or revoked.")
        api_token_touch(token=token)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="enclave"'


class VerifiedSessionAuthentication(authentication.SessionAuthentication):
    """A browser session counts only once its second factor is verified (django-otp): a password alone
    gets a 401 from the API, never data."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user = getattr(request._request, "user", None)
        if user is None or not user.is_verified():
            return None
        return result
