"""QIDO-RS: matching, paging, includefield, visibility, audit, and no query string in logs."""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import date

import pytest

from audit.events import EventType
from portal.log_filters import StripQueryStringFilter
from tenants.models import Role
from tests.studies.dicomweb.reading import JSON, events, ingest, some_studies, value

pytestmark = pytest.mark.django_db(transaction=True)

STUDY_UID, PATIENT_ID, PATIENT_NAME, ACCESSION = "0020000D", "00100020", "00100010", "00080050"


@pytest.fixture
def north(tenant_a):
    return some_studies(tenant_a)


@pytest.fixture
def qido(api_client_for, radiologist_a, tenant_a):
    client = api_client_for(radiologist_a, tenant_a)

    def search(path: str = "studies", **params):
        return client.get(f"/dicomweb/north/{path}", params, HTTP_ACCEPT=JSON)

    return search


def patients(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {value(item, PATIENT_ID) for item in response.json()}


def test_studies_search_returns_the_standard_attributes(qido, north):
    response = qido()
    assert response.status_code == 200
    assert response["Content-Type"] == JSON
    assert len(response.json()) == 3
    item = next(i for i in response.json() if value(i, PATIENT_ID) == "P-SMITH")
    assert value(item, PATIENT_NAME) == {"Alphabetic": "SMITH^JOHN"}
    assert value(item, STUDY_UID) == north["smith"].study_instance_uid
    assert value(item, "00080020") == "20240105"
    assert item["00080061"]["Value"] == ["CT"]
    assert value(item, "00201208") == 1
    assert value(item, "00081190").endswith(f"/dicomweb/north/studies/{north['smith'].study_instance_uid}")
    assert item["00200010"] == {"vr": "SH"}  # Study ID: type 2, not kept, returned empty


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientID": "P-SMITH"}, {"P-SMITH"}),
        ({"00100020": "P-JONES"}, {"P-JONES"}),
        ({"PatientName": "sm*"}, {"P-SMITH", "P-SMYTH"}),
        ({"PatientName": "SM?TH*"}, {"P-SMITH", "P-SMYTH"}),
        ({"PatientName": "smith^john"}, {"P-SMITH"}),
        ({"PatientName": "SMI"}, set()),
        ({"StudyDate": "20240105"}, {"P-SMITH"}),
        ({"StudyDate": "20240101-20240131"}, {"P-SMITH", "P-SMYTH"}),
        ({"StudyDate": "20240110-"}, {"P-SMYTH", "P-JONES"}),
        ({"StudyDate": "-20240110"}, {"P-SMITH"}),
        ({"AccessionNumber": "A200"}, {"P-SMYTH"}),
        ({"AccessionNumber": "A*"}, {"P-SMITH", "P-SMYTH", "P-JONES"}),
        ({"ModalitiesInStudy": "MR"}, {"P-SMYTH"}),
        ({"ModalitiesInStudy": "CT"}, {"P-SMITH", "P-JONES"}),
        ({"ReferringPhysicianName": "ROE*"}, {"P-SMYTH", "P-JONES"}),
        ({"PatientID": "P-SMITH", "ModalitiesInStudy": "MR"}, set()),
    ],
)
def test_matching(qido, north, params, expected):
    response = qido(**params)
    if not expected:
        assert response.status_code == 204
        assert response.content == b""
    else:
        assert patients(response) == expected


def test_study_uid_lists(qido, north):
    a, b = north["smith"].study_instance_uid, north["jones"].study_instance_uid
    assert patients(qido(StudyInstanceUID=f"{a},{b}")) == {"P-SMITH", "P-JONES"}
    assert patients(qido(StudyInstanceUID=f"{a}\\{b}")) == {"P-SMITH", "P-JONES"}


def test_limit_offset_and_server_maximum(qido, north, settings):
    first = qido(limit=2)
    second = qido(limit=2, offset=2)
    assert len(first.json()) == 2
    assert len(second.json()) == 1
    assert patients(first) | patients(second) == {"P-SMITH", "P-SMYTH", "P-JONES"}
    assert qido(offset=3).status_code == 204
    settings.DICOMWEB_QIDO_MAX_RESULTS = 2
    capped = qido()
    assert len(capped.json()) == 2
    assert "offset=2" in capped["Warning"]
    assert "Warning" not in qido(limit=1)


