"""The permission decision for patient data asks the training gate's statement and the person's tenant
permissions in one round trip (tenants.access `GateStatement`, tenants.db `prepared_together`), both read afresh
for every decision: a lapsed training or a changed role counts at the very next one, and the answers are those of
the statements run one by one."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studies.models import Study
from tenants import access
from tenants.db.base import prepared_together
from tenants.models import Role
from tenants.scoping import tenant_scope
from tenants.services import membership_change_role
from tests.training.helpers import record, today

pytestmark = pytest.mark.django_db


def _sent(calls: list[str]) -> Any:
    def wrapper(execute, sql, params, many, context):
        calls.append(sql)
        return execute(sql, params, many, context)

    return connection.execute_wrapper(wrapper)


def _sees_every_study(user: Any) -> bool:
    everything = Study.objects.all()
    return access.visible(user, "studies.view_study", everything) is everything


def test_the_gate_and_the_permissions_are_one_round_trip_and_logged_as_written(tenant_a, radiologist_a, hipaa_required):
    with tenant_scope(tenant_a), pytest.raises(access.GateRefused):  # no completion: the gate refuses
        _sees_every_study(radiologist_a)  # the statements prepared, one by one
    calls: list[str] = []
    with (
        tenant_scope(tenant_a),
        _sent(calls),
        CaptureQueriesContext(connection) as queries,
        pytest.raises(access.GateRefused),
    ):
        _sees_every_study(radiologist_a)
    decision = [call for call in calls if "EXECUTE" in call]
    assert len(decision) == 1  # the gate's statement and the permissions', prepared, in one string
    assert decision[0].count("EXECUTE ") == 2
    shown = queries.captured_queries[0]["sql"]
    assert "training_completion" in shown
    assert "guardian_groupobjectpermission" in shown
    assert "EXECUTE" not in shown


def test_a_lapsed_training_and_a_changed_role_count_at_the_next_decision(
    tenant_a, admin_a, compliance_a, radiologist_a, hipaa_required
):
    completion = record(tenant_a, compliance_a, radiologist_a, hipaa_required.course,
                        expires_on=today() + timedelta(days=300))  # fmt: skip
    with tenant_scope(tenant_a):
        for _ in range(8):  # prepared, then sent together; PostgreSQL may keep generic plans
            assert _sees_every_study(radiologist_a)
    # The completion lapses (a correction dates it back to yesterday): refused at the very next decision.
    from training.models import Completion

    with tenant_scope(tenant_a):
        Completion.objects.filter(pk=completion.pk).update(expires_on=today() - timedelta(days=1))
        with pytest.raises(access.GateRefused) as refused:
            _sees_every_study(radiologist_a)
    assert refused.value.code == "training_expired"
    record(tenant_a, compliance_a, radiologist_a, hipaa_required.course, expires_on=today() + timedelta(days=300))
    with tenant_scope(tenant_a):
        assert _sees_every_study(radiologist_a)
        membership = access.membership_current_get(user=radiologist_a, tenant=tenant_a)
        membership_change_role(actor=admin_a, membership=membership, role=Role.REFERRING_PHYSICIAN)
        assert not _sees_every_study(radiologist_a)  # only what names them or is shared with them
        assert not access.has_perm(radiologist_a, "tenants.view_studies", tenant_a)


def test_another_tenants_permissions_are_not_this_ones(tenant_a, tenant_b, radiologist_a, outsider_b):
    with tenant_scope(tenant_b):
        for _ in range(3):
            assert not _sees_every_study(radiologist_a)  # a member of north only
            assert _sees_every_study(outsider_b)
    with tenant_scope(tenant_a):
        assert _sees_every_study(radiologist_a)
        assert not _sees_every_study(outsider_b)


@pytest.mark.django_db(transaction=True)  # outside a transaction: statements lost by the session are prepared anew
def test_statements_sent_together_answer_as_one_by_one(tenant_a, radiologist_a, technologist_a):
    statements = [
        ("SELECT user_id FROM tenants_membership WHERE user_id = %s", [radiologist_a.pk]),
        ("SELECT role FROM tenants_membership WHERE user_id = %(user)s AND status = %(status)s",
         {"user": technologist_a.pk, "status": "active"}),
    ]  # fmt: skip
    expected = [[(radiologist_a.pk,)], [(Role.TECHNOLOGIST,)]]
    calls: list[str] = []
    with tenant_scope(tenant_a), _sent(calls):
        assert prepared_together(statements) == expected  # first use: prepared one by one
        assert len(calls) == 2
        calls.clear()
        assert prepared_together(statements) == expected
        assert len(calls) == 1
        assert calls[0].count("EXECUTE ") == 2
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")  # the session lost its statements
        assert prepared_together(statements) == expected  # prepared again, one by one
    with tenant_scope(tenant_a):
        assert prepared_together(statements) == expected
