"""One DICOM matcher, two doors: every case runs through QIDO-RS (HTTP) and C-FIND (pynetdicom against the real
listener) and must find the same patients. Then the bounds of issue 8 #5 and #10, through the door that showed
them."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import psycopg
import pytest
from django.db import connection

from audit.events import EventType, Outcome
from studies.dicom.synthetic import make_study
from tests.studies.dicomweb.reading import JSON
from tests.studies.net.scu import associate, write_files
from tests.studies.net.test_qr import Archive, c_find, events, identifier
from tests.studies.net.test_qr import archive as archive  # the fixture, shared

PATIENT_ID = "00100020"

# (keys, the patients of NORTH expected): QR0001 SYNTHETIC^ALPHA, CT, 2024-03-05, ACC-CT-1;
# QR0002 OTHER^BETA, MR, 2023-07-01, ACC-MR-1. SOUTH's SYNTHETIC^GAMMA is never found.
CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"PatientName": "syn*"}, {"QR0001"}),
    ({"PatientName": "*a"}, {"QR0001", "QR0002"}),
    ({"PatientName": "other^beta"}, {"QR0002"}),
    ({"PatientName": "S?NTHETIC*"}, {"QR0001"}),
    ({"PatientName": "SYN%"}, set()),  # % and _ are literal, not SQL wildcards
    ({"PatientName": "SYN_HETIC*"}, set()),
    ({"PatientName": "*A*A*A*A*B"}, set()),
    ({"PatientName": "*GAMMA"}, set()),  # SOUTH's patient
    ({"PatientID": "QR000?"}, {"QR0001", "QR0002"}),
    ({"AccessionNumber": "ACC-??-1"}, {"QR0001", "QR0002"}),
    ({"AccessionNumber": "acc-ct-1"}, set()),  # text other than names is case-sensitive
    ({"ModalitiesInStudy": "MR"}, {"QR0002"}),
    ({"ModalitiesInStudy": ["MR", "CT"]}, {"QR0001", "QR0002"}),
    ({"StudyDate": "20240101-"}, {"QR0001"}),
    ({"StudyDate": "-20231231"}, {"QR0002"}),
    ({"StudyDate": "20230701"}, {"QR0002"}),
    ({"StudyDate": "20230101-20241231", "PatientName": "*ALPHA"}, {"QR0001"}),
]


def _qido(client: Any, keys: dict[str, Any]) -> set[str]:
    params = {k: ",".join(v) if isinstance(v, list) else v for k, v in keys.items()}
    response = client.get("/dicomweb/north/studies", params, HTTP_ACCEPT=JSON)
    if response.status_code == 204:
        return set()
    assert response.status_code == 200, response.content
    return {item[PATIENT_ID]["Value"][0] for item in response.json()}


def _cfind(port: int, keys: dict[str, Any]) -> set[str]:
    found = c_find(port, identifier("STUDY", **{"PatientID": "", **keys}))
    assert found.statuses[-1] == 0x0000, found.statuses
    return {m.PatientID for m in found.matches}


@pytest.fixture
def qido_client(api_client_for: Any, make_member: Any, north: Any) -> Any:
    from tenants.models import Role

    return api_client_for(make_member(north, Role.RADIOLOGIST, "rad_matching"), north)


@pytest.mark.parametrize("door", ["qido", "cfind"])
@pytest.mark.parametrize(("keys", "expected"), CASES, ids=[str(keys) for keys, _ in CASES])
def test_the_same_match_through_both_doors(archive: Archive, qido_client: Any, door: str, keys, expected):
    found = _qido(qido_client, keys) if door == "qido" else _cfind(archive.port, keys)

    assert found == expected


# Issue 8 #5: wildcards never backtrack, and are bounded
# ------------------------------------------------------------------------------


@pytest.fixture
def long_names(listener: Any, north: Any, demo_ct: Any, tmp_path: Any) -> int:
    """Two patients with long names (what made a regex backtrack for seconds): 200 and 64 characters."""
    files = make_study(series=1, instances_per_series=1, patient_id="LONG200", patient_name="A" * 200,
                       accession="L1", study_date=date(2024, 1, 1))  # fmt: skip
    files += make_study(series=1, instances_per_series=1, patient_id="LONG64", patient_name="A" * 63 + "B",
                        accession="L2", study_date=date(2024, 1, 2))  # fmt: skip
    sent = associate(port=listener.port, calling="DEMO_CT", called="NORTH", files=write_files(tmp_path, files))
    assert sent.statuses == [0, 0]
    return listener.port


@pytest.mark.filterwarnings("ignore:The value length")
def test_long_names_with_many_wildcards_are_matched_correctly(long_names: int, qido_client: Any):
    assert _qido(qido_client, {"PatientName": "*A*A*A*A*B"}) == {"LONG64"}
    assert _qido(qido_client, {"PatientName": "*A*A*A*A*A*A*B"}) == {"LONG64"}
    assert _qido(qido_client, {"PatientName": "A" * 200}) == {"LONG200"}
    assert _cfind(long_names, {"PatientName": "*A*A*A*A*A*A*B"}) == {"LONG64"}
    assert _cfind(long_names, {"PatientName": "*a*A*a*A*B"}) == {"LONG64"}


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"PatientName": "*A" * 9}, "more than 8 wildcards"),
        ({"PatientName": "A" * 400}, "longer than 324"),
        ({"ModalitiesInStudy": ",".join(["CT"] * 2000)}, "at most 100 values"),
        ({"StudyInstanceUID": ",".join(f"1.2.{i}" for i in range(101))}, "at most 100 values"),
        ({"SeriesNumber": str(10**20)}, "out of range"),
        ({"offset": str(2**63)}, "offset must be a whole number"),
        ({"offset": "-1"}, "offset must be a whole number"),
        ({"offset": "1.5"}, "offset must be a whole number"),
        ({"limit": "0"}, "limit must be a whole number"),
        ({"limit": str(2**63)}, "limit must be a whole number"),
        ({"StudyDate": "00000101"}, "not a valid date"),
    ],
)
def test_hostile_searches_are_a_400_with_the_reason(qido_client: Any, params, reason):
    path = "/dicomweb/north/series" if "SeriesNumber" in params else "/dicomweb/north/studies"

    response = qido_client.get(path, params, HTTP_ACCEPT=JSON)

    assert response.status_code == 400, response.content
    assert reason in response.content.decode()


def test_a_cfind_over_the_wildcard_bound_is_refused_with_the_reason(archive: Archive, north: Any):
    found = c_find(archive.port, identifier("STUDY", PatientID="", PatientName="*A" * 9))

    assert found.statuses == [0xA900]
    [event] = events(north, EventType.STUDIES_QUERIED)
    assert event.outcome == Outcome.MINOR_FAILURE
    assert "wildcards" in event.outcome_description


@pytest.fixture
def locked_patients(north: Any, settings: Any) -> Any:
    """Another session holds the patient table locked: a search waits on it until the statement timeout."""
    settings.SEARCH_STATEMENT_TIMEOUT_MS = 300
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}) as other:
        other.execute("LOCK TABLE studies_patient IN ACCESS EXCLUSIVE MODE")
        yield
        other.rollback()


def test_a_search_past_the_statement_timeout_is_a_503_with_the_reason(qido_client: Any, locked_patients: Any):
    started = time.monotonic()

    response = qido_client.get("/dicomweb/north/studies", {"PatientName": "*A*B"}, HTTP_ACCEPT=JSON)

    assert response.status_code == 503, response.content
    assert "took too long" in response.content.decode()
    assert time.monotonic() - started < 5


def test_a_cfind_past_the_statement_timeout_answers_a_failure_status(archive: Archive, north: Any, settings: Any):
    settings.SEARCH_STATEMENT_TIMEOUT_MS = 300
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}) as other:
        other.execute("LOCK TABLE studies_patient IN ACCESS EXCLUSIVE MODE")
        found = c_find(archive.port, identifier("STUDY", PatientID="", PatientName="SYN*"))
        other.rollback()

    assert found.statuses == [0xA700]
    outcomes = [e.outcome for e in events(north, EventType.STUDIES_QUERIED)]
    assert outcomes == [Outcome.MINOR_FAILURE]