def test_includefield(qido, north):
    plain = qido(PatientID="P-SMITH").json()[0]
    assert "00081030" not in plain
    assert "00100021" not in plain
    named = qido(PatientID="P-SMITH", includefield="StudyDescription,00100021").json()[0]
    assert value(named, "00081030") == "Synthetic study"
    assert "00100021" in named
    everything = qido(PatientID="P-SMITH", includefield="all").json()[0]
    assert "00081030" in everything
    assert "00100021" in everything
    lower = qido(PatientID="P-SMITH", includefield="Modality").json()[0]  # series level: ignored (10.6.3.3)
    assert "00080060" not in lower


def test_fuzzymatching_is_literal_with_a_warning(qido, north):
    response = qido(PatientName="SMITH^JOHN", fuzzymatching="true")
    assert patients(response) == {"P-SMITH"}
    assert response["Warning"].startswith("299 ")
    assert "fuzzymatching parameter is not supported" in response["Warning"]
    assert "Warning" not in qido(fuzzymatching="false")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"Patientname2": "x"}, "Patientname2"),
        ({"PatientWeight": "70"}, "PatientWeight"),
        ({"StudyDate": "2024-01-01"}, "query"),
        ({"StudyDate": "20240231"}, "query"),
        ({"limit": "-1"}, "limit"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        ({"Modality": "CT"}, "Modality"),  # a series attribute in a study search
    ],
)
def test_bad_queries_are_400_with_the_reason(qido, north, params, field):
    response = qido(**params)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"]


def test_xml_is_not_acceptable(api_client_for, radiologist_a, tenant_a, north):
    client = api_client_for(radiologist_a, tenant_a)
    assert client.get("/dicomweb/north/studies", HTTP_ACCEPT="application/dicom+xml").status_code == 406
    assert client.get("/dicomweb/north/studies", HTTP_ACCEPT="application/json").status_code == 200


def test_series_and_instance_levels(qido, north, tenant_a):
    smith = north["smith"].study_instance_uid
    series = qido(f"studies/{smith}/series")
    assert series.status_code == 200
    (item,) = series.json()
    series_uid = value(item, "0020000E")
    assert value(item, "00080060") == "CT"
    assert value(item, "00081190").endswith(f"/studies/{smith}/series/{series_uid}")
    assert {value(i, STUDY_UID) for i in qido("series", Modality="CT").json()} == {
        smith,
        north["jones"].study_instance_uid,
    }
    assert value(qido("series", Modality="MR").json()[0], PATIENT_ID) == "P-SMYTH"  # study attributes too
    (instance,) = qido(f"studies/{smith}/series/{series_uid}/instances").json()
    assert value(instance, "00280010") == 64
    assert value(instance, "0020000E") == series_uid
    assert len(qido(f"studies/{smith}/instances").json()) == 1
    assert len(qido("instances").json()) == 3
    assert len(qido("instances", PatientID="P-JONES").json()) == 1
    assert qido(f"studies/{smith}/series", Modality="MR").status_code == 204


def test_only_visible_studies_are_found(api_client_for, make_member, tenant_a, tenant_b, outsider_b, north):
    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-doe")
    referrer.first_name, referrer.last_name = "John", "Doe"
    referrer.save(update_fields=["first_name", "last_name"])
    response = api_client_for(referrer, tenant_a).get("/dicomweb/north/studies", HTTP_ACCEPT=JSON)
    assert patients(response) == {"P-SMITH"}  # the only study naming them
    response = api_client_for(referrer, tenant_a).get("/dicomweb/north/instances", HTTP_ACCEPT=JSON)
    assert patients(response) == {"P-SMITH"}
    ingest(tenant_b, patient_id="P-SOUTH")
    south = api_client_for(outsider_b, tenant_b).get("/dicomweb/south/studies", HTTP_ACCEPT=JSON)
    assert patients(south) == {"P-SOUTH"}
    smith = north["smith"].study_instance_uid
    assert api_client_for(outsider_b, tenant_b).get(f"/dicomweb/south/studies/{smith}/series").status_code == 204
    assert api_client_for(outsider_b, tenant_b).get("/dicomweb/north/studies").status_code == 404


