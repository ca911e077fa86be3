"""The study list with its POST-only search, and the series thumbnails it shows."""

from __future__ import annotations

import uuid
from datetime import date

import pytest

from audit.events import EventType
from studies.dicom.synthetic import make_instance, make_study
from studies.models import Series, Study
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.tenants.helpers import events, last_event

URL = "/t/north/studies/"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def two_studies(tenant_a, technologist_a, upload):
    doe = make_study(
        series=2,
        instances_per_series=1,
        patient_name="DOE^JANE",
        patient_id="P-100",
        study_description="Chest CT",
        accession="A100",
        study_date=date(2024, 3, 5),
    )
    roe = make_instance(
        patient_name="ROE^RICHARD",
        patient_id="P-200",
        modality="MR",
        study_description="Knee MR",
        study_date=date(2023, 6, 1),
    )
    for data in [*doe, roe]:
        upload(tenant_a, technologist_a, data)
    with tenant_scope(tenant_a):
        return {s.patient.patient_id: s for s in Study.objects.select_related("patient")}


def thumbnail_url(series_id, tenant="north"):
    return f"/t/{tenant}/series/{series_id}/thumbnail.png"


def test_lists_the_studies_and_records_the_query(client_for, tenant_a, radiologist_a, two_studies):
    response = client_for(radiologist_a).get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("DOE, JANE") < html.index("ROE, RICHARD")  # newest first
    assert "P-100" in html
    assert "2024-03-05" in html
    assert "Chest CT" in html
    assert "Knee MR" in html
    assert ">MR<" in html
    doe = two_studies["P-100"]
    with tenant_scope(tenant_a):
        first_series = Series.objects.filter(study=doe).order_by("series_number").first()
    assert thumbnail_url(first_series.public_id) in html
    assert "style=" not in html
    event = last_event(tenant_a, EventType.STUDIES_QUERIED)
    assert event.actor_user == radiologist_a
    assert event.event_id == "110112"
    assert event.extra["filters"] == {}
    assert event.extra["results"] == 2
    assert set(event.extra["shown"]) == {str(s.public_id) for s in two_studies.values()}


def test_the_search_is_a_post_answered_in_place(client_for, tenant_a, technologist_a, two_studies):
    client = client_for(technologist_a)

    response = client.post(URL, {"text": "doe"})

    assert response.status_code == 200
    assert response.request["PATH_INFO"] == URL
    assert response.request.get("QUERY_STRING", "") == ""
    html = response.content.decode()
    assert "DOE, JANE" in html
    assert "ROE, RICHARD" not in html
    assert 'method="post"' in html
    assert "?text=" not in html
    assert "doe" not in response.get("Location", "")
    event = last_event(tenant_a, EventType.STUDIES_QUERIED)
    assert event.extra["filters"] == {"text": "doe"}
    assert event.extra["results"] == 1


@pytest.mark.parametrize(
    ("filters", "found"),
    [
        ({"text": "P-200"}, {"P-200"}),
        ({"text": "a100"}, {"P-100"}),
        ({"text": "chest"}, {"P-100"}),
        ({"modality": "mr"}, {"P-200"}),
        ({"modality": "CT"}, {"P-100"}),
        ({"date_from": "2024-01-01"}, {"P-100"}),
        ({"date_to": "2023-12-31"}, {"P-200"}),
        ({"date_from": "2023-01-01", "date_to": "2024-12-31"}, {"P-100", "P-200"}),
        ({"text": "nobody"}, set()),
    ],
)
def test_search_filters(client_for, tenant_a, technologist_a, two_studies, filters, found):
    response = client_for(technologist_a).post(URL, filters)

    assert response.status_code == 200
    html = response.content.decode()
    assert {pid for pid in ("P-100", "P-200") if pid in html} == found
    if not found:
        assert "No study matches this search." in html
    assert last_event(tenant_a, EventType.STUDIES_QUERIED).extra["results"] == len(found)


def test_bad_search_input_is_a_400_and_nothing_is_listed(client_for, tenant_a, technologist_a, two_studies):
    response = client_for(technologist_a).post(URL, {"date_from": "2024-02-01", "date_to": "2024-01-01"})
    weird = client_for(technologist_a).post(URL, {"modality": "C T;"})

    assert response.status_code == weird.status_code == 400
    assert "The first date is after the second." in response.content.decode()
    assert "DOE, JANE" not in response.content.decode()
    assert events(tenant_a, EventType.STUDIES_QUERIED) == []


