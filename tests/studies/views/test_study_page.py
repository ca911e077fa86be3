"""The study page (patient, study, series with thumbnails, the viewer's data) and the study's access history:
visible only to members who see the study (the same 404 as a missing study otherwise), the open recorded as
INSTANCES_ACCESSED, the history read recorded as AUDIT_LOG_USED. Also: referring physicians reach the study
list, which shows them only their studies."""

from __future__ import annotations

import json
import re
import uuid
from datetime import date

import pytest

from audit.events import EventType
from studies.dicom.synthetic import make_instance, make_study
from studies.models import Series, Study
from tenants.scoping import tenant_scope
from tests.studies.access_fixtures import referrer_make
from tests.tenants.helpers import events, last_event

PNG = b"\x89PNG\r\n\x1a\n"
DATA_BLOCK = re.compile(r'<script id="viewer-data" type="application/json">(.*?)</script>', re.S)


def url(study, tenant="north") -> str:
    return f"/t/{tenant}/studies/{study.public_id}/"


def history_url(study, tenant="north") -> str:
    return f"{url(study, tenant)}history/"


@pytest.fixture
def referrer_a(make_member, tenant_a):
    return referrer_make(make_member, tenant_a)  # John Doe: studies naming DOE^JOHN are his


@pytest.fixture
def chest(tenant_a, technologist_a, upload):
    """A two-series CT (2 images each) naming Dr John Doe as referring physician."""
    for data in make_study(
        series=2,
        instances_per_series=2,
        patient_name="DOE^JANE",
        patient_id="P-100",
        patient_birth_date=date(1961, 4, 12),
        patient_sex="F",
        study_description="Chest CT",
        accession="A100",
        referring="DOE^JOHN",
        study_date=date(2024, 3, 5),
    ):
        upload(tenant_a, technologist_a, data)
    with tenant_scope(tenant_a):
        return Study.objects.select_related("patient").get(accession_number="A100")


@pytest.fixture
def knee(tenant_a, technologist_a, upload):
    """Another patient's MR, referred by someone else."""
    upload(
        tenant_a,
        technologist_a,
        make_instance(patient_name="ROE^RICHARD", patient_id="P-200", modality="MR", accession="B200",
                      study_description="Knee MR", referring="SMITH^ANNA"),
    )  # fmt: skip
    with tenant_scope(tenant_a):
        return Study.objects.get(accession_number="B200")


def viewer_data(response) -> dict:
    found = DATA_BLOCK.search(response.content.decode())
    assert found, "no viewer data block"
    return json.loads(found.group(1))


def test_a_radiologist_sees_the_study_and_its_viewer(client_for, tenant_a, radiologist_a, chest):
    response = client_for(radiologist_a).get(url(chest))

    assert response.status_code == 200
    html = response.content.decode()
    for text in ("DOE, JANE", "P-100", "1961-04-12", ">Female<", "2024-03-05", "A100", "Chest CT", "DOE, JOHN", ">CT<"):
        assert text in html, text
    with tenant_scope(tenant_a):
        series = list(Series.objects.filter(study=chest).order_by("series_number"))
    for s in series:
        assert f"/t/north/series/{s.public_id}/thumbnail.png" in html
    assert f"/t/north/studies/{chest.public_id}/access/" in html  # radiologists may share
    assert f"/t/north/studies/{chest.public_id}/export/" in html
    assert f"/t/north/studies/{chest.public_id}/history/" in html
    assert "/static/js/viewer.js" in html
    assert "style=" not in html  # the CSP allows no inline style

    data = viewer_data(response)
    assert [s["id"] for s in data["series"]] == [str(s.public_id) for s in series]
    first = data["series"][0]["instances"]
    assert [i["number"] for i in first] == [1, 2]
    assert all(i["frames"] == 1 for i in first)
    prefix = f"/dicomweb/north/studies/{chest.study_instance_uid}/series/{series[0].series_instance_uid}/instances/"
    assert first[0]["url"].startswith(prefix)


def test_opening_the_page_is_one_instances_accessed_event(client_for, tenant_a, radiologist_a, chest):
    client_for(radiologist_a).get(url(chest))

    event = last_event(tenant_a, EventType.INSTANCES_ACCESSED)
    assert event.actor_user == radiologist_a
    assert event.event_id == "110103"
    assert event.extra["kind"] == "study page"
    assert event.extra["count"] == 4
    assert event.extra["resource"] == url(chest)
    assert {"type": "study", "id": chest.study_instance_uid} in [
        {"type": p["type"], "id": p["id"]} for p in event.participants
    ]
    assert {"type": "patient", "id": "P-100"} in [{"type": p["type"], "id": p["id"]} for p in event.participants]


def test_the_frames_the_viewer_asks_for_are_pngs_with_the_window(client_for, tenant_a, radiologist_a, chest):
    client = client_for(radiologist_a)
    instance_url = viewer_data(client.get(url(chest)))["series"][0]["instances"][0]["url"]

    default = client.get(f"{instance_url}/frames/1/rendered?accept=image%2Fpng")
    lung = client.get(f"{instance_url}/frames/1/rendered?accept=image%2Fpng&window=-600,1500,LINEAR")

    assert default.status_code == lung.status_code == 200
    assert default["Content-Type"] == lung["Content-Type"] == "image/png"
    assert default.content.startswith(PNG)
    assert lung.content.startswith(PNG)
    assert default.content != lung.content


