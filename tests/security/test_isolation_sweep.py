"""The generated isolation sweep (issue 14): every tenant route of the project (pages, REST API, DICOMweb), found by
walking the URL resolver, filled with real objects of tenant A, called with every method it answers by each
persona who must not reach them: never a 2xx (a member's allowed routes aside, listed with the reason), never a
5xx, never tenant A's patient name, patient ID, Study Instance UID or another member's e-mail in a body.

A route the table in tests/security/sweep.py does not cover fails `test_every_route_is_covered`; so does an OpenAPI
operation that is not a swept route. One test per persona iterates over the routes and reports every failure at
once, naming the route, the method and the persona."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent, Incident, SecurityAlert
from devices.models import Device
from studies import services as study_services
from studies.models import BreakGlassGrant, IngestItem, RetentionProposal, Series
from studies.services import retention
from tenants import services
from tenants.models import ApiToken, Membership, Role, Tenant, User
from tenants.scoping import tenant_scope
from tests.conftest import verified_client
from tests.security.sweep import (
    FILL,
    OPS_PREFIX,
    PUBLIC,
    Route,
    as_openapi_path,
    openapi_operations,
    routes,
    tenant_routes,
)
from tests.studies.dicomweb.reading import ingest
from tests.training.helpers import adopt, record, require, today

pytestmark = pytest.mark.django_db(transaction=True)

PATIENT_NAME = "SWEEP^PATIENT"
PATIENT_ID = "P-SWEEP-A"
DEVICES = "/api/v1/t/north/devices/"
GOOD = {"disk_encrypted": True, "screen_lock": True, "mdm_managed": False, "os_version": "17.4"}


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def token_of(user: User, tenant: Tenant) -> str:
    with tenant_scope(tenant):
        _, raw = services.api_token_create(actor=user, tenant=tenant, name="sweep")
    return raw


@dataclass
class World:
    """Tenant A's objects the routes name, and the strings that must never reach a caller who may not see them."""

    values: dict[str, str]
    secrets: list[str]
    lost_device_token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def world(tenant_a, admin_a, compliance_a, radiologist_a, technologist_a, api_client_for) -> World:
    study = ingest(tenant_a, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, accession="SWEEP1")
    second_admin = _make(tenant_a, Role.TENANT_ADMIN, "north-admin-sweep")
    with tenant_scope(tenant_a):
        series = Series.objects.filter(study=study).first()
        instance = series.instances.first()
        member = Membership.objects.get(user=radiologist_a)
        invitation = services.invitation_create(
            actor=admin_a, tenant=tenant_a, email="invitee@north.example", role=Role.TECHNOLOGIST
        )
        token, _ = services.api_token_create(actor=admin_a, tenant=tenant_a, name="admin's")
        # The test client's own range, so tenant A stays reachable while the sweep runs through the network check.
        network = services.trusted_network_add(actor=admin_a, tenant=tenant_a, network="127.0.0.0/8", label="sweep")
        campaign = services.recertification_open(tenant=tenant_a)
        assert campaign is not None
        recertification_item = campaign.items.get(membership=member)
        share = study_services.share_create(
            actor=radiologist_a, study=study, grantee=technologist_a, expires_at=timezone.now() + timedelta(days=3)
        )
        share_invitation = study_services.share_invite_outside(
            actor=radiologist_a, study=study, email="out@clinic.example", first_name="Olive", last_name="Out", days=3
        )
        in_an_hour = timezone.now() + timedelta(hours=1)
        grant = BreakGlassGrant.objects.create(
            tenant=tenant_a, study=study, user=technologist_a, reason="sweep", expires_at=in_an_hour
        )
        export = study_services.export_request(actor=radiologist_a, studies=[study])
        batch = IngestItem.objects.filter(instance=instance).values_list("batch", flat=True).first()
    with tenant_scope(tenant_a):
        policy = retention.retention_policy_create(
            actor=admin_a, name="sweep", modality="", years_after_last_study=1, keep_until_patient_age=None
        )
        hold = retention.legal_hold_place(actor=admin_a, reason="sweep: litigation", study=study)
        proposal = RetentionProposal.objects.create(
            tenant=tenant_a, study=study, study_instance_uid=study.study_instance_uid, policy=policy,
            due_on=timezone.localdate(),
        )  # fmt: skip
    course = adopt(tenant_a, compliance_a)
    requirement = require(tenant_a, compliance_a, course)
    completion = record(tenant_a, compliance_a, radiologist_a, course, expires_on=today() + timedelta(days=200))
    lost_token = _lost_device_token(api_client_for, tenant_a, admin_a, second_admin, radiologist_a)
    with tenant_scope(tenant_a):
        device = Device.objects.filter(custodian=radiologist_a).first()
        alert = SecurityAlert.objects.first()
        incident = Incident.objects.create(tenant=tenant_a, title="sweep", opened_by=compliance_a,
                                           discovered_at=timezone.now())  # fmt: skip
        event = AuditEvent.objects.order_by("-sequence").first()
    change = LogEntry.objects.order_by("-pk").first()
    assert alert is not None
    assert event is not None
    assert change is not None
    assert device is not None
    values = {
        "study": str(study.public_id),
        "series": str(series.public_id),
        "study_uid": study.study_instance_uid,
        "series_uid": series.series_instance_uid,
        "instance_uid": instance.sop_instance_uid,
        "frame": "1",
        "member": str(member.public_id),
        "person": str(radiologist_a.subject_uuid),
        "invitation": str(invitation.public_id),
        "token": str(token.public_id),
        "trusted_network": str(network.public_id),
        "recertification_item": str(recertification_item.public_id),
        "share": str(share.public_id),
        "share_invitation": str(share_invitation.public_id),
        "break_glass": str(grant.public_id),
        "export": str(export.public_id),
        "batch": str(batch),
        "device": str(device.public_id),
        "alert": str(alert.public_id),
        "incident": str(incident.public_id),
        "audit_event": str(event.public_id),
        "audit_change": str(change.pk),
        "requirement": str(requirement.public_id),
        "completion": str(completion.public_id),
        "verdict": "approve",
        "retention_policy": str(policy.public_id),
        "retention_proposal": str(proposal.public_id),
        "legal_hold": str(hold.public_id),
    }
    secrets = [
        PATIENT_NAME, PATIENT_ID, study.study_instance_uid, admin_a.email, radiologist_a.email, "invitee@north.example"
    ]  # fmt: skip
    return World(values=values, secrets=[s for s in secrets if s], lost_device_token=lost_token)


