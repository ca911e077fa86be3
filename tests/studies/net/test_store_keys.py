"""Issue 10: the listener opens a study's key once per association, not once per object (as STOW-RS does once per
request), and an object whose key went meanwhile is refused for a retry, never stored under a missing key."""

from __future__ import annotations

import io
from typing import Any

from pydicom import dcmread
from pynetdicom.sop_class import CTImageStorage

from studies.dicom.synthetic import make_study
from studies.models import IngestItem
from studies.net.reactor import PromptAE
from studies.storage import blobs
from tenants.scoping import tenant_scope


def test_one_association_opens_each_study_key_once(listener: Any, north: Any, demo_ct: Any, monkeypatch: Any):
    opened: list[str] = []
    ensure = blobs.study_key_ensure

    def counted(*, tenant: Any, study_instance_uid: str, replica_required: bool = True) -> Any:
        if not replica_required:  # the quarantine's (the worker's own keys are not counted here)
            opened.append(study_instance_uid)
        return ensure(tenant=tenant, study_instance_uid=study_instance_uid, replica_required=replica_required)

    monkeypatch.setattr(blobs, "study_key_ensure", counted)
    first = [dcmread(io.BytesIO(b)) for b in make_study(series=1, instances_per_series=3, patient_id="KEY1")]
    second = [dcmread(io.BytesIO(b)) for b in make_study(series=1, instances_per_series=2, patient_id="KEY2")]
    ae = PromptAE(ae_title="DEMO_CT")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NORTH")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in first + second]
    finally:
        assoc.release()

    assert statuses == [0x0000] * 5
    assert opened == [first[0].StudyInstanceUID, second[0].StudyInstanceUID]
    with tenant_scope(north):
        assert IngestItem.objects.filter(state=IngestItem.State.STORED).count() == 5


def test_an_object_that_could_not_be_quarantined_empties_the_associations_keys(
    listener: Any, north: Any, demo_ct: Any, monkeypatch: Any
):
    """A failure after a key was opened (its row possibly rolled back with the object) answers "try again" and
    forgets the association's keys: the next object looks its key up afresh, and is stored."""
    from studies.services import ingest

    seal = ingest.blob_seal
    calls = [0]

    def failing_once(**kwargs: Any) -> Any:
        calls[0] += 1
        blob = seal(**kwargs)
        if calls[0] == 1:
            raise RuntimeError("the disk went away")
        return blob

    monkeypatch.setattr(ingest, "blob_seal", failing_once)
    objects = [dcmread(io.BytesIO(b)) for b in make_study(series=1, instances_per_series=2, patient_id="KEY3")]
    ae = PromptAE(ae_title="DEMO_CT")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NORTH")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in objects]
    finally:
        assoc.release()

    assert statuses == [0xA700, 0x0000]
    with tenant_scope(north):
        [item] = IngestItem.objects.all()
        assert item.state == IngestItem.State.STORED
