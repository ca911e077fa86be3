"""Time source and format (SECURITY.md E8): every audit timestamp is timezone-aware UTC, stored as `timestamp with
time zone`, read back in UTC, and written in UTC in the trail's exports; the database session speaks UTC."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection, models

from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from audit.services import audit_event_record, security_alert_raise
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db

OUR_APPS = {"tenants", "audit", "devices", "studies", "training", "portal"}


def test_settings_keep_time_aware_and_in_utc():
    assert settings.USE_TZ is True
    assert settings.TIME_ZONE == "UTC"
    with connection.cursor() as cursor:
        cursor.execute("SHOW TimeZone")
        assert cursor.fetchone()[0] == "UTC"


def test_every_datetime_column_of_our_apps_is_timestamp_with_time_zone():
    expected = {}
    for model in apps.get_models():
        if model._meta.app_label not in OUR_APPS or not model._meta.managed:
            continue
        for field in model._meta.concrete_fields:
            if isinstance(field, models.DateTimeField):
                expected[(model._meta.db_table, field.column)] = field
    assert ("audit_auditevent", "occurred_at") in expected
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type LIKE 'timestamp%%'"
        )
        types = {(table, column): kind for table, column, kind in cursor.fetchall()}
    wrong = {key: types.get(key) for key in expected if types.get(key) != "timestamp with time zone"}
    assert wrong == {}
    naive = {key for key, kind in types.items() if kind != "timestamp with time zone"}
    assert naive == set(), f"columns without a time zone: {sorted(naive)}"


def test_recorded_events_and_alerts_read_back_aware_utc(tenant_a, radiologist_a):
    with tenant_scope(tenant_a):
        audit_event_record(event=EventType.LOGIN_FAILED, actor_username="x", outcome=Outcome.MINOR_FAILURE)
        security_alert_raise(kind="test", summary="a test alert", event=EventType.ACCESS_DENIED, actor=radiologist_a)
    events = list(AuditEvent.unscoped_objects.all())
    assert len(events) >= 2
    for event in events:
        assert event.occurred_at.tzinfo is not None
        assert event.occurred_at.utcoffset() == timedelta(0)
        assert event.occurred_at.tzinfo == UTC
    for alert in SecurityAlert.unscoped_objects.all():
        assert alert.raised_at.utcoffset() == timedelta(0)


def test_the_trail_exports_write_utc(tenant_a, compliance_a, client_for):
    with tenant_scope(tenant_a):
        audit_event_record(event=EventType.LOGIN_FAILED, actor_username="x", outcome=Outcome.MINOR_FAILURE)
    client = client_for(compliance_a)

    def body(path: str) -> str:
        response = client.get(path)
        assert response.status_code == 200
        return b"".join(response.streaming_content).decode()

    rows = json.loads(body("/t/north/audit/export.json"))
    stamps = [row["when_utc"] for row in rows]
    stamps += [row["when_utc"] for row in csv.DictReader(io.StringIO(body("/t/north/audit/export.csv")))]
    stamps += re.findall(r'EventDateTime="([^"]+)"', body("/t/north/audit/export.xml"))
    assert len(stamps) >= 3
    for stamp in stamps:
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0), stamp
