"""manage.py tenant_quota: a tenant's own ingestion quotas, set by an operator, on the tenant's trail, and then
in force on the ingestion pipeline (studies.services.ingest_quota_take)."""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from audit.events import EventType
from audit.models import AuditEvent
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from studies.services import Rejected, ingest_receive
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("tenant_quota", *args, stdout=out)
    return out.getvalue()


def test_setting_a_quota_is_recorded_and_enforced(tenant_a):
    data = make_instance()
    printed = run("--tenant", "north", "--per-day", str(len(data) + 10))
    assert f"per day: {len(data) + 10} (the tenant's own)" in printed
    assert "per hour: no quota (the platform's)" in printed
    with tenant_scope(tenant_a):
        [event] = AuditEvent.objects.filter(event_type=EventType.TENANT_QUOTA_SET)
        assert event.extra["new"] == {"per_hour": None, "per_day": len(data) + 10}
        assert event.system_principal == "manage.py tenant_quota"
        tenant_a.refresh_from_db()
        ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)
        with pytest.raises(Rejected) as refused:
            ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=data)
    assert refused.value.failure == IngestItem.Failure.QUOTA
    assert "per day is used up" in refused.value.reason


def test_default_hands_the_figure_back_to_the_platform(tenant_a):
    run("--tenant", "north", "--per-hour", "5")
    with override_settings(INGEST_QUOTA_BYTES_PER_HOUR=7):
        assert "per hour: 7 (the platform's)" in run("--tenant", "north", "--per-hour", "default")


def test_bad_input_is_refused(tenant_a):
    with pytest.raises(CommandError, match="number of bytes"):
        run("--tenant", "north", "--per-day", "lots")
    with pytest.raises(CommandError, match="no tenant"):
        run("--tenant", "nowhere")
