"""The tenant's export policy (/t/<tenant>/settings/exports/) has a permission of its own,
`tenants.manage_export_policy`, apart from the trusted networks' `tenants.manage_networks`: holding one does not
give the other. Migration 0018 gave it to exactly those who held manage_networks, so no administrator lost it."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm, remove_perm

from audit.events import EventType
from audit.models import AuditEvent
from tenants import access
from tenants.models import Role, TrustedNetwork
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db

POLICY = "/t/{slug}/settings/exports/"
NETWORKS = "/t/{slug}/networks/"


def _policy_events(tenant):
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=EventType.TENANT_EXPORT_POLICY_SET.value).order_by("sequence"))


def _last_denial(tenant):
    with tenant_scope(tenant):
        return AuditEvent.objects.filter(event_type=EventType.ACCESS_DENIED.value).order_by("sequence").last()


def test_only_the_administrator_role_holds_it():
    holders = {role for role, perms in access.ROLE_PERMISSIONS.items() if "tenants.manage_export_policy" in perms}
    networks = {role for role, perms in access.ROLE_PERMISSIONS.items() if "tenants.manage_networks" in perms}
    assert holders == networks == {Role.TENANT_ADMIN}


def test_the_administrator_sets_it_from_the_menu_and_it_is_recorded(tenant_a, admin_a, client_for):
    client = client_for(admin_a)
    members = client.get(f"/t/{tenant_a.slug}/members/")
    assert POLICY.format(slug=tenant_a.slug) in members.content.decode()  # the menu links to the page
    assert client.post(POLICY.format(slug=tenant_a.slug), {"exports_must_be_encrypted": "on"}).status_code == 302
    tenant_a.refresh_from_db()
    assert tenant_a.exports_must_be_encrypted
    (event,) = _policy_events(tenant_a)
    assert event.actor_user == admin_a
    assert event.extra["exports_must_be_encrypted"] == {"old": False, "new": True}


def test_the_networks_permission_alone_does_not_set_the_export_policy(tenant_a, technologist_a, client_for):
    assign_perm("tenants.manage_networks", technologist_a, tenant_a)
    client = client_for(technologist_a)
    assert client.get(NETWORKS.format(slug=tenant_a.slug)).status_code == 200  # the grant is real
    assert POLICY.format(slug=tenant_a.slug) not in client.get(NETWORKS.format(slug=tenant_a.slug)).content.decode()

    assert client.get(POLICY.format(slug=tenant_a.slug)).status_code == 403
    refused = client.post(POLICY.format(slug=tenant_a.slug), {"exports_must_be_encrypted": "on"})

    assert refused.status_code == 403
    assert _last_denial(tenant_a).actor_user == technologist_a
    tenant_a.refresh_from_db()
    assert not tenant_a.exports_must_be_encrypted
    assert _policy_events(tenant_a) == []


def test_the_export_policy_permission_alone_sets_it_and_not_the_networks(tenant_a, technologist_a, client_for):
    assign_perm("tenants.manage_export_policy", technologist_a, tenant_a)
    client = client_for(technologist_a)

    assert client.post(POLICY.format(slug=tenant_a.slug), {"exports_must_be_encrypted": "on"}).status_code == 302
    tenant_a.refresh_from_db()
    assert tenant_a.exports_must_be_encrypted
    assert [event.actor_user for event in _policy_events(tenant_a)] == [technologist_a]

    assert client.post(NETWORKS.format(slug=tenant_a.slug), {"network": "10.0.0.0/8"}).status_code == 403
    with tenant_scope(tenant_a):
        assert not TrustedNetwork.objects.exists()


def test_another_tenants_administrator_gets_the_404_of_a_missing_page(tenant_a, tenant_b, admin_b, client_for):
    client = client_for(admin_b)
    assert client.get(POLICY.format(slug=tenant_a.slug)).status_code == 404
    assert client.post(POLICY.format(slug=tenant_a.slug), {"exports_must_be_encrypted": "on"}).status_code == 404
    assert client.get(POLICY.format(slug="no-such-tenant")).status_code == 404
    tenant_a.refresh_from_db()
    assert not tenant_a.exports_must_be_encrypted
    assert _policy_events(tenant_a) == []


def _holders(codename):
    groups = {
        (row.group.name, row.object_pk)
        for row in GroupObjectPermission.objects.filter(permission__codename=codename).select_related("group")
    }
    users = {
        (row.user.username, row.object_pk)
        for row in UserObjectPermission.objects.filter(permission__codename=codename).select_related("user")
    }
    return groups, users


def test_the_migration_grants_it_to_exactly_those_holding_the_networks_permission(
    tenant_a, tenant_b, admin_a, technologist_a
):
    """As a database migrated before 0018 was: manage_networks held by the administrator groups, a group of the
    hospital's own and one person directly; nobody holding manage_export_policy."""
    for tenant in (tenant_a, tenant_b):
        remove_perm("tenants.manage_export_policy", Group.objects.get(name=f"{tenant.slug}:tenant_admin"), tenant)
    security_team = Group.objects.create(name="north security team")
    assign_perm("tenants.manage_networks", security_team, tenant_a)
    assign_perm("tenants.manage_networks", technologist_a, tenant_b)
    assert _holders("manage_export_policy") == (set(), set())

    migration = importlib.import_module("tenants.migrations.0018_manage_export_policy")
    migration.grant_manage_export_policy(apps, None)
    migration.grant_manage_export_policy(apps, None)  # idempotent

    groups, users = _holders("manage_export_policy")
    assert (groups, users) == _holders("manage_networks")
    assert groups == {
        ("north:tenant_admin", str(tenant_a.pk)),
        ("south:tenant_admin", str(tenant_b.pk)),
        ("north security team", str(tenant_a.pk)),
    }
    assert users == {(technologist_a.username, str(tenant_b.pk))}
    assert "tenants.manage_export_policy" in access.tenant_permissions(admin_a, tenant_a)
