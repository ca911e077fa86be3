"""The fixed part of a DICOMweb read, trimmed (docs/BENCHMARKS.md, "h1 branch, session 9"): the Accept header of
one media type picked without DRF's parsing, the WADO-RS path of a tenant's studies reversed once, and the bearer
token's rows built without asking each field for its converters on every request. Each gives what it gave before."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db.models import Field
from django.test import RequestFactory
from django.urls import clear_script_prefix, set_script_prefix
from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from studies.dicomweb import qido
from studies.dicomweb.base import DicomJsonRenderer
from studies.dicomweb.negotiation import LenientNegotiation, MediaRange, accept_list
from studies.dicomweb.qido import RetrieveUrls, WrittenDicomJsonRenderer, WrittenJsonRenderer
from tenants import selectors, services
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import JSON, ingest, value

RETRIEVE_URL = "00081190"


def _request(accept: str | None = None, query: str = "") -> Request:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    return Request(RequestFactory().get(f"/dicomweb/north/studies{query}", **headers))


RENDERER_SETS = [
    [WrittenDicomJsonRenderer(), WrittenJsonRenderer()],
    [DicomJsonRenderer(), JSONRenderer()],
    [JSONRenderer(), DicomJsonRenderer()],
]
HEADERS = [
    "application/dicom+json", "application/json", "application/dicom+xml", "image/jpeg", "*/*", "application/*",
    "application/dicom+json; q=0.5", "application/json, application/dicom+json", "APPLICATION/DICOM+JSON",
    "application/json; indent=4", " application/json", "", None,
    'multipart/related; type="application/dicom"; transfer-syntax=*', 'multipart/related; type="image/jpeg"',
    "image/jpeg, image/png", "application/dicom", "application/octet-stream", "text/html, */*;q=0.1",
    "image/jpeg, application/json", "image/jpeg, APPLICATION/JSON", "multipart/related, application/*", ",,",
    ";q=1", "image/jpeg;q=0, application/dicom+json", "application/ json", "application/dicom+json ; q=1",
]  # fmt: skip


@pytest.mark.parametrize("renderers", RENDERER_SETS)
@pytest.mark.parametrize("accept", HEADERS)
@pytest.mark.parametrize("query", ["", "?PatientID=1", "?format=json", "?accept=image/jpeg"])
def test_the_lenient_negotiation_picks_what_drf_picks(renderers, accept, query):
    """The same renderer and media type as DRF's own negotiation (or, where DRF refuses, the first renderer), for
    a search's and a retrieval's Accept headers and others."""
    request = _request(accept, query)
    picked = LenientNegotiation().select_renderer(request, renderers)
    try:
        expected = DefaultContentNegotiation().select_renderer(_request(accept, query), renderers)
    except (exceptions.NotAcceptable, exceptions.NotFound) as exc:  # a format no renderer has: a 404
        if isinstance(exc, exceptions.NotAcceptable):
            expected = (renderers[0], renderers[0].media_type)
        else:
            with pytest.raises(type(exc)):
                LenientNegotiation().select_renderer(_request(accept, query), renderers)
            return
    assert picked == expected


def test_one_media_type_a_renderer_has_is_picked_without_drfs_parsing():
    renderers = [WrittenDicomJsonRenderer(), WrittenJsonRenderer()]
    with mock.patch.object(DefaultContentNegotiation, "select_renderer", side_effect=AssertionError("parsed")):
        assert LenientNegotiation().select_renderer(_request(JSON), renderers) == (renderers[0], JSON)
        assert LenientNegotiation().select_renderer(_request("application/json"), renderers) == (
            renderers[1], "application/json",
        )  # fmt: skip


@pytest.mark.parametrize(
    "accept", ['multipart/related; type="application/dicom"; transfer-syntax=*', "image/jpeg", "image/png, image/gif"]
)
def test_a_retrievals_media_types_that_no_renderer_has_give_the_first_renderer_without_drfs_parsing(accept):
    renderers = [DicomJsonRenderer(), JSONRenderer()]
    with mock.patch.object(DefaultContentNegotiation, "select_renderer", side_effect=AssertionError("parsed")):
        assert LenientNegotiation().select_renderer(_request(accept), renderers) == (renderers[0], JSON)


@pytest.mark.parametrize(
    "accept", ["application/dicom+json", "  Application/DICOM+json ", "image/*", "*/*", "multipart/related"]
)
def test_a_single_media_range_reads_as_the_general_parser_reads_it(accept):
    (single,) = accept_list(_request(accept))
    assert single == MediaRange(accept.strip().lower())
    # The general path (a list of one, with a weight) gives the same range.
    (weighted,) = accept_list(_request(accept.strip() + ";q=1"))
    assert weighted == single


@pytest.mark.django_db
def test_the_study_path_is_reversed_once_per_tenant_and_follows_the_script_prefix():
    qido._study_path_prefix.cache_clear()
    request = Request(RequestFactory(HTTP_HOST="testserver").get("/dicomweb/north/studies"))
    with mock.patch.object(qido, "reverse", wraps=qido.reverse) as reversed_:
        first = RetrieveUrls(request, "north").prefix
        again = RetrieveUrls(request, "north").prefix
        other = RetrieveUrls(request, "south").prefix
    assert first == again == "http://testserver/dicomweb/north/studies/"
    assert other == "http://testserver/dicomweb/south/studies/"
    assert reversed_.call_count == 2  # once for each tenant
    set_script_prefix("/archive/")
    try:
        assert RetrieveUrls(request, "north").prefix == "http://testserver/archive/dicomweb/north/studies/"
    finally:
        clear_script_prefix()
        set_script_prefix("/")
    assert RetrieveUrls(request, "north").url("1.2", "3.4") == "http://testserver/dicomweb/north/studies/1.2/series/3.4"


@pytest.mark.django_db(transaction=True)
def test_searches_name_the_same_retrieve_url_each_time(api_client_for, radiologist_a, tenant_a):
    study = ingest(tenant_a, patient_name="ONCE^OLGA")
    client = api_client_for(radiologist_a, tenant_a)
    urls = [value(client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON).json()[0], RETRIEVE_URL) for _ in range(2)]
    assert urls == [f"http://testserver/dicomweb/north/studies/{study.study_instance_uid}"] * 2


@pytest.mark.django_db
def test_the_tokens_rows_ask_no_field_for_its_converters_once_built(tenant_a, radiologist_a):
    tenant_a.network_ranges = ["10.0.0.0/8"]
    tenant_a.save()
    with tenant_scope(tenant_a):
        _, raw = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="x")
    assert selectors.api_token_authenticate(raw=raw) is not None  # the first in this process works them out
    with mock.patch.object(Field, "get_db_converters", autospec=True, side_effect=Field.get_db_converters) as asked:
        found = selectors.api_token_authenticate(raw=raw)
    assert asked.call_count == 0
    assert found is not None
    assert found.tenant.network_ranges == ["10.0.0.0/8"]  # JSON, converted from the server's text as before
    assert found.user == radiologist_a
    assert found.membership_read[0] is not None
    assert found.membership_read[0].user_id == radiologist_a.pk
    assert not found._state.adding
    assert found.tenant._state.db == found.user._state.db == "default"