@pytest.mark.parametrize("persona", ["admin_a", "compliance_a", "auditor_a"])
def test_admins_compliance_and_auditors_find_nothing(request, api_client_for, tenant_a, north, persona):
    user = request.getfixturevalue(persona)
    assert api_client_for(user, tenant_a).get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 204


def test_every_search_is_one_query_event_with_the_query_and_count(qido, north, tenant_a, radiologist_a):
    before = len(events(tenant_a, EventType.STUDIES_QUERIED))
    response = qido(PatientName="SM*", limit=5)
    assert response.status_code == 200
    rows = events(tenant_a, EventType.STUDIES_QUERIED)
    assert len(rows) == before + 1
    event = rows[-1]
    assert event.actor_user == radiologist_a
    assert event.actor_role == Role.RADIOLOGIST  # the role of the membership the request was let in by
    assert event.event_id == "110112"
    query = next(p for p in event.participants if p["type"] == "query")
    assert base64.b64decode(query["query"]).decode() == response.wsgi_request.META["QUERY_STRING"]
    assert "PatientName=SM%2A" in base64.b64decode(query["query"]).decode()
    assert query["detail"] == {"results": 2}
    assert event.extra["results"] == 2
    assert {p["id"] for p in event.participants if p["type"] == "patient"} == {"P-SMITH", "P-SMYTH"}
    qido(PatientName="NOBODY")
    empty = events(tenant_a, EventType.STUDIES_QUERIED)[-1]
    assert empty.extra["results"] == 0


def test_a_search_of_a_parent_finds_it_only_in_the_callers_tenant(qido, north, tenant_a, tenant_b):
    """The joined parents carry the tenant condition too (so their (tenant, UID) indexes serve the search): the
    same patient ID and Study Instance UID in another tenant never add results nor hide them."""
    from tests.studies.dicomweb.reading import ingest

    smith = north["smith"]
    series_before = qido(f"studies/{smith.study_instance_uid}/series").json()
    assert len(series_before) == 1
    ingest(tenant_b, patient_id="P-SMITH", patient_name="OTHER^TENANT", study_uid=smith.study_instance_uid)
    ingest(tenant_b, patient_id="P-SMITH", patient_name="OTHER^TENANT", study_uid=smith.study_instance_uid)
    found = qido(PatientID="P-SMITH").json()
    assert [value(item, STUDY_UID) for item in found] == [smith.study_instance_uid]
    assert value(found[0], PATIENT_NAME) == {"Alphabetic": "SMITH^JOHN"}
    assert qido(f"studies/{smith.study_instance_uid}/series").json() == series_before