def test_a_referring_physician_sees_a_study_naming_them_and_not_another(client_for, tenant_a, referrer_a, chest, knee):
    client = client_for(referrer_a)

    mine = client.get(url(chest))
    other = client.get(url(knee))
    missing = client.get(f"/t/north/studies/{uuid.uuid4()}/")

    assert mine.status_code == 200
    assert "DOE, JANE" in mine.content.decode()
    assert f"/studies/{chest.public_id}/access/" not in mine.content.decode()  # no tenants.share_studies
    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert client.get(history_url(knee)).status_code == 404


def test_a_referring_physician_reaches_the_study_list_with_only_their_studies(
    client_for, tenant_a, referrer_a, chest, knee
):
    client = client_for(referrer_a)

    response = client.get("/t/north/studies/")

    assert response.status_code == 200
    html = response.content.decode()
    assert url(chest) in html
    assert "Knee MR" not in html
    assert 'href="/t/north/studies/"' in html  # the nav link
    with tenant_scope(tenant_a):
        series = Series.objects.filter(study=chest).first()
    assert client.get(f"/t/north/series/{series.public_id}/thumbnail.png").status_code == 200


@pytest.mark.parametrize("persona", ["admin_a", "compliance_a", "auditor_a"])
def test_roles_without_pixels_are_refused_before_any_study_is_looked_up(client_for, tenant_a, chest, persona, request):
    user = request.getfixturevalue(persona)
    client = client_for(user)

    response = client.get(url(chest))
    missing = client.get(f"/t/north/studies/{uuid.uuid4()}/")

    assert response.status_code == missing.status_code == 403
    assert response.content == missing.content  # says nothing about whether the study exists
    assert client.get(history_url(chest)).status_code == 403
    assert "DOE" not in response.content.decode()
    denied = events(tenant_a, EventType.ACCESS_DENIED)
    assert [(e.actor_user, e.extra["where"]) for e in denied] == [
        (user, "StudyView"),
        (user, "StudyView"),
        (user, "StudyHistoryView"),
    ]
    assert events(tenant_a, EventType.INSTANCES_ACCESSED) == []


def test_another_tenants_study_is_the_same_404_as_a_made_up_one(
    client_for, tenant_a, tenant_b, radiologist_a, outsider_b, upload
):
    upload(tenant_b, outsider_b, make_instance(patient_name="SOUTH^SAM"))
    with tenant_scope(tenant_b):
        theirs = Study.objects.get()
    client = client_for(radiologist_a)

    other = client.get(url(theirs))
    made_up = client.get(f"/t/north/studies/{uuid.uuid4()}/")

    assert other.status_code == made_up.status_code == 404
    assert other.content == made_up.content
    assert client.get(history_url(theirs)).content == client.get(f"/t/north/studies/{uuid.uuid4()}/history/").content
    assert client_for(outsider_b).get(url(theirs, tenant="north")).status_code == 404
    assert events(tenant_a, EventType.INSTANCES_ACCESSED) == []


def test_the_access_history_shows_prior_reads_and_is_recorded(
    client_for, tenant_a, radiologist_a, technologist_a, chest, knee
):
    client_for(technologist_a).get(url(chest))  # a prior read, by someone else
    client_for(technologist_a).get(url(knee))  # not this study's

    response = client_for(radiologist_a).get(history_url(chest))

    assert response.status_code == 200
    html = response.content.decode()
    rows = re.findall(r'<tr id="event-(\d+)">', html)
    assert len(rows) == 1
    assert technologist_a.username in html
    assert "Images or metadata viewed" in html
    assert "study page" in html
    used = last_event(tenant_a, EventType.AUDIT_LOG_USED)
    assert used.actor_user == radiologist_a
    assert used.extra == {"study": chest.study_instance_uid, "results": 1}
    assert chest.study_instance_uid in [p["id"] for p in used.participants]


def test_the_access_history_lists_shares_newest_first(client_for, tenant_a, radiologist_a, referrer_a, knee):
    client = client_for(radiologist_a)
    client.get(url(knee))
    client.post(f"{url(knee)}access/", {"action": "member", "grantee": referrer_a.username, "days": 2})

    html = client.get(history_url(knee)).content.decode()

    assert html.index("Study shared") < html.index("Images or metadata viewed")


def test_the_page_runs_a_bounded_number_of_queries(
    client_for, tenant_a, radiologist_a, chest, django_assert_max_num_queries
):
    client = client_for(radiologist_a)
    client.get(url(chest))  # warm the session and the ORM's caches
    # 30 before the training gate (one look-up per request) and the training banner every tenant page shows
    with django_assert_max_num_queries(32):
        assert client.get(url(chest)).status_code == 200
    with django_assert_max_num_queries(32):
        assert client.get(history_url(chest)).status_code == 200
