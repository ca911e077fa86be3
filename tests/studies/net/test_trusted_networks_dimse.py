"""Trusted networks on the DICOM listener (issue 14): an association from outside the called tenant's ranges is
rejected before its devices are even looked up, whatever it wanted to do (C-ECHO, C-STORE, C-FIND), recorded and
alerted; from inside, every service answers. The listener is the real one, spoken to by pynetdicom."""

from __future__ import annotations

import pytest

from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from studies.net.reactor import PromptAE
from tenants import services
from tenants.scoping import tenant_scope
from tests.studies.net.scu import associate, echo, write_files
from tests.studies.net.test_qr import STUDY_FIND, c_find, identifier


def close_to_elsewhere(tenant, admin) -> None:
    with tenant_scope(tenant):
        services.trusted_network_add(actor=admin, tenant=tenant, network="10.20.0.0/16", label="the hospital")
        services.trusted_network_add(actor=admin, tenant=tenant, network="2001:db8:5::/48", label="the hospital")


def refusals(tenant) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=EventType.NETWORK_REFUSED).order_by("sequence"))


def test_from_outside_every_service_is_refused_at_association(listener, north, demo_ct, admin_a, tmp_path):
    close_to_elsewhere(north, admin_a)

    echoed = echo(port=listener.port, calling="DEMO_CT", called="NORTH")
    [path] = write_files(tmp_path, [make_instance()])
    stored = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])
    finder = PromptAE(ae_title="DEMO_CT")
    finder.add_requested_context(STUDY_FIND)
    find_assoc = finder.associate("127.0.0.1", listener.port, ae_title="NORTH")

    assert echoed is None
    assert stored.rejected
    assert stored.diagnostic == 0x01  # no reason given: the refusal says nothing about the ranges
    assert find_assoc.is_rejected
    with tenant_scope(north):
        assert not IngestItem.objects.exists()
    events = refusals(north)
    assert len(events) == 3
    assert {e.extra["door"] for e in events} == {"DICOM listener"}
    assert {e.source_address for e in events} == {"127.0.0.1"}
    assert {e.extra["principal"] for e in events} == {"DEMO_CT"}
    with tenant_scope(north):
        assert SecurityAlert.objects.filter(kind="untrusted_network", subject="127.0.0.1").count() == 1


def test_from_inside_every_service_answers(listener, north, demo_ct, admin_a, tmp_path):
    with tenant_scope(north):
        services.trusted_network_add(actor=admin_a, tenant=north, network="127.0.0.0/8", label="loopback")

    assert echo(port=listener.port, calling="DEMO_CT", called="NORTH") == 0x0000
    [path] = write_files(tmp_path, [make_instance(patient_id="NET-DIMSE")])
    stored = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=[path])
    assert stored.statuses == [0x0000]
    found = c_find(listener.port, identifier("STUDY", PatientID="NET-DIMSE", StudyInstanceUID=""))
    assert len(found.matches) == 1
    assert found.statuses[-1] == 0x0000
    assert refusals(north) == []


@pytest.mark.parametrize("network", ["10.0.0.0/8", "::1/128"])
def test_another_tenants_ranges_do_not_close_this_one(listener, north, south, demo_ct, admin_b, network):
    with tenant_scope(south):
        services.trusted_network_add(actor=admin_b, tenant=south, network=network)
    assert echo(port=listener.port, calling="DEMO_CT", called="NORTH") == 0x0000