def test_a_search_with_a_token_reads_its_tenant_and_membership_once(qido, north, api_client_for, radiologist_a,
                                                                    tenant_a, tenant_b):  # fmt: skip
    """The tenant and the membership come with the token, in its statement, and the Query event takes the
    request's membership role: neither is read again. A token of north naming south's URL is still a 404."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert qido(PatientID="P-SMITH").status_code == 200
    statements = [q["sql"] for q in queries.captured_queries]
    assert not [s for s in statements if s.startswith('SELECT "tenants_tenant"') and '"slug" =' in s]
    membership_reads = [s for s in statements if re.match(r'\s*SELECT [^()]* FROM "tenants_membership"', s)]
    assert membership_reads == []  # no statement of its own (the training gate's subquery is not one) ...
    [token_read] = [s for s in statements if "digest" in s and '"tenants_apitoken"' in s and s.startswith("SELECT")]
    assert token_read.count('JOIN LATERAL (SELECT * FROM "tenants_membership"') == 1  # ... it comes with the token
    assert len(events(tenant_a, EventType.STUDIES_QUERIED)) >= 1
    client = api_client_for(radiologist_a, tenant_a)
    assert client.get("/dicomweb/south/studies", HTTP_ACCEPT=JSON).status_code == 404


def test_the_query_string_stays_out_of_logs(caplog):
    record = logging.LogRecord(
        "django.server", logging.INFO, __file__, 1, '"%s" %s %s',
        ("GET /dicomweb/north/studies?PatientName=SMITH%5EJOHN HTTP/1.1", "200", "512"), None,
    )  # fmt: skip
    StripQueryStringFilter().filter(record)
    assert "SMITH" not in record.getMessage()
    assert "/dicomweb/north/studies?" in record.getMessage()
    from django.conf import settings

    handler = settings.LOGGING["handlers"]["console"]
    assert "strip_query" in handler["filters"]


def _reference_element(attribute, value) -> dict:
    """A DICOM JSON element as PS3.18 F.2 writes each VR, from the catalogue's `attribute_value` (what C-FIND
    answers with too): the answer's elements must be exactly these."""
    if value is None or value == "":
        return {"vr": attribute.vr}
    if attribute.vr == "PN":
        return {"vr": "PN", "Value": [{"Alphabetic": str(value)}]}
    if attribute.vr == "DA":
        return {"vr": "DA", "Value": [value.strftime("%Y%m%d")]}
    if attribute.vr == "TM":
        return {"vr": "TM", "Value": [value.strftime("%H%M%S")]}
    if attribute.vr in ("IS", "US"):
        return {"vr": attribute.vr, "Value": [int(value)]}
    if attribute.keyword == "ModalitiesInStudy":
        return {"vr": "CS", "Value": [m for m in str(value).split("\\") if m]}
    return {"vr": attribute.vr, "Value": [str(value)]}


@pytest.mark.parametrize("includefield", ["all", None])
@pytest.mark.parametrize("path", ["studies", "series", "instances"])
def test_every_result_holds_each_attribute_as_the_catalogue_reads_it_in_tag_order(
    qido, north, tenant_a, path, includefield
):
    """Each attribute (the default ones, or every one of the level and above), as `attribute_value` reads it off
    the row, an empty value as a bare VR, the tags in ascending order, and the result's WADO-RS URL: the writer
    reads the rows its own way, and must answer exactly this. A study with no date, accession, referring
    physician, description, sex or birth date included."""
    from studies.models import Instance, Series, Study
    from studies.selectors import (
        BY_TAG,
        DEFAULT_KEYWORDS,
        INSTANCE,
        LEVELS,
        PATIENT,
        SERIES,
        STUDY,
        attribute_value,
        attributes_at_or_above,
    )
    from tenants.scoping import tenant_scope

    ingest(tenant_a, patient_id="P-BLANK", patient_name="BLANK^B", patient_birth_date=None, patient_sex="",
           accession="", referring="", study_description="", study_date=None)  # fmt: skip
    level, model, uid = {
        "studies": (STUDY, Study, "0020000D"),
        "series": (SERIES, Series, "0020000E"),
        "instances": (INSTANCE, Instance, "00080018"),
    }[path]
    response = qido(path, **({"includefield": includefield} if includefield else {}))
    assert response.status_code == 200, response.content
    items = response.json()
    assert len(items) == 4
    field = {STUDY: "study_instance_uid", SERIES: "series_instance_uid", INSTANCE: "sop_instance_uid"}[level]
    with tenant_scope(tenant_a):
        rows = {getattr(r, field): r for r in model.objects.all()}
    blank = 0
    with tenant_scope(tenant_a):
        for item in items:
            row = rows[value(item, uid)]
            expected = {
                "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
                "00080056": {"vr": "CS", "Value": ["ONLINE"]},
            }
            attributes = [BY_TAG[tag] for tag in item if tag in BY_TAG]
            if includefield == "all":
                assert attributes == sorted(attributes_at_or_above(level), key=lambda a: a.tag)
            else:
                levels = {STUDY: (PATIENT, STUDY), SERIES: (PATIENT, STUDY, SERIES)}.get(level, LEVELS)
                assert {a.keyword for a in attributes} == {k for lv in levels for k in DEFAULT_KEYWORDS[lv]}
            for attribute in attributes:
                expected[attribute.tag] = _reference_element(attribute, attribute_value(row, attribute, level=level))
            study = row if level is STUDY else row.study if level is SERIES else row.series.study
            series = row if level is SERIES else row.series if level is INSTANCE else None
            url = value(item, "00081190")
            assert url.startswith("http://testserver/dicomweb/north/studies/")
            assert url.endswith(
                study.study_instance_uid
                if level is STUDY
                else f"{study.study_instance_uid}/series/{row.series_instance_uid}"
                if level is SERIES
                else f"{study.study_instance_uid}/series/{series.series_instance_uid}/instances/{row.sop_instance_uid}"
            )
            expected["00081190"] = {"vr": "UR", "Value": [url]}
            assert item == expected
            assert list(item) == sorted(item)
            if value(item, "00100020") == "P-BLANK":
                blank += 1
                assert item["00080020"] == {"vr": "DA"}
                assert item["00080050"] == {"vr": "SH"}
    assert blank == 1


