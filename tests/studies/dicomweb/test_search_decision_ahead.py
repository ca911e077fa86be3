"""A DICOMweb search's permission decision read with its bearer token (docs/BENCHMARKS.md, "h1 branch, session 11"):
once this process has seen a token, the gates' and the tenant permissions' statements of the search's decision are
sent with the token's own statement, in its round trip, read afresh for that request; the decision is still taken
by tenants.access on them, a lapsed training or a changed role counts at the very next request, and the answers are
those of the statements run one by one. A WADO-RS retrieval sends its rows statement in that round trip too (below).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studies.models import Study
from tenants import access
from tenants.models import Role
from tenants.scoping import tenant_scope
from tenants.services import api_token_revoke, membership_change_role
from tests.studies.dicomweb.reading import JSON, some_studies, value
from tests.training.helpers import adopt, record, require, today

pytestmark = pytest.mark.django_db(transaction=True)

PATIENT_ID = "00100020"


@pytest.fixture
def north(tenant_a):
    return some_studies(tenant_a)


@pytest.fixture
def trained(tenant_a, compliance_a, radiologist_a):
    """Tenant A requires HIPAA Security Awareness of radiologists (blocking), and radiologist A holds a current
    completion of it."""
    course = adopt(tenant_a, compliance_a)
    require(tenant_a, compliance_a, course)
    return record(tenant_a, compliance_a, radiologist_a, course, expires_on=today() + timedelta(days=300))


def _round_trips(client: Any, path: str) -> tuple[Any, list[str]]:
    sent: list[str] = []

    def counted(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(counted):
        response = client.get(path, HTTP_ACCEPT=JSON)
    return response, sent


def _patients(response: Any) -> set[str]:
    if response.status_code == 204:
        return set()
    assert response.status_code == 200, response.content
    return {value(item, PATIENT_ID) for item in response.json()}


def test_a_search_sends_its_decision_with_its_token_and_answers_as_before(
    api_client_for, radiologist_a, tenant_a, north, trained
):
    client = api_client_for(radiologist_a, tenant_a)
    first, _ = _round_trips(client, "/dicomweb/north/studies?PatientName=SM*")  # the statements prepared
    response, sent = _round_trips(client, "/dicomweb/north/studies?PatientName=SM*")
    assert _patients(response) == _patients(first) == {"P-SMITH", "P-SMYTH"}
    # The token's statement, the training gate's and the permissions', one string; then the search, then the
    # Query event: three round trips (four before).
    assert len(sent) == 3, sent
    assert sent[0].count("EXECUTE ") == 3
    with CaptureQueriesContext(connection) as queries:
        client.get("/dicomweb/north/studies?PatientName=SM*", HTTP_ACCEPT=JSON)
    shown = queries.captured_queries[0]["sql"]  # logged as written, each statement with its values
    for table in ('"tenants_apitoken"', '"training_completion"', '"guardian_groupobjectpermission"'):
        assert table in shown
    assert "EXECUTE" not in shown


def test_a_lapsed_training_refuses_the_very_next_search(api_client_for, radiologist_a, tenant_a, north, trained):
    client = api_client_for(radiologist_a, tenant_a)
    for _ in range(3):
        assert client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 200
    from training.models import Completion

    with tenant_scope(tenant_a):
        Completion.objects.filter(pk=trained.pk).update(expires_on=today() - timedelta(days=1))
    response, sent = _round_trips(client, "/dicomweb/north/studies")
    assert response.status_code == 403
    assert response.json()["code"] == "training_expired"
    assert sent[0].count("EXECUTE ") == 3  # refused on the answers read with the token
    assert not any("studies_study" in sql for sql in sent)  # nothing of the studies read


def test_a_changed_role_counts_at_the_very_next_search(
    api_client_for, admin_a, radiologist_a, tenant_a, north, trained
):
    client = api_client_for(radiologist_a, tenant_a)
    for _ in range(3):
        assert _patients(client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON)) == {"P-SMITH", "P-SMYTH", "P-JONES"}
    with tenant_scope(tenant_a):
        membership = access.membership_current_get(user=radiologist_a, tenant=tenant_a)
        membership_change_role(actor=admin_a, membership=membership, role=Role.REFERRING_PHYSICIAN)
    response, sent = _round_trips(client, "/dicomweb/north/studies")
    assert sent[0].count("EXECUTE ") == 3
    # What a token this process has never seen gets, its decision read on its own: only the studies that name the
    # person or are shared with them, not every study.
    fresh = api_client_for(radiologist_a, tenant_a).get("/dicomweb/north/studies", HTTP_ACCEPT=JSON)
    assert _patients(response) == _patients(fresh) != {"P-SMITH", "P-SMYTH", "P-JONES"}


def test_a_revoked_token_is_refused_though_its_owners_are_known(
    api_client_for, radiologist_a, tenant_a, north, trained
):
    client = api_client_for(radiologist_a, tenant_a)
    for _ in range(2):
        assert client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 200
    from tenants.models import ApiToken

    with tenant_scope(tenant_a):
        token = ApiToken.objects.get(user=radiologist_a)
        api_token_revoke(actor=radiologist_a, token=token)
    assert client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).status_code == 401


def _sees_every_study(user: Any) -> bool:
    everything = Study.objects.all()
    return access.visible(user, "studies.view_study", everything) is everything


def test_answers_read_ahead_serve_one_decision_of_their_actor_and_tenant(tenant_a, tenant_b, radiologist_a, trained):
    """The answers handed to `decision_read_ahead` are decided on by the next decision of that actor object in that
    tenant, once; another tenant's decision, and the one after, read afresh."""
    with tenant_scope(tenant_a):
        statements = access.decision_statements_ahead(user=radiologist_a, tenant=tenant_a)
        assert statements is not None
        assert len(statements) == 2  # the training gate's, the permissions'
        assert _sees_every_study(radiologist_a)
        no_permissions: list[list[tuple[Any, ...]]] = [[], []]  # no blocking requirement, no tenant permission
        access.decision_read_ahead(actor=radiologist_a, tenant_id=tenant_a.pk, rows=no_permissions)
        assert not _sees_every_study(radiologist_a)  # decided on the answers given
        assert _sees_every_study(radiologist_a)  # the next decision read afresh
        access.decision_read_ahead(actor=radiologist_a, tenant_id=tenant_b.pk, rows=no_permissions)
        assert _sees_every_study(radiologist_a)  # another tenant's answers: not these


