"""The audit writer's row is made through the model's positional constructor (audit/services.py `_event_row`), as
the ORM makes a row it read, instead of by keyword: the same values, the same related objects at hand and the same
database as `AuditEvent(chain=..., tenant=..., actor_user=..., ...)` gives (docs/BENCHMARKS.md, "h1 branch,
session 9"). A search's participants, plain dicts, are copied as `participant` copies a mapping."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit import context as audit_context
from audit import services as audit_services
from audit.events import EventType
from audit.models import AuditChain, AuditEvent
from tenants.scoping import tenant_scope
from tests.audit.helpers import events_of, record

pytestmark = pytest.mark.django_db(transaction=True)


def _details(tenant: Any, user: Any, **changed: Any) -> dict[str, Any]:
    event = EventType.STUDIES_QUERIED
    details = {
        "tenant": tenant, "event": event, "spec": event.spec, "ctx": audit_context.current(), "user": user,
        "actor_username": "someone", "actor_role": "radiologist", "outcome": 0, "outcome_description": "d" * 400,
        "system_principal": "", "source_address": "::ffff:10.0.0.1", "target_type": "study", "target_id": "1.2",
        "entries": [{"type": "query", "id": "/x"}], "extra": {"results": 3},
    }  # fmt: skip
    return {**details, **changed}


def _by_keyword(chain: Any, **details: Any) -> AuditEvent:
    """The row as the writer made it before: by keyword."""
    tenant, user = details["tenant"], details["user"]
    spec, ctx = details["spec"], details["ctx"]
    return AuditEvent(
        chain=chain, tenant=tenant, sequence=chain.last_sequence + 1 if chain is not None else 0,
        occurred_at=timezone.now(), event_type=details["event"].value, event_id=spec.event_id.value,
        event_id_display=spec.event_id.display, event_type_code=spec.event_type.value if spec.event_type else "",
        event_type_display=spec.event_type.display if spec.event_type else "", action=spec.action,
        outcome=details["outcome"], outcome_description=details["outcome_description"][:300], actor_user=user,
        actor_username=(user.username if user is not None else details["actor_username"])[:150],
        actor_role=details["actor_role"], system_principal=details["system_principal"] or ctx.system_principal,
        source_address=audit_services._normalized_address(details["source_address"] or ctx.source_address),
        target_type=details["target_type"], target_id=details["target_id"], participants=details["entries"],
        request_id=ctx.request_id, extra=dict(details["extra"] or {}),
        prev_hash=chain.last_hash if chain is not None else "",
    )  # fmt: skip


def _same(made: AuditEvent, expected: AuditEvent) -> None:
    for field in AuditEvent._meta.concrete_fields:
        if field.attname in ("public_id", "occurred_at"):  # a new one each time, of the same kind
            assert type(getattr(made, field.attname)) is type(getattr(expected, field.attname))
            continue
        assert getattr(made, field.attname) == getattr(expected, field.attname), field.name
    assert made.public_id != expected.public_id
    assert made._state.fields_cache == expected._state.fields_cache  # the related objects at hand, None included
    assert (made._state.db, made._state.adding) == (expected._state.db, expected._state.adding)


def test_the_row_is_the_one_made_by_keyword(tenant_a, radiologist_a):
    record(tenant_a, EventType.LOGOUT, actor_username="x")  # the chain's head exists
    with tenant_scope(tenant_a):
        chain = AuditChain.objects.get(key=AuditChain.key_for(tenant_a))
    cases = [
        (None, tenant_a, radiologist_a),  # a read's event: PostgreSQL fills the chain in
        (chain, tenant_a, radiologist_a),  # inside a transaction: on the locked chain
        (chain, None, None),  # the platform's kind: no tenant, no user
        (None, None, None),
    ]
    for on, tenant, user in cases:
        details = _details(tenant, user)
        made = audit_services._event_row(**details, chain=on)
        expected = _by_keyword(on, **details)
        _same(made, expected)
        if tenant is not None:
            with CaptureQueriesContext(connection) as queries:
                assert made.tenant is tenant  # at hand: no statement
                assert made.actor_user is user
            assert not queries.captured_queries


def test_the_row_is_made_positionally():
    with mock.patch.object(AuditEvent, "__init__", autospec=True, side_effect=AuditEvent.__init__) as made:
        audit_services._event_row(**_details(None, None), chain=None)
    ((args, kwargs),) = made.call_args_list
    assert kwargs == {}
    assert len(args) == 1 + len(AuditEvent._meta.concrete_fields)


def test_an_event_written_and_read_back_is_what_was_given(tenant_a, radiologist_a):
    given = [{"type": "patient", "id": "P-1", "name": "DOE^J"}, {"type": "study", "id": "1.2", "detail": {"a": 1}}]
    with tenant_scope(tenant_a):
        event = audit_services.audit_event_record(
            event=EventType.STUDIES_QUERIED, actor=radiologist_a, participants=given, source_address="10.0.0.9",
            extra={"results": 2}, actor_role="radiologist",
        )  # fmt: skip
    assert all(entry == copy and entry is not copy for entry, copy in zip(given, event.participants, strict=True))
    (stored,) = events_of(tenant_a, EventType.STUDIES_QUERIED)
    assert stored.pk == event.pk
    assert stored.participants == given
    assert (stored.actor_user_id, stored.tenant_id, stored.actor_role) == (radiologist_a.pk, tenant_a.pk, "radiologist")
    assert stored.source_address == "10.0.0.9"
    assert stored.hash == event.hash == stored.compute_hash(stored.prev_hash)