@pytest.mark.parametrize("path", ["studies", "series"])
def test_a_search_reads_no_column_of_its_rows_again(qido, north, path):
    """The columns a study- or series-level search leaves out of its SELECT (timestamps, public ids) are never
    read back one row at a time: three results cost the statements of one, every attribute returned."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    qido(path)  # the first request of a session reads what later ones find cached
    with CaptureQueriesContext(connection) as one:
        assert len(qido(path, includefield="all", limit=1).json()) == 1
    with CaptureQueriesContext(connection) as three:
        assert len(qido(path, includefield="all").json()) == 3
    assert len(three) == len(one)
    table = {"studies": "studies_study", "series": "studies_series"}[path]
    (search,) = [q["sql"] for q in three.captured_queries if f'FROM "{table}"' in q["sql"] and "ORDER BY" in q["sql"]]
    assert '"created_at"' not in search.split(" FROM ")[0]


def test_the_query_event_lists_the_query_then_each_patient_and_study_once(qido, north, tenant_a):
    """PS3.15 A.5: the query, then each patient (ID and name) before its first study (UID and accession), each once;
    another study of a patient already listed adds only the study."""
    second = ingest(tenant_a, patient_id="P-SMITH", patient_name="SMITH^JOHN", accession="A101",
                    study_date=date(2024, 1, 6), modality="CT")  # fmt: skip
    response = qido(PatientName="SM*")
    assert len(response.json()) == 3
    event = events(tenant_a, EventType.STUDIES_QUERIED)[-1]
    query = base64.b64encode(response.wsgi_request.META["QUERY_STRING"].encode()).decode()
    assert event.participants == [
        {"type": "query", "id": "/dicomweb/north/studies", "query": query, "detail": {"results": 3}},
        {"type": "patient", "id": "P-SMYTH", "name": "Smyth^Jane"},
        {"type": "study", "id": north["smyth"].study_instance_uid, "detail": {"accession": "A200"}},
        {"type": "patient", "id": "P-SMITH", "name": "SMITH^JOHN"},
        {"type": "study", "id": second.study_instance_uid, "detail": {"accession": "A101"}},
        {"type": "study", "id": north["smith"].study_instance_uid, "detail": {"accession": "A100"}},
    ]


@pytest.mark.parametrize("path", ["studies", "series", "instances"])
def test_a_search_answers_from_columns_without_a_model_instance_per_result(qido, north, path):
    """The search's rows are read as columns (`dicom_search_values`): no Patient, Study, Series or Instance is
    built for a result (a year of studies made 2,000 of them: docs/BENCHMARKS.md, "h4 branch, session 3"), and
    the answer and its Query event are still whole (the other tests here compare them attribute by attribute)."""
    from django.db.models.signals import post_init

    from studies.models import Instance, Patient, Series, Study

    built: list[str] = []

    def counted(sender, **kwargs):
        built.append(sender.__name__)

    for model in (Patient, Study, Series, Instance):
        post_init.connect(counted, sender=model, weak=False)
    try:
        response = qido(path, includefield="all")
    finally:
        for model in (Patient, Study, Series, Instance):
            post_init.disconnect(counted, sender=model)
    assert response.status_code == 200
    assert len(response.json()) == 3
    assert built == []


@pytest.mark.parametrize("path", ["studies", "series", "instances"])
def test_the_written_answer_is_the_bytes_drf_writes_for_it(qido, north, tenant_a, api_client_for, radiologist_a, path):
    """The answer is written as JSON text (`ResultWriter.text`), not serialised by DRF: it must be byte for byte
    what DRF's renderer writes for the same objects, quotes and non-ASCII letters in the values included (U+2028,
    which DRF escapes and an ingested instance here cannot hold, by the renderer itself); a client asking for it
    indented gets DRF's indented rendering of the same objects."""
    from rest_framework.renderers import JSONRenderer

    from studies.dicomweb.qido import WrittenJson, WrittenJsonRenderer

    ingest(tenant_a, patient_id='P-"Q"', patient_name='O"BRIEN^ZOË', accession="A\\900",
           study_description='Knee "left" é', study_date=date(2024, 2, 2))  # fmt: skip
    response = qido(path, includefield="all")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == JSON
    items = json.loads(response.content)
    assert len(items) == 4
    assert response.content == JSONRenderer().render(items)
    assert "ZOË".encode() in response.content
    line_separators = ["a\u2028b\u2029c"]
    assert WrittenJsonRenderer().render(WrittenJson(json.dumps(line_separators, ensure_ascii=False))) == (
        JSONRenderer().render(line_separators)
    )
    if path == "studies":
        name = next(value(i, PATIENT_NAME) for i in items if value(i, PATIENT_ID) == 'P-"Q"')
        assert name == {"Alphabetic": 'O"BRIEN^ZOË'}
    client = api_client_for(radiologist_a, tenant_a)
    indented = client.get(f"/dicomweb/north/{path}", {"includefield": "all"}, HTTP_ACCEPT=f"{JSON}; indent=2")
    assert indented.status_code == 200
    assert indented.content == JSONRenderer().render(items, f"{JSON}; indent=2")
    assert indented.content.startswith(b'[\n  {\n    "000')


