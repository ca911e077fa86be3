"""The steps a person takes through the sign-in pages, for the tests of those pages."""

from __future__ import annotations

import base64
import html
import re

from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.tenants.factories import DEFAULT_PASSWORD, totp_now

LOGIN = "/accounts/login/"
MFA = "/accounts/mfa/"
MFA_SETUP = "/accounts/mfa/setup/"
LOGOUT = "/accounts/logout/"


def password_step(client: Client, username: str, password: str = DEFAULT_PASSWORD, *, next_url: str = ""):
    data = {"username": username, "password": password}
    if next_url:
        data["next"] = next_url
    return client.post(LOGIN, data)


def secret_on_page(content: bytes) -> str:
    match = re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', content.decode())
    assert match, "the enrolment page shows the key as text"
    return match.group(1)


def code_for_secret(secret: str) -> str:
    """What an authenticator app shows for a key typed in by hand."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{totp(key):06d}"


def backup_codes_on_page(content: bytes) -> list[str]:
    block = re.search(r'<ul id="backup-codes"[^>]*>(.*?)</ul>', content.decode(), re.S)
    assert block, "the backup codes are shown"
    return [html.unescape(code) for code in re.findall(r"<li>([^<]+)</li>", block.group(1))]


def enrol(client: Client, username: str, *, next_url: str = "") -> list[str]:
    """First sign-in: password, QR page, a code from the key shown, backup codes. Returns the codes."""
    response = password_step(client, username, next_url=next_url)
    assert response.status_code == 302
    assert response["Location"].startswith(MFA_SETUP)
    page = client.get(response["Location"])
    assert page.status_code == 200
    code = code_for_secret(secret_on_page(page.content))
    done = client.post(MFA_SETUP, {"otp_token": code, "next": next_url})
    assert done.status_code == 200
    return backup_codes_on_page(done.content)


def wrong_code(device: TOTPDevice) -> str:
    """A code that none of the accepted time steps would show."""
    valid = {totp_now(device, offset_steps=step) for step in (-1, 0, 1)}
    return next(code for code in (f"{n:06d}" for n in range(123456, 999999, 7919)) if code not in valid)