def test_every_row_is_told_without_building_the_queryset_and_the_rest_as_visible_gives_it(
    tenant_a, make_member, radiologist_a, admin_a, north
):
    """`visible_unless_every`: None, the rows' queryset never built, when the decision shows every row (the search
    then reads them by its compiled statement); otherwise the same rows as `visible` gives; no scope, no rows."""
    from tenants.scoping import TenantScopeError

    built: list[int] = []

    def studies():
        built.append(1)
        return Study.objects.all()

    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-referrer")
    with tenant_scope(tenant_a):
        assert access.visible_unless_every(radiologist_a, "studies.view_study", studies) is None
        assert built == []
        for person in (referrer, admin_a):
            shown = access.visible_unless_every(person, "studies.view_study", studies)
            assert shown is not None
            expected = access.visible(person, "studies.view_study", Study.objects.all())
            assert sorted(shown.values_list("pk", flat=True)) == sorted(expected.values_list("pk", flat=True))
        assert built == [1, 1]
    with pytest.raises(TenantScopeError):
        access.visible_unless_every(radiologist_a, "studies.view_study", studies)


def test_a_retrieval_sends_its_decision_with_its_token_and_a_lapsed_training_refuses_the_next(
    api_client_for, radiologist_a, tenant_a, north, trained
):
    """WADO-RS reads take the same path: the series' bytes as before, one round trip fewer before them; the
    answers are read afresh, so a training that lapses refuses the very next retrieval, nothing of it sent."""
    from training.models import Completion

    path = _series_path(tenant_a, north["smith"])
    client = api_client_for(radiologist_a, tenant_a)

    def retrieve() -> tuple[Any, bytes, list[str]]:
        return _retrieve(client, path)

    first, first_body, _ = retrieve()
    assert first.status_code == 200
    response, body, sent = retrieve()
    assert response.status_code == 200
    assert body.count(b"DICM") == first_body.count(b"DICM") == 1
    # The token's, the training gate's and the permissions' statements, and the retrieval's rows statement
    # (the tests below).
    assert sent[0].count("EXECUTE ") == 4

    with tenant_scope(tenant_a):
        Completion.objects.filter(pk=trained.pk).update(expires_on=today() - timedelta(days=1))
    refused, refused_body, refused_sent = retrieve()
    assert refused.status_code == 403
    assert b"DICM" not in refused_body
    assert refused_sent[0].count("EXECUTE ") == 4  # its rows read with the token and dropped: refused before them


# A retrieval's rows statement sent with its token's and its decision's (docs/BENCHMARKS.md, "h2 branch, session 12"):
# once this process has seen the token and compiled the resource's shape, the rows are read in the token's round trip,
# in the same snapshot as the decision's answers, and used only when that decision is every study and they are the
# answer of exactly the statement the retrieval would send.

DICOM = 'multipart/related; type="application/dicom"'


def _series_path(tenant, study) -> str:
    with tenant_scope(tenant):
        series = study.series.get()
    return f"/dicomweb/north/studies/{study.study_instance_uid}/series/{series.series_instance_uid}"


