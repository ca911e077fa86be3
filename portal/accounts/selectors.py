"""Reads for sign-in: who a typed user name is, and which second factors a person has."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken


def user_by_username(*, username: str) -> Any:
    """The account a typed user name names (user names are unique in any case), or None."""
    if not username:
        return None
    return get_user_model()._default_manager.filter(username__iexact=username.strip()).first()


def backup_code_device_get(*, user: Any) -> StaticDevice | None:
    return StaticDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()


def backup_codes_remaining(*, user: Any) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()