def _make(tenant: Tenant, role: str, username: str) -> User:
    from tests.conftest import _member

    return _member(tenant, role, username)


def _lost_device_token(api_client_for, tenant, admin, second_admin, custodian) -> str:
    """A tablet of `custodian`, requested, approved, enrolled through the API, then reported lost: its token."""
    own = api_client_for(custodian, tenant)
    tablet = own.post(f"{DEVICES}requests/", {"kind": "mobile", "name": "Tablet", "attestation": GOOD}, format="json")
    assert tablet.status_code == 201, tablet.content
    device_id = tablet.json()["id"]
    approved = api_client_for(admin, tenant).post(f"{DEVICES}{device_id}/approve/", {"grants": ["view"]}, format="json")
    assert approved.status_code == 200, approved.content
    code = own.post(f"{DEVICES}{device_id}/enrolment-code/")
    assert code.status_code == 201, code.content
    enrolled = bearer(code.json()["code"]).post(f"{DEVICES}enrol/", GOOD, format="json")
    assert enrolled.status_code == 201, enrolled.content
    lost = own.post(f"{DEVICES}{device_id}/report-lost/", {"reason": "left on the train"}, format="json")
    assert lost.status_code == 200, lost.content
    return enrolled.json()["token"]


@dataclass
class Persona:
    """Who calls: a browser client for the pages, a client for the API and DICOMweb, and the routes they may reach
    as a member of tenant A (route name -> why), where a 2xx is right but tenant A's data must still not leak."""

    name: str
    page: Client
    api: Client
    allowed: dict[str, str] = field(default_factory=dict)
    own: list[str] = field(default_factory=list)  # strings of the persona itself, which may appear
    reads: set[str] = field(default_factory=set)  # allowed routes whose very job is to show tenant A's data
    outside: bool = False  # no standing in tenant A at all: refused before the request is even read


