"""RetrieveURL (0008,1190) in QIDO-RS and STOW-RS answers names the address the caller reached the portal by, never
PORTAL_BASE_URL's default port (issue 8 #13: OHIF and `make run` on another port were sent to 8000)."""

from __future__ import annotations

import pytest
import requests

from studies.dicom.synthetic import make_instance
from studies.dicomweb import stow
from tenants import services
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.helpers import CONTENT_TYPE, RETRIEVE_URL, multipart, value
from tests.studies.dicomweb.reading import JSON, ingest

pytestmark = pytest.mark.django_db(transaction=True)

NOT_SERVED = "http://127.0.0.1:8000"


@pytest.fixture
def study(tenant_a):
    return ingest(tenant_a, patient_name="PORT^PAULA")


def test_a_search_over_http_names_the_port_the_portal_really_serves(live_server, settings, tenant_a, radiologist_a,
                                                                    study):  # fmt: skip
    settings.PORTAL_BASE_URL = NOT_SERVED
    with tenant_scope(tenant_a):
        _, token = services.api_token_create(actor=radiologist_a, tenant=tenant_a, name="port")
    headers = {"Authorization": f"Bearer {token}", "Accept": JSON}
    url = f"{live_server.url}/dicomweb/north/studies"
    study_url = f"{live_server.url}/dicomweb/north/studies/{study.study_instance_uid}"

    found = requests.get(url, headers=headers, timeout=30)
    assert found.status_code == 200, found.text
    assert [value(item, RETRIEVE_URL) for item in found.json()] == [study_url]

    # A client that drops the port from Host (dicomweb-client does) still gets the port the server listens on.
    host_only = requests.get(url, headers={**headers, "Host": "localhost"}, timeout=30)
    assert [value(item, RETRIEVE_URL) for item in host_only.json()] == [study_url]

    series = requests.get(f"{study_url}/series", headers=headers, timeout=30).json()
    assert value(series[0], RETRIEVE_URL).startswith(f"{study_url}/series/")


def test_behind_a_proxy_the_public_address_is_named(api_client_for, settings, tenant_a, radiologist_a, study):
    settings.PORTAL_BASE_URL = NOT_SERVED
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "archive.example.org"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    client = api_client_for(radiologist_a, tenant_a)
    proxied = {"HTTP_HOST": "archive.example.org", "SERVER_PORT": "8000", "HTTP_X_FORWARDED_PROTO": "https",
               "HTTP_X_FORWARDED_FOR": "203.0.113.7"}  # fmt: skip

    found = client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, **proxied)
    assert found.status_code == 200, found.content
    public = f"https://archive.example.org/dicomweb/north/studies/{study.study_instance_uid}"
    assert [value(item, RETRIEVE_URL) for item in found.json()] == [public]

    sent = make_instance(patient_name="PORT^PAULA")
    stored = client.generic("POST", "/dicomweb/north/studies", multipart([sent]), content_type=CONTENT_TYPE, **proxied)
    assert stored.status_code == 200, stored.content
    uid = stow.identify(sent).study_instance_uid
    assert value(stored.json(), RETRIEVE_URL) == f"https://archive.example.org/dicomweb/north/studies/{uid}"


def test_a_host_the_portal_does_not_serve_is_refused(api_client_for, tenant_a, radiologist_a, study):
    client = api_client_for(radiologist_a, tenant_a)
    refused = client.get("/dicomweb/north/studies", HTTP_ACCEPT=JSON, HTTP_HOST="evil.example.com")
    assert refused.status_code == 400
    assert b"PORT^PAULA" not in refused.content
