"""The XML audit export against the DICOM audit message schema (SECURITY.md E1): one message of every event type
of audit/events.py, with every kind of participant, validated by lxml against a RELAX NG transcription of PS3.15
A.5.1 (tests/audit/dicom_audit_message.rng); and the schema refuses a broken message, so the check can fail."""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import tostring

import pytest
from lxml import etree

from audit.events import EventType, Outcome
from audit.services import audit_event_record
from audit.views.trail import a5_xml

pytestmark = pytest.mark.django_db

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).with_name("dicom_audit_message.rng"))))
PARTICIPANTS = [
    {"type": "patient", "id": "PAT-0001", "name": "DOE^JANE"},
    {"type": "study", "id": "1.2.826.0.1.3680043.8.498.1", "name": "CT chest"},
    {"type": "query", "id": "qido-rs", "name": "Study search", "query": "PatientName=DOE*&Modality=CT"},
    {"type": "user", "id": "4b7a4c8e-0000-4000-8000-000000000001", "name": "north-radiologist"},
    {"type": "audit_log", "id": "/t/north/audit/", "name": "Audit trail"},
    {"type": "device", "id": "TABLET-7", "name": "Ward tablet", "detail": {"serial": "SN 42", "state": "wiped"}},
]


def _errors(element) -> list[str]:
    document = etree.fromstring(tostring(element))
    if SCHEMA.validate(document):
        return []
    return [f"{e.line}: {e.message}" for e in SCHEMA.error_log]


@pytest.mark.parametrize("event_type", list(EventType), ids=lambda e: e.name)
def test_every_event_type_is_a_valid_dicom_audit_message(event_type, tenant_a, radiologist_a):
    failed = event_type.value % 2 == 1  # both outcomes across the table
    event = audit_event_record(
        event=event_type, actor=radiologist_a, tenant=tenant_a, participants=PARTICIPANTS,
        source_address="10.1.2.3", outcome=Outcome.MINOR_FAILURE if failed else Outcome.SUCCESS,
        outcome_description="refused: the reason" if failed else "",
    )  # fmt: skip
    assert _errors(a5_xml(event, audit_source="enclave-test")) == []


def test_a_system_event_without_actor_or_participants_is_valid(tenant_a):
    event = audit_event_record(event=EventType.AUDIT_VERIFIED, tenant=tenant_a, system_principal="enclave:test")
    assert _errors(a5_xml(event, audit_source="enclave-test")) == []


def test_the_schema_refuses_a_broken_message(tenant_a, radiologist_a):
    event = audit_event_record(event=EventType.LOGOUT, actor=radiologist_a, tenant=tenant_a)
    message = a5_xml(event, audit_source="enclave-test")
    message.find("EventIdentification").set("EventOutcomeIndicator", "5")
    assert _errors(message)
    message = a5_xml(event, audit_source="enclave-test")
    message.remove(message.find("AuditSourceIdentification"))
    assert _errors(message)