# What a member of tenant A without any right over others' data may still open: their own things and empty forms.
# The leak check still runs on these: tenant A's patient and other members' e-mails must not appear.
MEMBER_OWN = {
    "portal:tenant_home": "the tenant's start page, the caller's own",
    "portal:training_me": "the caller's own training",
    "portal:device_request": "asking for a device for oneself",
    "portal:api_tokens": "the caller's own API tokens",
    "portal:break_glass": "the emergency-access form (empty; starting it needs a TOTP code and a reason)",
    "api:api_tokens": "the caller's own API tokens",
    "api:device_requests": "the caller's own device requests",
    "api:device_policy": "the tenant's device policy, no patient data",
    "api:training_courses": "the courses the caller must take",
    "api:training_requirements": "which courses the tenant requires of whom, no patient data",
    "api:training_completions": "the caller's own completions",
}
REFERRER = {
    **MEMBER_OWN,
    "portal:studies": "the list of the studies naming the referrer: empty here",
    "portal:export_search": "the search export form, over the referrer's own studies: none here",
    "dicomweb:studies": "QIDO over the referrer's own studies: 204, no match",
    "dicomweb:series-search": "QIDO over the referrer's own studies: 204, no match",
    "dicomweb:instances-search": "QIDO over the referrer's own studies: 204, no match",
    "dicomweb:study-series-search": "QIDO over the referrer's own studies: 204, no match",
    "dicomweb:study-instances-search": "QIDO over the referrer's own studies: 204, no match",
    "dicomweb:series-instances-search": "QIDO over the referrer's own studies: 204, no match",
}
QIDO_UNDER = ["dicomweb:study-series-search", "dicomweb:study-instances-search", "dicomweb:series-instances-search"]
LAPSED = {
    **MEMBER_OWN,
    "portal:upload": "the empty upload form; sending files is refused by the training gate",
}


def _call(client: Client, method: str, path: str, door: str) -> Any:
    headers = {"HTTP_ACCEPT": "application/dicom+json"} if door == "dicomweb" else {}
    if method in ("get", "delete"):
        return getattr(client, method)(path, **headers)
    return getattr(client, method)(path, {}, content_type="application/json", **headers)


def _sweep(persona: Persona, world: World, tenant: str = "north", missing: dict[str, str] | None = None) -> list[str]:
    """Call every tenant route with every method as `persona`; with `missing` (values naming nothing), also call each
    route with parameters again with those: the answer must be the same as for tenant A's objects."""
    problems: list[str] = []
    for route in tenant_routes():
        url = route.path(tenant, world.values)
        client = persona.page if route.door == "page" else persona.api
        for method in route.methods:
            response = _call(client, method, url, route.door)
            where = f"{persona.name} {method.upper()} {url} ({route.name})"
            status = response.status_code
            body = b"".join(response.streaming_content) if response.streaming else response.content
            text = body.decode("utf-8", "replace")
            if status >= 500:
                problems.append(f"{where}: server error {status}")
            elif 200 <= status < 300 and route.name not in persona.allowed:
                problems.append(f"{where}: {status}, expected a refusal")
            elif persona.outside and status in (400, 409, 413, 415, 422):
                problems.append(f"{where}: {status}: the input was judged before the caller")
            elif 300 <= status < 400 and not _redirect_fine(response["Location"], route, persona, tenant):
                problems.append(f"{where}: redirect {status} to {response.get('Location')}")
            if missing is not None and FILL[route.name]:
                twin = _call(client, method, route.path(tenant, missing), route.door).status_code
                if twin != status:
                    problems.append(f"{where}: {status} for tenant A's object but {twin} for a missing one")
            for secret in world.secrets:
                if route.name in persona.reads and status < 500:  # the page again, with its errors
                    break
                if secret not in persona.own and secret in text:
                    problems.append(f"{where}: {status} body names {secret!r}")
    return problems


def _missing(world: World) -> dict[str, str]:
    """Values of the same shapes as the world's, naming no object anywhere."""
    uid = "1.2.826.0.1.3680043.10.999999.1"
    values = {key: str(uuid.uuid4()) for key in world.values}
    return values | {"study_uid": uid, "series_uid": uid + ".2", "instance_uid": uid + ".3", "frame": "1",
                     "audit_change": "999999999", "verdict": "approve"}  # fmt: skip


