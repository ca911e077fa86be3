"""The invitation link: choose a password once, validators apply, a used or forged link is refused clearly."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from django.test import Client

from tenants import services
from tenants.models import User
from tests.portal.accounts.flows import LOGIN, MFA_SETUP, password_step

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "pale orange lantern over quiet harbour"


@pytest.fixture
def invitation_path(db) -> str:
    """The set-password link of an account made without a usable password (Django's reset token)."""
    user = User(username="carol@example.org", email="carol@example.org", first_name="Carol", last_name="Outside")
    user.set_unusable_password()
    user.save()
    return urlparse(services.set_password_link(user=user)).path


def test_invitation_link_sets_the_password_once(invitation_path):
    client = Client()
    response = client.get(invitation_path)
    assert response.status_code == 302  # the token leaves the URL for the session
    form_url = response["Location"]
    page = client.get(form_url)
    assert page.status_code == 200
    assert b"Choose your password" in page.content
    assert b"carol" in page.content

    weak = client.post(form_url, {"new_password1": "password", "new_password2": "password"})
    assert weak.status_code == 200
    assert b"too short" in weak.content
    assert b"too common" in weak.content
    assert not User.objects.get(username="carol@example.org").has_usable_password()

    done = client.post(form_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}, follow=True)
    assert done.redirect_chain[-1][0] == LOGIN
    assert b"Your password is set" in done.content
    assert password_step(Client(), "carol@example.org", NEW_PASSWORD)["Location"].startswith(MFA_SETUP)

    again = Client().get(invitation_path, follow=True)
    assert again.status_code == 400
    assert b"invalid or has expired" in again.content


def test_a_forged_link_is_refused_clearly(invitation_path):
    uid = invitation_path.split("/")[3]
    response = Client().get(f"/accounts/set-password/{uid}/abc-0123456789abcdef/")
    assert response.status_code == 400
    assert b"invalid or has expired" in response.content