def _prepared_searches(table: str) -> list[str]:
    """The connection's prepared statements that read `table`, but the thumbnails' (prepared on the same connection
    when the fixture's instances were stored): they read a series' thumbnail_id, which no search does."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s AND statement NOT LIKE %s",
            [f'%FROM "{table}"%', '%"thumbnail_id"%'],
        )
        return [statement for (statement,) in cursor.fetchall()]


def test_a_search_by_exact_values_or_index_ranges_is_prepared_and_one_by_a_leading_wildcard_is_not(qido, north):
    """A search whose keys are single values (the study of `/studies/{uid}/series`, a PatientID) is sent as a
    prepared statement of the connection (tenants.db), which PostgreSQL may plan once for every value; so is one
    whose keys are index ranges with parameter bounds (a name with a literal start, a date range, a list of values),
    run by its generic plan (studies.selectors.matching `_generic_plan_serves`); a wildcard with no literal start is
    planned for its own values every time, as before. The answers are the same either way."""
    smith = north["smith"].study_instance_uid
    for _ in range(3):
        (item,) = qido(f"studies/{smith}/series").json()
        assert value(item, STUDY_UID) == smith
        assert patients(qido(PatientID="P-SMITH")) == {"P-SMITH"}
    assert len(_prepared_searches("studies_series")) == 1  # prepared once, executed three times
    assert len(_prepared_searches("studies_study")) == 1
    assert patients(qido(PatientName="SMI*")) == {"P-SMITH"}
    assert qido(StudyDate="19000101-21001231").status_code == 200
    assert patients(qido(PatientID="P-SMITH\\P-JONES")) == {"P-SMITH", "P-JONES"}  # a list of values
    assert len(_prepared_searches("studies_study")) == 4  # each of these three prepared, once
    assert patients(qido(PatientName="*MITH*")) == {"P-SMITH"}
    assert len(_prepared_searches("studies_study")) == 4  # not this one