def _redirect_fine(location: str, route: Route, persona: Persona, tenant: str) -> bool:
    """To the login page from a page; or, on a route the persona may use, back to a page of the same tenant."""
    if route.door == "page" and location.startswith("/accounts/login/"):
        return True
    return route.name in persona.allowed and location.startswith(f"/t/{tenant}/")


def _assert_clean(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} finding(s):\n" + "\n".join(problems)


def test_every_route_is_covered() -> None:
    found = {r.name for r in routes() if not r.pattern.startswith(OPS_PREFIX)}
    tenant = {r.name for r in tenant_routes()}
    assert tenant == set(FILL), f"not in the table: {sorted(tenant - set(FILL))}; gone: {sorted(set(FILL) - tenant)}"
    assert found - tenant == set(PUBLIC), f"unreasoned non-tenant routes: {sorted(found - tenant - set(PUBLIC))}"
    for route in tenant_routes():
        assert route.methods, f"{route.name} answers no method the sweep knows"


def test_every_openapi_operation_is_a_swept_route() -> None:
    swept = {(as_openapi_path(r.pattern), m) for r in tenant_routes() for m in r.methods}
    operations = openapi_operations()
    assert operations, "the schema has no operations"
    assert operations - swept == set(), f"operations the sweep does not call: {sorted(operations - swept)}"


def test_another_tenants_admin(world, tenant_b, admin_b) -> None:
    persona = Persona("south-admin", verified_client(admin_b), bearer(token_of(admin_b, tenant_b)), outside=True)
    _assert_clean(_sweep(persona, world))


def test_another_tenants_admin_in_their_own_tenant_naming_our_objects(world, tenant_b, admin_b) -> None:
    """B's admin under B's own slug with A's ids and UIDs: each object route is a 404; B's own lists may answer
    but never name A's data."""
    own_lists = {name: "B's own list or form, without parameters" for name, params in FILL.items() if not params}
    own_lists |= dict.fromkeys(QIDO_UNDER, "a QIDO search under an unknown study: 204, as for any missing UID")
    persona = Persona("south-admin@south", verified_client(admin_b), bearer(token_of(admin_b, tenant_b)), own_lists)
    persona.own = [admin_b.email]
    _assert_clean(_sweep(persona, world, tenant="south", missing=_missing(world)))


AUDIT_READS = {
    "portal:audit", "portal:audit_export", "portal:audit_export_json", "portal:audit_export_xml",
    "portal:audit_event", "portal:audit_change", "portal:audit_disclosures", "portal:audit_breach_scope",
    "portal:audit_dashboard", "portal:audit_compliance", "portal:audit_compliance_pdf", "portal:audit_alerts",
    "portal:audit_alert",
    "portal:audit_incidents", "portal:audit_incident",
    "api:audit_event_list", "api:audit_event_detail", "api:audit_change_list",
}  # fmt: skip
# The auditor's role holds tenants.view_members and tenants.view_training too (tenants/access.py): reading the
# members, invitations, training records and the device register (read-only) is part of the audit.
AUDITOR_READS = AUDIT_READS | {
    "portal:members", "api:members", "api:member", "api:invitations", "api:invitation",
    "portal:training_matrix", "portal:training_matrix_csv", "portal:training_operators", "portal:training_person",
    "portal:training_evidence", "api:training_completion", "api:training_person_status", "api:training_matrix_csv",
    "portal:devices", "portal:device_detail", "portal:device_wipe_orders",
}  # fmt: skip
QIDO = [name for name in FILL if name.endswith("search") or name == "dicomweb:studies"]


def test_an_auditor(world, tenant_a, auditor_a) -> None:
    """The auditor reads the trail (which names patients and members: their job) and nothing else of tenant A."""
    allowed = MEMBER_OWN | dict.fromkeys(AUDITOR_READS, "the auditor's role: audit, members, training")
    allowed |= dict.fromkeys(QIDO, "QIDO over the studies the auditor sees: none, 204")
    persona = Persona("north-auditor", verified_client(auditor_a), bearer(token_of(auditor_a, tenant_a)), allowed)
    persona.own, persona.reads = [auditor_a.email], AUDITOR_READS
    _assert_clean(_sweep(persona, world))


