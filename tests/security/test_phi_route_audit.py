"""Audit controls, route coverage (SECURITY.md A5): every tenant route that answers GET is listed here, either as a
read of patient data (or of the audit trail, which names patients) with the audit event it must record, or as a
route that shows no patient data, with the reason. A new route in neither table fails the first test.

Then, on the isolation sweep's world (tests/security/test_isolation_sweep.py: a study of patient P-SWEEP-A and every
kind of object around it):
- each patient-data route, called by a member who may read it, answers 2xx and records its EventID, once or more,
  naming that member (image reads are folded per person and study within READ_AUDIT_FOLD_SECONDS, a window set to
  nothing here so that each call is an event of its own);
- each of them, when its audit event cannot be written (the database refuses the insert, through a trigger this test
  adds and removes), answers no 2xx and nothing of the patient: the event is written before the answer;
- each of them, called by a member whose role does not give it, shows nothing of the patient, and a refusal is an
  event with outcome 4 naming that member;
- each route said to show no patient data, called by the tenant's administrator, compliance officer and
  radiologist, indeed never shows the patient's name or id;
- each DICOMweb write route (STOW-RS), listed with the event a store records, stores for the radiologist with one
  INSTANCES_STORED event naming them and the study, and refuses the compliance officer with an outcome-4 event and
  nothing received. A new DICOMweb write route in neither table fails its classification test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.uid import generate_uid

from audit.events import EventType, Outcome
from audit.models import AuditEvent
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from tenants.db.roles import as_owner
from tenants.scoping import tenant_scope
from tests.conftest import verified_client
from tests.security.sweep import Route, tenant_routes
from tests.security.test_isolation_sweep import PATIENT_ID, PATIENT_NAME, bearer, token_of, world
from tests.studies.dicomweb.helpers import CONTENT_TYPE, multipart

pytestmark = pytest.mark.django_db(transaction=True)

__all__ = ["world"]  # the sweep's fixture, used here as is

DICOM = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'
JSON = "application/dicom+json"
WADO_URI = (
    "requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}&objectUID={instance_uid}"
    "&contentType=application%2Fdicom"
)


@dataclass(frozen=True)
class Read:
    event: EventType
    persona: str = "radiologist"
    accept: str = ""
    query: str = ""


QUERIED, ACCESSED, AUDIT_READ = EventType.STUDIES_QUERIED, EventType.INSTANCES_ACCESSED, EventType.AUDIT_LOG_USED
RETRIEVED = EventType.INSTANCES_RETRIEVED  # the DICOM objects themselves leave: 110104 Instances Transferred
# Route name -> the read it is, the persona who may make it, and what it is asked for.
PHI_READS: dict[str, Read] = {
    "portal:studies": Read(QUERIED),
    "portal:study": Read(ACCESSED),
    "portal:study_history": Read(AUDIT_READ),
    "portal:series_thumbnail": Read(ACCESSED),
    "portal:study_access": Read(ACCESSED),
    "portal:study_export": Read(ACCESSED),
    "portal:ingest": Read(ACCESSED),
    "portal:export_download": Read(EventType.STUDY_EXPORTED),
    "portal:break_glass_review": Read(ACCESSED, persona="compliance"),
    "portal:retention_proposals": Read(ACCESSED, persona="compliance"),
    "api:retention_proposals": Read(ACCESSED, persona="compliance"),  # each names its study
    "api:retention_holds": Read(ACCESSED, persona="compliance"),  # each names its study or patient
    "portal:retention_holds": Read(ACCESSED, persona="compliance"),  # each names its study or patient
    "portal:audit": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_export": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_export_json": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_export_xml": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_event": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_change": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_dashboard": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_compliance": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_compliance_pdf": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_alerts": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_alert": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_incidents": Read(AUDIT_READ, persona="compliance"),
    "portal:audit_incident": Read(AUDIT_READ, persona="compliance"),
    "api:audit_event_list": Read(AUDIT_READ, persona="compliance"),
    "api:audit_event_detail": Read(AUDIT_READ, persona="compliance"),
    "api:audit_change_list": Read(AUDIT_READ, persona="compliance"),
    "dicomweb:studies": Read(QUERIED, accept=JSON),
    "dicomweb:series-search": Read(QUERIED, accept=JSON),
    "dicomweb:instances-search": Read(QUERIED, accept=JSON),
    "dicomweb:study-series-search": Read(QUERIED, accept=JSON),
    "dicomweb:study-instances-search": Read(QUERIED, accept=JSON),
    "dicomweb:series-instances-search": Read(QUERIED, accept=JSON),
    "dicomweb:study": Read(RETRIEVED, accept=DICOM),
    "dicomweb:series": Read(RETRIEVED, accept=DICOM),
    "dicomweb:instance": Read(RETRIEVED, accept=DICOM),
    "dicomweb:study-metadata": Read(ACCESSED, accept=JSON),
    "dicomweb:series-metadata": Read(ACCESSED, accept=JSON),
    "dicomweb:instance-metadata": Read(ACCESSED, accept=JSON),
    "dicomweb:frames": Read(ACCESSED, accept=OCTETS),
    "dicomweb:study-rendered": Read(ACCESSED, accept="image/png"),
    "dicomweb:series-rendered": Read(ACCESSED, accept="image/png"),
    "dicomweb:instance-rendered": Read(ACCESSED, accept="image/png"),
    "dicomweb:frames-rendered": Read(ACCESSED, accept="image/png"),
    "dicomweb:study-thumbnail": Read(ACCESSED, accept="image/png"),
    "dicomweb:series-thumbnail": Read(ACCESSED, accept="image/png"),
    "dicomweb:instance-thumbnail": Read(ACCESSED, accept="image/png"),
    "dicomweb:wado-uri": Read(RETRIEVED, query=WADO_URI),
}
NO_PATIENT_DATA: dict[str, str] = {
    "portal:tenant_home": "what the member can do here",
    "portal:members": "staff and roles",
    "portal:api_tokens": "the caller's tokens",
    "portal:networks": "address ranges",
    "portal:export_policy": "the tenant's export setting",
    "portal:audit_disclosures": "the form only, no patient asked for (answers: tests/audit/test_audit_reports.py)",
    "portal:audit_breach_scope": "without an address, user or device asked for, the form only",
    "portal:upload": "the upload form",
    "portal:ingest_batch": "a batch's items: file labels and outcomes, not the patient",
    "portal:break_glass": "the form asking for a study and a reason",
    "portal:export_search": "the search export form",
    "portal:export_progress": "an export's state and counts",
    "portal:export_status": "an export's state and counts, as JSON",
    "portal:retention": "retention policies",
    "portal:recertification": "the access review: staff, roles, last sign-in",
    "portal:devices": "the device register",
    "portal:device_request": "the device request form",
    "portal:device_wipe_orders": "wipe orders of devices",
    "portal:device_detail": "one device and its history",
    "portal:training_me": "the member's own training",
    "portal:training_matrix": "staff training status",
    "portal:training_matrix_csv": "staff training status (its export is TRAINING_MATRIX_EXPORTED)",
    "portal:training_import": "the import form",
    "portal:training_queue": "self-reported completions awaiting review",
    "portal:training_courses": "courses",
    "portal:training_operators": "operators' training",
    "portal:training_person": "one person's training",
    "portal:training_evidence": "a staff certificate (its read is TRAINING_EVIDENCE_VIEWED)",
    "api:members": "staff and roles",
    "api:member": "one member",
    "api:invitations": "invitations to staff",
    "api:invitation": "one invitation",
    "api:api_tokens": "the caller's tokens",
    "api:networks": "address ranges",
    "api:devices": "the device register",
    "api:device_self": "the calling device's own state",
    "api:device_policy": "the tenant's device policy",
    "api:device_wipe_orders": "wipe orders",
    "api:device": "one device",
    "api:device_history": "one device's custody and events",
    "api:retention_policies": "retention policies: name, modality, years",
    "api:training_courses": "courses",
    "api:training_requirements": "training requirements",
    "api:training_completions": "staff completions",
    "api:training_completion": "one completion",
    "api:training_person_status": "one person's training status",
    "api:training_matrix_csv": "staff training status (its export is TRAINING_MATRIX_EXPORTED)",
}


def _get_routes() -> list[Route]:
    return [route for route in tenant_routes() if "get" in route.methods]


def test_every_tenant_route_that_answers_get_is_classified() -> None:
    names = {route.name for route in _get_routes()}
    both = set(PHI_READS) & set(NO_PATIENT_DATA)
    assert not both, f"listed as both: {sorted(both)}"
    unlisted = names - set(PHI_READS) - set(NO_PATIENT_DATA)
    assert not unlisted, f"say whether these routes show patient data, and which audit event they record: {unlisted}"
    stale = (set(PHI_READS) | set(NO_PATIENT_DATA)) - names
    assert not stale, f"no longer routed: {sorted(stale)}"


def _url(route: Route, read: Read, values: dict[str, str]) -> str:
    url = route.path("north", values)
    return f"{url}?{read.query.format(**values)}" if read.query else url


def _callers(world: Any, tenant_a: Any, users: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {name: (verified_client(user), bearer(token_of(user, tenant_a))) for name, user in users.items()}


def _call(callers: dict[str, tuple[Any, Any]], route: Route, read: Read, url: str) -> Any:
    page, api = callers[read.persona]
    client = page if route.door == "page" else api
    headers = {"HTTP_ACCEPT": read.accept} if read.accept else {}
    return client.get(url, **headers)


def _body(response: Any) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def users(admin_a, compliance_a, radiologist_a, settings) -> dict[str, Any]:
    # Image reads of one person and study within READ_AUDIT_FOLD_SECONDS are folded into one event (a tally in
    # the same transaction as the read): with no window, each call of this test writes its own event.
    settings.READ_AUDIT_FOLD_SECONDS = 0
    return {"admin": admin_a, "compliance": compliance_a, "radiologist": radiologist_a}


def test_each_patient_data_route_records_its_event_id(world, tenant_a, users) -> None:
    callers = _callers(world, tenant_a, users)
    routes = {route.name: route for route in _get_routes()}
    problems = []
    for name, read in PHI_READS.items():
        route = routes[name]
        last = AuditEvent.unscoped_objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        response = _call(callers, route, read, _url(route, read, world.values))
        _body(response)
        if not 200 <= response.status_code < 300:
            problems.append(f"{name}: {response.status_code}")
            continue
        recorded = AuditEvent.unscoped_objects.filter(pk__gt=last, event_type=read.event, tenant=tenant_a)
        if not recorded.filter(actor_user=users[read.persona]).exists():
            problems.append(f"{name}: no {read.event.name} event by the {read.persona}")
        elif {e.event_id for e in recorded} != {read.event.spec.event_id.value}:
            problems.append(f"{name}: EventID {sorted({e.event_id for e in recorded})}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def audit_reads_refused(db: Any) -> Any:
    """The database refuses to store a read event (the audit store failing) until the test ends."""
    reads = sorted({read.event.value for read in PHI_READS.values()})
    # DDL on the audit table: only its owner may (the application's role owns nothing, SECURITY.md G2).
    with as_owner() as connection, connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_audit_reads_refused() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.event_type IN ({', '.join(map(str, reads))}) THEN "
            "RAISE EXCEPTION 'the audit store refuses this read (test)'; END IF; RETURN NEW; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_audit_reads_refused BEFORE INSERT ON audit_auditevent "
            "FOR EACH ROW EXECUTE FUNCTION test_audit_reads_refused()"
        )
    try:
        yield
    finally:
        with as_owner() as connection, connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS test_audit_reads_refused ON audit_auditevent")
            cursor.execute("DROP FUNCTION IF EXISTS test_audit_reads_refused()")


def test_no_patient_data_leaves_when_its_read_cannot_be_recorded(world, tenant_a, users, request) -> None:
    callers = _callers(world, tenant_a, users)
    for page, _ in callers.values():
        page.raise_request_exception = False
    for _, api in callers.values():
        api.raise_request_exception = False
    routes = {route.name: route for route in _get_routes()}
    urls = {name: _url(routes[name], read, world.values) for name, read in PHI_READS.items()}
    request.getfixturevalue("audit_reads_refused")
    problems = []
    for name, read in PHI_READS.items():
        response = _call(callers, routes[name], read, urls[name])
        body = _body(response)
        if 200 <= response.status_code < 300 or PATIENT_ID.encode() in body or PATIENT_NAME.encode() in body:
            problems.append(f"{name}: {response.status_code}, {len(body)} bytes")
    assert not problems, "answered although its read was not recorded:\n" + "\n".join(problems)


def test_routes_said_to_show_no_patient_data_show_none(world, tenant_a, users) -> None:
    callers = _callers(world, tenant_a, users)
    routes = {route.name: route for route in _get_routes()}
    leaks, reached = [], set()
    for name in NO_PATIENT_DATA:
        route = routes[name]
        url = route.path("north", world.values)
        for persona in callers:
            response = _call(callers, route, Read(EventType.STUDIES_QUERIED, persona=persona), url)
            body = _body(response).upper()
            if 200 <= response.status_code < 300:
                reached.add(name)
            if PATIENT_ID.encode() in body or PATIENT_NAME.encode() in body:
                leaks.append(f"{name} ({persona}): {response.status_code}")
    assert not leaks, "patient data on a route listed as showing none:\n" + "\n".join(leaks)
    assert len(reached) >= len(NO_PATIENT_DATA) - 3, sorted(set(NO_PATIENT_DATA) - reached)


def test_a_member_refused_a_patient_data_route_leaves_an_outcome_4_event(world, tenant_a, users) -> None:
    """The other side of each read: a member of the tenant whose role does not give it (the compliance officer on
    images, the radiologist on the audit trail) gets nothing of the patient, and a refusal is on the trail with
    EventOutcomeIndicator 4 (minor failure) naming them. A search they may make answers without the patient."""
    callers = _callers(world, tenant_a, users)
    routes = {route.name: route for route in _get_routes()}
    problems, refused = [], 0
    for name, read in PHI_READS.items():
        other = "compliance" if read.persona == "radiologist" else "radiologist"
        route = routes[name]
        last = AuditEvent.unscoped_objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        response = _call(callers, route, Read(read.event, persona=other, accept=read.accept, query=read.query),
                         _url(route, read, world.values))  # fmt: skip
        body = _body(response)
        if PATIENT_ID.encode() in body or PATIENT_NAME.encode() in body:
            problems.append(f"{name}: the {other} sees the patient ({response.status_code})")
        if 200 <= response.status_code < 300:
            continue
        refused += 1
        recorded = AuditEvent.unscoped_objects.filter(pk__gt=last, tenant=tenant_a, actor_user=users[other])
        if not recorded.filter(outcome=Outcome.MINOR_FAILURE).exists():
            problems.append(f"{name}: {response.status_code} for the {other} without an outcome-4 event")
    assert not problems, "\n".join(problems)
    assert refused >= len(PHI_READS) // 2  # most are refusals, so the check above is not empty


# Writes on the DICOMweb door (STOW-RS): every tenant DICOMweb route that answers more than GET is listed here with
# the audit event a store records (each instance stored is INSTANCES_STORED, DICOM 110104 Instances Transferred,
# Create, naming its patient and study), and its instance for the call.
@dataclass(frozen=True)
class Write:
    event: EventType
    into_world_study: bool  # STOW-RS to /studies/{study}: the instance must belong to that study


DICOMWEB_WRITES: dict[str, Write] = {
    "dicomweb:studies": Write(EventType.INSTANCES_STORED, into_world_study=False),
    "dicomweb:study": Write(EventType.INSTANCES_STORED, into_world_study=True),
}


def test_every_dicomweb_write_route_is_classified() -> None:
    writes = {route.name for route in tenant_routes() if route.door == "dicomweb" and set(route.methods) - {"get"}}
    assert writes == set(DICOMWEB_WRITES), f"say which audit event these writes record: {writes ^ set(DICOMWEB_WRITES)}"


def _stow(api: Any, url: str, data: bytes) -> Any:
    return api.generic("POST", url, multipart([data]), content_type=CONTENT_TYPE, HTTP_ACCEPT="application/dicom+json")


def test_each_stow_route_records_the_store_and_a_refused_store_leaves_an_outcome_4_event(
    world, tenant_a, users
) -> None:
    """The radiologist stores one instance through each STOW-RS route: 200 and one INSTANCES_STORED event naming
    them and the study. The compliance officer (no `tenants.upload_studies`) is refused: nothing stored, and an
    outcome-4 event naming them."""
    callers = _callers(world, tenant_a, users)
    routes = {route.name: route for route in tenant_routes()}
    problems = []
    for name, write in DICOMWEB_WRITES.items():
        url = routes[name].path("north", world.values)
        study_uid = world.values["study_uid"] if write.into_world_study else generate_uid()
        data = make_instance(patient_id=PATIENT_ID, patient_name=PATIENT_NAME, study_uid=study_uid)
        last = AuditEvent.unscoped_objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        response = _stow(callers["radiologist"][1], url, data)
        if response.status_code != 200:
            problems.append(f"{name}: {response.status_code} for the radiologist")
            continue
        recorded = AuditEvent.unscoped_objects.filter(pk__gt=last, tenant=tenant_a, event_type=write.event)
        by_them = [e for e in recorded if e.actor_user_id == users["radiologist"].pk]
        if len(by_them) != 1 or {e.event_id for e in by_them} != {write.event.spec.event_id.value}:
            problems.append(f"{name}: {len(by_them)} {write.event.name} events by the radiologist")
        elif not any(p.get("id") == study_uid for p in by_them[0].participants):
            problems.append(f"{name}: the store does not name its study")

        with tenant_scope(tenant_a):
            before = IngestItem.objects.count()
        last = AuditEvent.unscoped_objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        other = make_instance(patient_id=PATIENT_ID, patient_name=PATIENT_NAME, study_uid=study_uid)
        refused = _stow(callers["compliance"][1], url, other)
        with tenant_scope(tenant_a):
            after = IngestItem.objects.count()
        if refused.status_code != 403 or after != before:
            problems.append(f"{name}: {refused.status_code} for the compliance officer, {after - before} received")
        denied = AuditEvent.unscoped_objects.filter(
            pk__gt=last, tenant=tenant_a, actor_user=users["compliance"], outcome=Outcome.MINOR_FAILURE
        )
        if not denied.exists():
            problems.append(f"{name}: refused without an outcome-4 event")
    assert not problems, "\n".join(problems)