def _retrieve(client: Any, path: str, shown: list[str] | None = None) -> tuple[Any, bytes, list[str]]:
    """The answer, its body, and each round trip's text sent to the database meanwhile (`shown`: each as query
    logs show it, a prepared statement as its text with its values)."""
    sent: list[str] = []

    def counted(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    with CaptureQueriesContext(connection) as queries, connection.execute_wrapper(counted):
        response = client.get(path, HTTP_ACCEPT=DICOM)
        body = b"".join(response.streaming_content) if response.status_code == 200 else response.content
    if shown is not None:
        shown.extend(query["sql"] for query in queries.captured_queries)
    return response, body, sent


def test_a_retrieval_reads_its_rows_with_its_token_and_then_writes_only_its_event(
    api_client_for, radiologist_a, tenant_a, north, trained
):
    path = _series_path(tenant_a, north["smith"])
    client = api_client_for(radiologist_a, tenant_a)
    first, first_body, _ = _retrieve(client, path)  # the token's owners learnt, the shape compiled and prepared
    assert first.status_code == 200
    shown: list[str] = []
    response, body, sent = _retrieve(client, path, shown)
    assert response.status_code == 200
    assert body.count(b"DICM") == first_body.count(b"DICM") == 1
    assert len(body) == len(first_body)
    # The token's, the training gate's, the permissions' and the rows' statements in one string, then the event:
    # two round trips before the first byte (three before).
    assert len(sent) == 2, shown
    assert sent[0].count("EXECUTE ") == 4
    assert '"studies_instance"' in shown[0]
    assert '"audit_auditchain"' in shown[1]


def test_rows_read_ahead_are_not_used_when_the_decision_is_not_every_study(
    api_client_for, admin_a, radiologist_a, tenant_a, north, trained
):
    """A role changed between two retrievals counts at the very next one: its rows are read with the token as before,
    but the decision (now not every study) does not use them; the answer is what a token never seen gets."""
    path = _series_path(tenant_a, north["smith"])
    client = api_client_for(radiologist_a, tenant_a)
    for _ in range(2):
        assert _retrieve(client, path)[0].status_code == 200
    with tenant_scope(tenant_a):
        membership = access.membership_current_get(user=radiologist_a, tenant=tenant_a)
        membership_change_role(actor=admin_a, membership=membership, role=Role.REFERRING_PHYSICIAN)
    response, body, sent = _retrieve(client, path)
    assert sent[0].count("EXECUTE ") == 4  # the rows were read ahead ...
    fresh, fresh_body, _ = _retrieve(api_client_for(radiologist_a, tenant_a), path)
    assert (response.status_code, body.count(b"DICM")) == (fresh.status_code, fresh_body.count(b"DICM"))
    assert response.status_code == 404  # ... and not used: smith's study does not name this referring physician
    assert b"DICM" not in body


def test_rows_read_ahead_serve_only_the_statement_and_tenant_they_were_read_for(
    tenant_a, tenant_b, radiologist_a, north
):
    from studies.selectors.storage import RowsReadAhead, retrieval_rows, retrieval_statement_ahead

    study = north["smith"]
    with tenant_scope(tenant_a):
        series = study.series.get()
        uids = {"study_uid": study.study_instance_uid, "series_uid": series.series_instance_uid}
        _, rows = retrieval_rows(actor=radiologist_a, **uids)  # the shape compiled
        statement = retrieval_statement_ahead(tenant_id=tenant_a.pk, **uids)
        assert statement is not None
        sql, params = statement
        assert tenant_a.pk in params
        assert study.study_instance_uid in params
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            read = cursor.fetchall()
        forged = [(*read[0][:6], "1.2.3.4", *read[0][7:])]  # rows that say something else, to see which are used

        def retrieved(ahead: Any) -> str:
            return retrieval_rows(actor=radiologist_a, **uids, ahead=ahead)[1][0].sop_instance_uid

        assert retrieved(RowsReadAhead(tenant_a.pk, (sql, params), forged)) == "1.2.3.4"  # used when they match
        assert retrieved(RowsReadAhead(tenant_b.pk, (sql, params), forged)) == rows[0].sop_instance_uid
        other = ["9.9.9" if value == series.series_instance_uid else value for value in params]
        assert retrieved(RowsReadAhead(tenant_a.pk, (sql, other), forged)) == rows[0].sop_instance_uid
        assert retrieved(RowsReadAhead(tenant_a.pk, (sql + " ", params), forged)) == rows[0].sop_instance_uid
        with pytest.raises(access.NotVisible):  # no rows read ahead for exactly this statement: nothing to send
            retrieval_rows(actor=radiologist_a, **uids, ahead=RowsReadAhead(tenant_a.pk, (sql, params), []))
        # No statement ahead for a shape not compiled yet, nor for a UID that is not text.
        assert retrieval_statement_ahead(tenant_id=tenant_a.pk, **uids, sop_uid="1.2.3") is None
        assert retrieval_statement_ahead(tenant_id=tenant_a.pk, study_uid=None) is None


def test_a_token_used_on_another_tenants_url_reads_no_rows_ahead(
    api_client_for, radiologist_a, tenant_a, tenant_b, north, trained
):
    path = _series_path(tenant_a, north["smith"])
    client = api_client_for(radiologist_a, tenant_a)
    for _ in range(2):
        assert _retrieve(client, path)[0].status_code == 200
    other = path.replace("/dicomweb/north/", f"/dicomweb/{tenant_b.slug}/")
    response, _, sent = _retrieve(client, other)
    assert response.status_code == 404
    assert sent[0].count("EXECUTE ") == 3  # the token's and its decision's, no rows