def test_pages_are_posts_that_keep_the_filters(client_for, tenant_a, technologist_a, two_studies, monkeypatch):
    monkeypatch.setattr("studies.views.studies.STUDIES_PAGE_SIZE", 1)
    client = client_for(technologist_a)

    first = client.post(URL, {"date_from": "2020-01-01"})
    html = first.content.decode()
    assert "DOE, JANE" in html
    assert "ROE, RICHARD" not in html
    assert '<input type="hidden" name="date_from" value="2020-01-01">' in html
    assert '<input type="hidden" name="page" value="2">' in html
    assert "page=2" not in html

    second = client.post(URL, {"date_from": "2020-01-01", "page": "2"})

    assert "ROE, RICHARD" in second.content.decode()
    assert "DOE, JANE" not in second.content.decode()
    event = last_event(tenant_a, EventType.STUDIES_QUERIED)
    assert (event.extra["page"], event.extra["results"]) == (2, 2)


def test_another_tenants_studies_are_not_listed(client_for, tenant_a, tenant_b, technologist_a, outsider_b, upload):
    upload(tenant_b, outsider_b, make_instance(patient_name="SOUTH^ONLY"))

    html = client_for(technologist_a).get(URL).content.decode()

    assert "SOUTH" not in html
    assert "No studies yet." in html
    assert "SOUTH, ONLY" in client_for(outsider_b).get("/t/south/studies/").content.decode()


def test_the_list_runs_a_bounded_number_of_queries(
    client_for, tenant_a, technologist_a, two_studies, django_assert_max_num_queries
):
    client = client_for(technologist_a)
    with django_assert_max_num_queries(40):
        assert client.get(URL).status_code == 200


@pytest.mark.parametrize("persona", ["admin_a", "compliance_a"])
def test_members_without_the_permission_are_refused_and_it_is_recorded(client_for, tenant_a, persona, request):
    user = request.getfixturevalue(persona)

    response = client_for(user).get(URL)
    posted = client_for(user).post(URL, {"text": "doe"})

    assert response.status_code == posted.status_code == 403
    denied = last_event(tenant_a, EventType.ACCESS_DENIED)
    assert (denied.actor_user, denied.extra["where"]) == (user, "StudiesView")
    assert events(tenant_a, EventType.STUDIES_QUERIED) == []


def test_another_tenant_gets_a_404(client_for, tenant_a, outsider_b):
    assert client_for(outsider_b).get(URL).status_code == 404


def test_the_thumbnail_is_served_to_members_who_see_the_study(client_for, tenant_a, radiologist_a, two_studies):
    with tenant_scope(tenant_a):
        series = Series.objects.filter(study=two_studies["P-100"]).first()

    response = client_for(radiologist_a).get(thumbnail_url(series.public_id))

    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["Cache-Control"] == "no-store"
    assert response.content.startswith(PNG)


def test_another_tenants_thumbnail_is_the_same_404_as_a_missing_one(
    client_for, tenant_a, tenant_b, radiologist_a, outsider_b, upload
):
    upload(tenant_b, outsider_b, make_instance())
    with tenant_scope(tenant_b):
        theirs = Series.objects.get()
    client = client_for(radiologist_a)

    other = client.get(thumbnail_url(theirs.public_id))
    missing = client.get(thumbnail_url(uuid.uuid4()))

    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert client_for(outsider_b).get(thumbnail_url(theirs.public_id, tenant="south")).status_code == 200


def test_a_member_without_view_studies_gets_no_thumbnail(client_for, tenant_a, admin_a, two_studies):
    with tenant_scope(tenant_a):
        series = Series.objects.first()

    response = client_for(admin_a).get(thumbnail_url(series.public_id))

    assert response.status_code == 403
    assert last_event(tenant_a, EventType.ACCESS_DENIED).extra["where"] == "SeriesThumbnailView"


def test_a_referrers_empty_list_says_why_it_is_empty(client_for, tenant_a, make_member, two_studies):
    """Neither study names them and nothing is shared with them: the page says what they would see."""
    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-ref")

    html = client_for(referrer).get(URL).content.decode()

    assert 'id="no-studies"' in html
    assert "name you as their referring physician" in html
    assert "shares with you" in html
    assert "Upload some" not in html


def test_an_empty_tenants_list_offers_the_upload(client_for, tenant_a, technologist_a):
    html = client_for(technologist_a).get(URL).content.decode()

    assert "No studies yet." in html
    assert "referring physician" not in html
    assert 'href="/t/north/upload/"' in html


def test_the_list_links_the_search_export(client_for, tenant_a, radiologist_a, two_studies):
    html = client_for(radiologist_a).get(URL).content.decode()

    assert 'id="export-search-link" href="/t/north/exports/search/"' in html
    assert client_for(radiologist_a).get("/t/north/exports/search/").status_code == 200
