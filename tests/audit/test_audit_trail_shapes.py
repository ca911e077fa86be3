"""Issue 8 #1: the audit page answered 500 (KeyError: 0) and the CSV had only its header as soon as
django-auditlog had recorded a many-to-many change. The page and the CSV over a trail holding every tracked
tenant model's create, update and delete, JSON values, and real many-to-many changes (an export's studies)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from auditlog.context import set_actor
from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.contrib.contenttypes.models import ContentType

from audit.context import audit_context
from audit.events import EventType
from audit.services import audit_event_record
from studies.models import Export
from tenants.models import TenantOwnedModel
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import study_make

pytestmark = pytest.mark.django_db

URL = "/t/north/audit/"
EXPORT = "/t/north/audit/export.csv"


def tracked_tenant_models():
    return sorted(
        (model for model in auditlog.get_models() if issubclass(model, TenantOwnedModel)),
        key=lambda model: model._meta.label_lower,
    )


@pytest.fixture
def full_trail(tenant_a, admin_a, radiologist_a):
    """Real changes (a study, an export whose studies are set, changed and cleared, JSON options, a delete) and,
    for every other tracked tenant model, a create, an update with JSON values and a delete in the shapes
    django-auditlog stores."""
    study_one, study_two = study_make(tenant_a), study_make(tenant_a)
    with tenant_scope(tenant_a), set_actor(radiologist_a), audit_context(request_id="req-export-0001"):
        export = Export.objects.create(tenant=tenant_a, owner=radiologist_a, options=["113100"], purpose="teaching")
        export.studies.set([study_one, study_two])
        export.options = ["113100", {"code": "113101", "meaning": "Clean Pixel Data"}]
        export.save(update_fields=["options", "updated_at"])
        export.studies.remove(study_two)
        export.studies.clear()
        export.delete()
    for model in tracked_tenant_models():
        content_type = ContentType.objects.get_for_model(model)
        shapes = [
            (LogEntry.Action.CREATE, {"state": [None, "queued"], "total": [None, 3]}),
            (LogEntry.Action.UPDATE, {"options": [["a"], {"b": [1, 2]}], "total": [3, 4], "note": ["x", ""]}),
            (LogEntry.Action.DELETE, {"state": ["done", None]}),
        ]
        for action, changes in shapes:
            LogEntry.objects.create(
                content_type=content_type,
                object_pk="1",
                object_id=1,
                object_repr=f"{model._meta.model_name} 1",
                action=action,
                changes=changes,
                actor=admin_a,
                additional_data={"tenant_id": tenant_a.pk},
            )
    return export


def test_the_page_renders_every_change_shape(client_for, tenant_a, compliance_a, full_trail):
    client = client_for(compliance_a)

    response = client.get(URL, {"event": "changes"})
    pages = [response]
    while pages[-1].context["next_query"]:
        pages.append(client.get(f"{URL}?{pages[-1].context['next_query']}"))

    assert all(page.status_code == 200 for page in pages)
    html = "".join(page.content.decode() for page in pages)
    assert "added: study " in html
    assert "removed: study " in html
    assert "Export deleted" in html or "export deleted" in html.lower()
    assert "{&quot;code&quot;: &quot;113101&quot;" in html  # a JSON value, shown as JSON
    for model in tracked_tenant_models():
        if model._meta.label_lower == "studies.patient":  # a patient's name is an identifier: masked
            assert "studies.patient (masked)" in html
            assert "patient 1" not in html
        else:
            assert f"{model._meta.model_name} 1" in html, model


def test_the_csv_holds_every_entry_with_its_changes(client_for, tenant_a, compliance_a, full_trail):
    response = client_for(compliance_a).get(EXPORT)
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))

    with tenant_scope(tenant_a):
        expected_changes = LogEntry.objects.filter(additional_data__tenant_id=tenant_a.pk).count()
    changes = [row for row in rows if row["kind"] == "change"]
    assert len(changes) == expected_changes
    m2m = [json.loads(row["changes"]) for row in changes if '"m2m"' in row["changes"]]
    assert {entry["studies"]["operation"] for entry in m2m} >= {"add", "delete"}
    assert all(entry["studies"]["type"] == "m2m" for entry in m2m)
    exports = [row for row in changes if row["model"] == "studies.export"]
    assert {row["action"] for row in exports} == {"C", "U", "D"}
    for model in tracked_tenant_models():
        label = model._meta.label_lower
        assert {row["action"] for row in changes if row["model"] == label} >= {"C", "U", "D"}, label


def test_field_changes_of_a_request_are_folded_under_its_event(client_for, tenant_a, compliance_a, radiologist_a):
    study = study_make(tenant_a)
    with tenant_scope(tenant_a), set_actor(radiologist_a), audit_context(request_id="req-fold-0001"):
        export = Export.objects.create(tenant=tenant_a, owner=radiologist_a)
        export.studies.set([study])
        audit_event_record(event=EventType.STUDY_EXPORTED, actor=radiologist_a, target=export)
    with tenant_scope(tenant_a), audit_context(request_id="task-0002"):
        study.description = "Chest CT, reviewed"
        study.save(update_fields=["description", "updated_at"])
    blob_type = ContentType.objects.get(app_label="studies", model="blob")
    for n in range(3):
        LogEntry.objects.create(
            content_type=blob_type, object_pk=str(n), object_repr=f"blob {n}", action=LogEntry.Action.CREATE,
            changes={"size": [None, 10 + n]}, cid="task-0003", additional_data={"tenant_id": tenant_a.pk},
        )  # fmt: skip

    response = client_for(compliance_a).get(URL)

    rows = response.context["rows"]
    (exported,) = [row for row in rows if row["verb"] == EventType.STUDY_EXPORTED.spec.description]
    assert {change["model"] for change in exported["folded"]} == {"studies.export"}
    assert len(exported["folded"]) == 2  # the export's creation and its studies
    assert not [row for row in rows if row["kind"] == "change" and row["request_id"] == "req-fold-0001"]
    (bookkeeping,) = [row for row in rows if row["kind"] == "bookkeeping"]
    assert len(bookkeeping["folded"]) == 3
    assert any(row["kind"] == "change" and row["model"] == "studies.study" for row in rows)  # not bookkeeping
    html = response.content.decode()
    assert '<details class="folded">' in html
    assert "3 record changes: studies.blob" in html


def test_the_changes_api_returns_every_shape(api_client_for, tenant_a, compliance_a, full_trail):
    client = api_client_for(compliance_a, tenant_a)
    rows, url = [], "/api/v1/t/north/audit-changes/?limit=200"
    while url:
        response = client.get(url)
        assert response.status_code == 200
        rows += response.json()["results"]
        url = response.json()["next"]

    m2m = [row["changes"]["studies"] for row in rows if isinstance(row["changes"].get("studies"), dict)]
    assert {entry["operation"] for entry in m2m} >= {"add", "delete"}
    assert {row["action"] for row in rows if row["model"] == "studies.export"} == {"create", "update", "delete"}
