import pytest

from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from tenants import access
from tenants.models import Membership
from tenants.scoping import TenantScopeError, tenant_scope
from tests.chains import chain_of


def test_scope_fails_closed(tenant_a):
    with pytest.raises(TenantScopeError):
        list(Membership.objects.all())


def test_roles_and_chain(tenant_a, admin_a, radiologist_a):
    assert access.has_perm(admin_a, "tenants.manage_members", tenant_a)
    assert not access.has_perm(radiologist_a, "tenants.manage_members", tenant_a)
    with tenant_scope(tenant_a):
        chain = chain_of(tenant_a)
    assert audit_chain_verify(chain=chain).ok
    with tenant_scope(tenant_a):
        assert AuditEvent.objects.count() == 1
