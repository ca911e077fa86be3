"""dicomweb-client against the live server: search, retrieve a study, frames and a rendered instance, with the
bytes checked against what the archive stores."""

from __future__ import annotations

import io
from datetime import date

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from studies.dicom.synthetic import make_instance, make_study
from tenants import services
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import ingest_files

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client_of(live_server, settings):
    settings.PORTAL_BASE_URL = live_server.url

    def make(user, tenant):
        with tenant_scope(tenant):
            _, raw = services.api_token_create(actor=user, tenant=tenant, name="dicomweb-client")
        return DICOMwebClient(url=f"{live_server.url}/dicomweb/{tenant.slug}",
                              headers={"Authorization": f"Bearer {raw}"})  # fmt: skip

    return make


def test_dicomweb_client_searches_and_retrieves(client_of, tenant_a, radiologist_a, tenant_b, outsider_b):
    files = make_study(series=2, instances_per_series=2, patient_id="INTEROP-R", patient_name="READER^ROSE",
                       study_date=date(2024, 2, 2))  # fmt: skip
    multi = make_instance(patient_id="INTEROP-M", patient_name="MULTI^MAX", frames=4, study_date=date(2023, 5, 5))
    ingest_files(tenant_a, [*files, multi])
    client = client_of(radiologist_a, tenant_a)

    found = client.search_for_studies(search_filters={"PatientName": "read*"})
    assert [pydicom.Dataset.from_json(s).PatientID for s in found] == ["INTEROP-R"]
    by_date = client.search_for_studies(search_filters={"StudyDate": "20230101-20231231"}, fields=["StudyDescription"])
    assert [pydicom.Dataset.from_json(s).PatientID for s in by_date] == ["INTEROP-M"]
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    assert len(client.search_for_studies(limit=1)) == 1

    sent = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID: f for f in files}
    study_uid = pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID
    retrieved = client.retrieve_study(study_uid)
    assert len(retrieved) == 4
    for ds in retrieved:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert buffer.getvalue() == sent[ds.SOPInstanceUID]

    m = pydicom.dcmread(io.BytesIO(multi))
    frames = client.retrieve_instance_frames(m.StudyInstanceUID, m.SeriesInstanceUID, m.SOPInstanceUID,
                                             frame_numbers=[2, 4])  # fmt: skip
    assert frames == [m.pixel_array[1].tobytes(), m.pixel_array[3].tobytes()]
    octet = client.retrieve_instance_frames(m.StudyInstanceUID, m.SeriesInstanceUID, m.SOPInstanceUID,
                                            frame_numbers=[1], media_types=("application/octet-stream",))  # fmt: skip
    assert octet == [m.pixel_array[0].tobytes()]

    jpeg = client.retrieve_instance_rendered(m.StudyInstanceUID, m.SeriesInstanceUID, m.SOPInstanceUID)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    png = client.retrieve_instance_rendered(m.StudyInstanceUID, m.SeriesInstanceUID, m.SOPInstanceUID,
                                            media_types=("image/png",), params={"viewport": "32,32"})  # fmt: skip
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (32, 32)
    assert np.asarray(image).std() > 0

    south = client_of(outsider_b, tenant_b)
    assert south.search_for_studies() == []
    with pytest.raises(Exception, match="404"):
        south.retrieve_study(study_uid)
