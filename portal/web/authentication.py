"""How API callers prove who they are: a bearer token, or a browser session that has passed MFA."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from devices.models import DEVICE_TOKEN_PREFIX, ENROLMENT_CODE_PREFIX, DeviceToken, EnrolmentCode
from devices.services import device_credential_authenticate
from tenants.models import ApiToken
from tenants.selectors import api_token_authenticate
from tenants.services import api_token_touch


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
        if parts[1].startswith((DEVICE_TOKEN_PREFIX, ENROLMENT_CODE_PREFIX)):
            # A device's token or enrolment code: refused (and the refusal recorded) once the device is lost,
            # suspended, wiped or retired, or its attestation has lapsed.
            device_credential, refusal = device_credential_authenticate(
                raw=parts[1], source_address=request.META.get("REMOTE_ADDR")
            )
            if device_credential is None:
                raise exceptions.AuthenticationFailed(refusal)
            return device_credential.user, device_credential
        token = api_token_authenticate(raw=parts[1])
        if token is None:
            raise exceptions.AuthenticationFailed("The token is unknown, expired or revoked.")
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
