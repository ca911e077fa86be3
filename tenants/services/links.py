"""Links that Enclave puts in e-mail, built in one place."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from tenants.models import User


def absolute(path: str) -> str:
    """A path of this site as a full URL, for e-mail (PORTAL_BASE_URL, never the request's Host header)."""
    return f"{settings.PORTAL_BASE_URL}{path}"


def set_password_link(*, user: User) -> str:
    """The link that lets `user` choose a password (Django's reset token: it works until the password changes)."""
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return absolute(reverse("accounts:set_password", kwargs={"uidb64": uid, "token": token}))


def invitation_link(*, raw_token: str) -> str:
    """The link of an invitation e-mail; the token in it is stored only as a digest."""
    return absolute(reverse("invitations:open", kwargs={"token": raw_token}))
