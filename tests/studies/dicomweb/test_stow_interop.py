"""A real DICOMweb client against the real server: dicomweb-client's `store_instances` over HTTP on loopback.

Ends as every door must: the study indexed, its blobs encrypted at rest (no DICOM header, no patient name).
"""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.core.files.storage import storages
from pydicom.dataset import Dataset

from studies.dicom.synthetic import make_instance, make_study
from studies.models import IngestItem, Instance, Study
from tenants import services
from tenants.scoping import tenant_scope

pytestmark = pytest.mark.django_db(transaction=True)

PATIENT_NAME = "INTEROP^SYNTHETIC"


@pytest.fixture
def client_of(live_server, settings):
    settings.PORTAL_BASE_URL = "http://127.0.0.1:8000"  # not where the live server is: RetrieveURL must not use it

    def make(user, tenant, slug=None):
        with tenant_scope(tenant):
            _, raw = services.api_token_create(actor=user, tenant=tenant, name="dicomweb-client")
        return DICOMwebClient(
            url=f"{live_server.url}/dicomweb/{slug or tenant.slug}", headers={"Authorization": f"Bearer {raw}"}
        )

    return make


def datasets(files: list[bytes]) -> list[Dataset]:
    return [pydicom.dcmread(BytesIO(data)) for data in files]


def test_dicomweb_client_stores_a_study_that_ends_indexed_and_encrypted(
    live_server, client_of, tenant_a, radiologist_a
):
    files = make_study(series=2, instances_per_series=3, patient_name=PATIENT_NAME, patient_id="INTEROP01")
    sent = datasets(files)
    study_uid = sent[0].StudyInstanceUID

    result = client_of(radiologist_a, tenant_a).store_instances(datasets=sent)

    assert isinstance(result, Dataset)
    assert "FailedSOPSequence" not in result
    assert [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in sent
    ]
    assert result.RetrieveURL == f"{live_server.url}/dicomweb/north/studies/{study_uid}"
    with tenant_scope(tenant_a):
        study = Study.objects.select_related("patient").get(study_instance_uid=study_uid)
        instances = list(Instance.objects.filter(series__study=study).select_related("blob"))
        states = set(IngestItem.objects.values_list("state", "source"))
    assert (study.number_of_series, study.number_of_instances) == (2, 6)
    assert study.patient.patient_id == "INTEROP01"
    assert states == {(IngestItem.State.STORED, IngestItem.Source.STOWRS)}
    assert {i.sop_instance_uid for i in instances} == {ds.SOPInstanceUID for ds in sent}
    for instance in instances:
        with storages["blobs"].open(instance.blob.storage_name) as handle:
            at_rest = handle.read()
        assert b"DICM" not in at_rest
        assert PATIENT_NAME.encode() not in at_rest
        assert b"INTEROP01" not in at_rest


def test_dicomweb_client_into_one_study_gets_the_mismatch_back(client_of, tenant_a, technologist_a):
    mine = make_instance()
    study_uid = pydicom.dcmread(BytesIO(mine)).StudyInstanceUID

    result = client_of(technologist_a, tenant_a).store_instances(
        datasets=datasets([mine, make_instance()]), study_instance_uid=study_uid
    )

    # 202: dicomweb-client returns the response dataset, with the failed instance in it.
    assert len(result.ReferencedSOPSequence) == 1
    [failure] = result.FailedSOPSequence
    assert failure.FailureReason == 0xA901


# Reasons for people are longer than the 64 characters of Error Comment's VR (LO); pydicom warns on reading them.
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_dicomweb_client_sees_an_http_error_when_nothing_is_stored(client_of, tenant_a, radiologist_a):
    polyglot = bytearray(make_instance())
    polyglot[:2] = b"MZ"

    with pytest.raises(requests.HTTPError) as raised:
        client_of(radiologist_a, tenant_a).store_instances(datasets=datasets([bytes(polyglot)]))

    assert raised.value.response.status_code == 409
    body = Dataset.from_json(raised.value.response.json())
    assert body.FailedSOPSequence[0].FailureReason == 0x0110


def test_dicomweb_client_of_another_tenant_gets_404(client_of, tenant_a, tenant_b, radiologist_a):
    with pytest.raises(requests.HTTPError) as raised:
        client_of(radiologist_a, tenant_a, slug="south").store_instances(datasets=datasets([make_instance()]))

    assert raised.value.response.status_code == 404
