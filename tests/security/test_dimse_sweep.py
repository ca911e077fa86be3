"""The DIMSE side of the isolation sweep (issue 14): every service class the listener offers (C-ECHO, C-STORE, C-FIND,
C-GET, C-MOVE), asked of tenant A's AE title over loopback by each kind of peer that must not reach it: an unknown
AE, a device of tenant B, a revoked device of tenant A. Either the association is refused, or each operation fails
and returns none of tenant A's data sets; nothing the peer sends is stored."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from studies.dicom.synthetic import make_study
from studies.models import Instance
from studies.net.reactor import PromptAE
from tenants.scoping import tenant_scope
from tests.devices.helpers import revoke
from tests.studies.net.conftest import approved_modality
from tests.studies.net.scu import associate, write_files

pytestmark = pytest.mark.django_db(transaction=True)

FIND = StudyRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
SUCCESS_OR_PENDING = {0x0000, 0xFF00, 0xFF01}


@dataclass
class Outcome:
    established: bool
    statuses: list[int] = field(default_factory=list)
    data: list[Dataset] = field(default_factory=list)


def _study_query(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    ds.PatientName = ""
    ds.PatientID = ""
    return ds


def _run(port: int, calling: str, service: str, study_uid: str, probe: bytes) -> Outcome:
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = PromptAE(ae_title=calling)
    for context in (Verification, CTImageStorage, FIND, GET, MOVE):
        ae.add_requested_context(context)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="NORTH", ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    if not assoc.is_established:
        return Outcome(established=False)
    outcome = Outcome(established=True, data=received)
    try:
        SERVICES[service](assoc, outcome, study_uid, probe, calling)
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


def _status(ds: Dataset | None) -> int:
    return int(ds.Status) if ds is not None and "Status" in ds else -1


def _echo(assoc: Association, out: Outcome, *_: Any) -> None:
    out.statuses.append(_status(assoc.send_c_echo()))


def _store(assoc: Association, out: Outcome, _uid: str, probe: bytes, _calling: str) -> None:
    out.statuses.append(_status(assoc.send_c_store(dcmread(io.BytesIO(probe)))))


def _find(assoc: Association, out: Outcome, uid: str, *_: Any) -> None:
    for status, found in assoc.send_c_find(_study_query(uid), FIND):
        out.statuses.append(_status(status))
        if found is not None and _status(status) in (0xFF00, 0xFF01):
            out.data.append(found)


def _get(assoc: Association, out: Outcome, uid: str, *_: Any) -> None:
    for status, _found in assoc.send_c_get(_study_query(uid), GET):
        out.statuses.append(_status(status))


def _move(assoc: Association, out: Outcome, uid: str, _probe: bytes, calling: str) -> None:
    for status, _found in assoc.send_c_move(_study_query(uid), calling, MOVE):
        out.statuses.append(_status(status))


SERVICES: dict[str, Callable[..., None]] = {
    "C-ECHO": _echo, "C-STORE": _store, "C-FIND": _find, "C-GET": _get, "C-MOVE": _move,
}  # fmt: skip


def _instances(tenant: Any) -> int:
    with tenant_scope(tenant):
        return Instance.objects.count()


def test_no_foreign_or_revoked_peer_reaches_tenant_a_over_dimse(
    listener, north, south, demo_ct, admin_a, tmp_path
) -> None:
    study = make_study(series=1, instances_per_series=1, patient_id="DIMSE-A", patient_name="DIMSE^SECRET")
    sent = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=write_files(tmp_path / "a", study))
    assert sent.statuses == [0]
    study_uid = str(dcmread(io.BytesIO(study[0]), stop_before_pixels=True).StudyInstanceUID)
    approved_modality(south, "SOUTH_CT")
    revoke(north, admin_a, approved_modality(north, "REVOKED_CT"), reason="stolen")
    stored_before = _instances(north)
    probe = make_study(series=1, instances_per_series=1, patient_id="PROBE", study_date=date(2024, 1, 1))[0]

    problems = []
    for peer, why in (
        ("STRANGER", "an unknown AE"),
        ("SOUTH_CT", "tenant B's device"),
        ("REVOKED_CT", "a revoked device"),
    ):
        for service in SERVICES:
            outcome = _run(listener.port, peer, service, study_uid, probe)
            where = f"{peer} ({why}) {service} to NORTH"
            if not outcome.established:
                continue
            if set(outcome.statuses) & SUCCESS_OR_PENDING:
                problems.append(f"{where}: statuses {[hex(s) for s in outcome.statuses]}")
            if outcome.data:
                problems.append(f"{where}: {len(outcome.data)} data set(s) of tenant A returned")
    assert not problems, "\n".join(problems)
    assert _instances(north) == stored_before, "a refused peer's object was stored"
    # The control: the approved modality of tenant A does reach its study by each query/retrieve class.
    assert _run(listener.port, "DEMO_CT", "C-FIND", study_uid, probe).data
