"""Password management (SECURITY.md B3): the base settings' validators ask for 15 characters and refuse breached
(common) passwords with no composition rule, and nobody sets another person's password: no route takes a
password for someone else, and an administrator's attempts through the API and the operators' admin change
nothing."""

from __future__ import annotations

import pytest
from django import forms
from django.contrib.auth.password_validation import get_password_validators, validate_password
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework import serializers

from portal.settings import base
from tenants.models import Membership, User
from tests.portal.accounts.flows import password_step
from tests.tenants.factories import DEFAULT_PASSWORD

pytestmark = pytest.mark.django_db

PRODUCTION_VALIDATORS = get_password_validators(base.AUTH_PASSWORD_VALIDATORS)
# The only routes whose forms take a password, and whose password it is.
OUR_APPS = {"portal", "tenants", "audit", "devices", "studies", "training"}
PASSWORD_ROUTES = {
    "accounts/login/": "the person's own, to sign in",
    "accounts/set-password/<uidb64>/<token>/": "the person's own, with the single-use token mailed to them",
    "ops/password_change/": "the signed-in operator's own, after their old one",
}


def refusals(password: str, user: User | None = None) -> list[str]:
    try:
        validate_password(password, user=user, password_validators=PRODUCTION_VALIDATORS)
    except ValidationError as error:
        return [e.code for e in error.error_list]
    return []


def test_fifteen_characters_are_needed_and_no_composition_rule_applies():
    assert refusals("lantern harbour") == []  # 15 characters, lower case and a space only
    assert refusals("lantern harbou") == ["password_too_short"]  # 14
    assert refusals("a quiet orange lantern over the harbour at dusk") == []


def test_a_breached_password_is_refused_even_when_long_enough():
    # Both are in the breached-password list Django ships (20,000 from public breaches), both >= 15 characters.
    assert refusals("1qaz2wsx3edc4rfv") == ["password_too_common"]
    assert refusals("1q2w3e4r5t6y7u8i9o0p") == ["password_too_common"]
    assert "password_too_short" in refusals("Password1!")
    assert "password_too_common" in refusals("Password1!")


def test_the_persons_own_name_is_refused(tenant_a, radiologist_a):
    radiologist_a.first_name, radiologist_a.last_name = "Rosalind", "Radiologistwithalongname"
    assert "password_too_similar" in refusals("radiologistwithalongname", user=radiologist_a)


def _routes(resolver: URLResolver, prefix: str = ""):
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern)


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _our_classes_with_password_fields() -> dict[str, set[str]]:
    """Every form and serializer of our apps (all imported once the URLconf is loaded) with a password-like
    field."""
    get_resolver().url_patterns  # noqa: B018  # imports every view module, hence every form and serializer
    found = {}
    for cls in _subclasses(forms.BaseForm) | _subclasses(serializers.BaseSerializer):
        if cls.__module__.split(".")[0] not in OUR_APPS:
            continue
        fields = getattr(cls, "base_fields", None) or getattr(cls, "_declared_fields", {})
        names = {name for name in fields if "password" in name.lower()}
        if names:
            found[f"{cls.__module__}.{cls.__qualname__}"] = names
    return found


def test_no_route_takes_a_password_except_the_persons_own():
    assert {path for path in _routes(get_resolver()) if "password" in path} - {"ops/password_change/done/"} == {
        path for path in PASSWORD_ROUTES if path != "accounts/login/"
    }
    # Of our own forms and serializers, only these have a password field, each for the person's own (the
    # set-password page and the operators' own change use Django's forms, which ask for the token or the old one).
    assert _our_classes_with_password_fields() == {
        "portal.accounts.forms.LoginForm": {"password"},  # the person's own, to sign in
        # the invitee's own, chosen on the invitation page they reach with the token mailed to them
        "tenants.forms.InvitationNewAccountForm": {"password1", "password2"},
    }


def test_an_administrator_cannot_set_a_members_password_through_the_api(
    tenant_a, admin_a, technologist_a, api_client_for
):
    membership = Membership.unscoped_objects.get(user=technologist_a, tenant=tenant_a)
    client = api_client_for(admin_a, tenant_a)
    url = f"/api/v1/t/north/members/{membership.public_id}/"
    new = "pale orange lantern over quiet harbour"
    for body in ({"password": new}, {"password": new, "role": "technologist"}, {"new_password1": new}):
        response = client.patch(url, body, format="json")
        assert response.status_code in (200, 400), response.content
    for method in ("put", "post"):
        assert getattr(client, method)(url + "password/", {"password": new}, format="json").status_code == 404
    technologist_a.refresh_from_db()
    assert technologist_a.check_password(DEFAULT_PASSWORD)
    assert not technologist_a.check_password(new)
    assert password_step(Client(), technologist_a.username, new).status_code == 200  # refused: the form again


def test_an_operator_cannot_set_a_persons_password_in_the_admin(client_for, platform_staff, technologist_a):
    client = client_for(platform_staff)
    new = "pale orange lantern over quiet harbour"
    data = {"password1": new, "password2": new}
    for path in (f"/ops/tenants/user/{technologist_a.pk}/password/", f"/ops/tenants/user/{technologist_a.pk}/change/"):
        response = client.post(path, data)
        assert response.status_code in (302, 403, 404), path
    assert client.get(f"/ops/tenants/user/{technologist_a.pk}/change/").status_code == 200  # read only, no form
    technologist_a.refresh_from_db()
    assert technologist_a.check_password(DEFAULT_PASSWORD)