CLINICAL = {
    name for name in FILL
    if name.startswith("dicomweb:")
    or name.split(":")[1].startswith(("stud", "series", "share", "upload", "ingest", "export", "break_glass"))
} - {"portal:break_glass_review", "portal:break_glass_sign_off"}  # fmt: skip


def test_a_clinician_on_the_administration(world, tenant_a, technologist_a) -> None:
    """A technologist (studies, uploads, shares: no members, audit, devices or training management) reaches the
    clinical routes and their own things, and no administration route."""
    allowed = MEMBER_OWN | dict.fromkeys(CLINICAL, "the technologist's clinical work")
    client = verified_client(technologist_a)
    persona = Persona("north-technologist", client, bearer(token_of(technologist_a, tenant_a)), allowed)
    persona.own, persona.reads = [technologist_a.email], CLINICAL
    _assert_clean(_sweep(persona, world))


def test_a_member_without_the_right(world, tenant_a, make_member) -> None:
    referrer = make_member(tenant_a, Role.REFERRING_PHYSICIAN, "north-referrer-sweep")
    persona = Persona("north-referrer", verified_client(referrer), bearer(token_of(referrer, tenant_a)), REFERRER)
    persona.own = [referrer.email]
    _assert_clean(_sweep(persona, world))


def test_an_anonymous_caller(world) -> None:
    _assert_clean(_sweep(Persona("anonymous", Client(), APIClient(), outside=True), world))


def test_a_deactivated_person(world, tenant_a, make_member) -> None:
    person = make_member(tenant_a, Role.RADIOLOGIST, "north-gone")
    page, raw = verified_client(person), token_of(person, tenant_a)
    person.is_active = False
    person.save(update_fields=["is_active"])
    _assert_clean(_sweep(Persona("deactivated", page, bearer(raw), outside=True), world))


def test_an_expired_token(world, tenant_a, radiologist_a) -> None:
    raw = token_of(radiologist_a, tenant_a)
    with tenant_scope(tenant_a):
        token = ApiToken.objects.get(user=radiologist_a, name="sweep")
        token.expires_at = timezone.now() - timedelta(seconds=1)
        token.save(update_fields=["expires_at"])
    _assert_clean(_sweep(Persona("expired-token", Client(), bearer(raw), outside=True), world))


def test_a_lost_devices_token(world) -> None:
    _assert_clean(_sweep(Persona("lost-device", Client(), bearer(world.lost_device_token), outside=True), world))


def test_a_person_whose_training_lapsed(world, tenant_a, compliance_a, make_member) -> None:
    person = make_member(tenant_a, Role.RADIOLOGIST, "north-lapsed")
    with tenant_scope(tenant_a):
        from training.models import Course

        course = Course.objects.get()
    record(tenant_a, compliance_a, person, course, expires_on=today() - timedelta(days=1))
    persona = Persona("training-lapsed", verified_client(person), bearer(token_of(person, tenant_a)), LAPSED)
    persona.own = [person.email]
    _assert_clean(_sweep(persona, world))


# GET routes that 404 even for tenant A's own people with the right, with the reason: the control below proves every
# other route's parameters name objects that exist, so the refusals above are refusals and not missing objects.
NOT_FOUND_FOR_OWNERS: dict[str, str] = {}


def test_the_table_names_real_objects(world, tenant_a, admin_a, compliance_a, radiologist_a) -> None:
    """The control: tenant A's admin, compliance officer or radiologist reach each GET route (anything but 404)."""
    callers = [
        (verified_client(user), bearer(token_of(user, tenant_a))) for user in (admin_a, compliance_a, radiologist_a)
    ]
    missing = []
    for route in tenant_routes():
        if "get" not in route.methods:
            continue
        url = route.path("north", world.values)
        statuses = []
        for page, api in callers:  # until one of them reaches it
            statuses.append(_call(page if route.door == "page" else api, "get", url, route.door).status_code)
            if statuses[-1] != 404:
                break
        if all(status == 404 for status in statuses) and route.name not in NOT_FOUND_FOR_OWNERS:
            missing.append(f"{route.name} {url}: {statuses}")
    assert not missing, "the sweep's objects are not found by their own tenant:\n" + "\n".join(missing)
