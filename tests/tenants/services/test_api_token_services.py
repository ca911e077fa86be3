from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.events import EventType
from tenants import selectors, services
from tenants.access import NotVisible
from tenants.models import ApiToken, Membership
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events


def test_create_stores_only_a_digest_and_audits(tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        token, raw = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name=" export ", days=3)
        stored = ApiToken.objects.get(pk=token.pk)

    assert raw.startswith(services.API_TOKEN_PREFIX)
    assert raw.startswith(stored.prefix)
    assert stored.digest == ApiToken.digest_of(raw) != raw
    assert stored.name == "export"
    assert timedelta(days=2, hours=23) < stored.expires_at - timezone.now() <= timedelta(days=3)
    assert selectors.api_token_authenticate(raw=raw) == stored
    (event,) = events(tenant_a, EventType.API_TOKEN_CREATED)
    assert event.actor_user == radiologist_a
    assert event.target_id == str(token.public_id)
    assert raw not in str(event.extra)


@pytest.mark.parametrize(("name", "days", "field"), [("x", 0, "days"), ("x", 100000, "days"), ("  ", 5, "name")])
def test_create_validates(tenant_a, radiologist_a, name, days, field):
    with tenant_scope(tenant_a), pytest.raises(ValidationError) as caught:
        services.api_token_create(actor=radiologist_a, tenant=tenant_a, name=name, days=days)
    assert field in caught.value.message_dict
    assert events(tenant_a, EventType.API_TOKEN_CREATED) == []


def test_revoke_is_idempotent_and_stops_authentication(tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        token, raw = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="x")
        services.api_token_revoke(actor=radiologist_a, token=token)
        services.api_token_revoke(actor=radiologist_a, token=token)

    assert token.status == "revoked"
    assert selectors.api_token_authenticate(raw=raw) is None
    (event,) = events(tenant_a, EventType.API_TOKEN_REVOKED)
    assert event.actor_user == radiologist_a


def test_only_the_owner_or_a_tenant_admin_may_revoke(tenant_a, admin_a, radiologist_a, technologist_a):
    with tenant_scope(tenant_a):
        token, _ = services.api_token_create(actor=technologist_a, tenant=tenant_a, name="x")
        with pytest.raises(NotVisible):
            selectors.api_token_get(actor=radiologist_a, public_id=token.public_id)
        with pytest.raises(NotVisible):
            services.api_token_revoke(actor=radiologist_a, token=token)
        services.api_token_revoke(
            actor=admin_a, token=selectors.api_token_get(actor=admin_a, public_id=token.public_id)
        )

    assert events(tenant_a, EventType.API_TOKEN_REVOKED)[0].actor_user == admin_a


def test_token_status(tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        token, _ = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="x")
        assert token.status == "active"
        token.expires_at = timezone.now() - timedelta(seconds=1)
        assert token.status == "expired"
        token.revoked_at = timezone.now()
        assert token.status == "revoked"


def test_malformed_ids_are_not_visible(tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        with pytest.raises(NotVisible):
            selectors.api_token_get(actor=radiologist_a, public_id="not-a-uuid")
        with pytest.raises(NotVisible):
            selectors.membership_get(actor=radiologist_a, public_id="not-a-uuid")
        with pytest.raises(NotVisible):
            selectors.api_token_get_for_operator(public_id="not-a-uuid")


def test_authenticate_reads_token_user_and_tenant_in_one_statement_as_the_orm_does(
    django_assert_num_queries, tenant_a, radiologist_a
):
    # One SQL statement, written from the models' metadata: it must give the rows the ORM gives, every field
    # converted as the ORM converts it (a trusted network range is JSON, which arrives from the server as text).
    tenant_a.network_ranges = ["10.0.0.0/8"]
    tenant_a.save()
    with tenant_scope(tenant_a):
        token, raw = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="x")
    with django_assert_num_queries(1):
        found = selectors.api_token_authenticate(raw=raw)
        assert found is not None
        user, tenant = found.user, found.tenant  # read with it: no further statement
    expected = ApiToken.unscoped_objects.select_related("user", "tenant").get(pk=token.pk)
    for got, want in ((found, expected), (user, expected.user), (tenant, expected.tenant)):
        for field in type(want)._meta.concrete_fields:
            assert getattr(got, field.attname) == getattr(want, field.attname), field.name
    assert tenant.network_ranges == ["10.0.0.0/8"]
    assert selectors.api_token_authenticate(raw=raw + "x") is None


def test_authenticate_refuses_an_expired_token_and_an_inactive_user(tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        token, raw = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="x")
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert selectors.api_token_authenticate(raw=raw) is None
    with tenant_scope(tenant_a):
        token, raw = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="y")
    radiologist_a.is_active = False
    radiologist_a.save()
    assert selectors.api_token_authenticate(raw=raw) is None


def test_authenticate_reads_the_membership_with_the_token_and_the_request_checks_it_as_before(
    django_assert_num_queries, tenant_a, radiologist_a
):
    """The user's membership of the token's tenant comes in the token's statement (one round trip fewer per
    request) and is held to the checks `membership_current_get` makes: a membership that ended, by status or by
    its end date, lets nothing in at the next request."""
    with tenant_scope(tenant_a):
        _, raw = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="x")
    with django_assert_num_queries(1):
        found = selectors.api_token_authenticate(raw=raw)
        tenant, membership = selectors.tenant_get_for_member(
            user=found.user, slug="north", read=found.tenant, membership_read=found.membership_read
        )
    expected = Membership.unscoped_objects.get(user=radiologist_a, tenant=tenant_a)
    for field in Membership._meta.concrete_fields:
        assert getattr(membership, field.attname) == getattr(expected, field.attname), field.name
    assert tenant.pk == tenant_a.pk

    Membership.unscoped_objects.filter(pk=expected.pk).update(ends_at=timezone.now() - timedelta(seconds=1))
    found = selectors.api_token_authenticate(raw=raw)
    assert found.membership_read[0] is not None  # still active by status, but past its end
    with pytest.raises(NotVisible):
        selectors.tenant_get_for_member(
            user=found.user, slug="north", read=found.tenant, membership_read=found.membership_read
        )
    Membership.unscoped_objects.filter(pk=expected.pk).update(ends_at=None, status=Membership.Status.ENDED)
    found = selectors.api_token_authenticate(raw=raw)
    assert found.membership_read == (None,)
    with pytest.raises(NotVisible):
        selectors.tenant_get_for_member(
            user=found.user, slug="north", read=found.tenant, membership_read=found.membership_read
        )
