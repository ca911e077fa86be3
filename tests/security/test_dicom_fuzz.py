"""Fuzzing the DICOM inputs (issue 14): hypothesis mutates valid synthetic Part-10 files (tests/security/
dicom_mutations.py: bit flips, truncations, huge and undefined lengths, wrong VRs, deep sequences, bogus transfer
syntaxes, garbage preambles) and sends them to the parser, through the STOW-RS door and through the C-STORE door
(pynetdicom against the real listener, started by the test on a free loopback port).

Each file is stored or refused with a reason a person can read (never naming the patient); nothing raises, no
answer is a 5xx or an "out of resources", no ingest item is left half-way, nothing refused is indexed, and after the
run the listener still answers C-ECHO. No time is asserted: the parser's limits (size, dimensions, nesting depth,
inflation) are what bound the work per file.

The budget in `make test` is a few hundred files in all; `ENCLAVE_FUZZ_DICOM=N` multiplies it for a longer run
(the figures of one are in the report of issue 14). Every run prints what it saw (with -s): verdicts by kind.
"""

from __future__ import annotations

import io
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from studies.dicom.parse import InvalidDicom, parse
from studies.models import IngestItem, Instance
from studies.net.reactor import PromptAE
from studies.net.scp import STATUS_OUT_OF_RESOURCES
from studies.services.ingest import ingest_limits
from tenants.scoping import tenant_scope
from tests.security.dicom_mutations import PATIENT_DATA, bases, mutated_files
from tests.studies.dicomweb.helpers import FAILURE_REASON, comment, failed, post_parts, referenced, value
from tests.studies.net.scu import echo

SCALE = int(os.environ.get("ENCLAVE_FUZZ_DICOM", "1"))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


STOW = "/dicomweb/north/studies"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _no_patient_data(reason: str) -> None:
    assert reason.strip(), "a refusal without a reason"
    assert not any(value in reason for value in PATIENT_DATA), reason


def test_the_bases_are_valid() -> None:
    """The control: every file the mutations start from is accepted as it is, the one too deep aside."""
    for base in bases():
        if base.valid:
            parsed, _ = parse(base.data, limits=ingest_limits())
            assert parsed.sop_instance_uid, base.name
        else:
            with pytest.raises(InvalidDicom, match="nested more than 32 deep"):
                parse(base.data, limits=ingest_limits())


def test_the_parser_stores_or_refuses_every_mutated_file_with_its_reason() -> None:
    verdicts: Counter[str] = Counter()

    @fuzz(400)
    @given(mutated_files())
    def check(case: tuple[str, bytes]) -> None:
        _, data = case
        try:
            parsed, _ = parse(data, limits=ingest_limits())
        except InvalidDicom as exc:
            kind, reason = exc.kind, exc.reason
            _no_patient_data(reason)
            assert kind in {"too_large", "not_dicom", "unsupported_syntax", "unreadable", "invalid"}
            verdicts[kind] += 1
        else:
            assert parsed.sop_instance_uid
            verdicts["accepted"] += 1

    check()
    print(f"parser: {sum(verdicts.values())} files, {dict(verdicts)}")
    assert verdicts["accepted"], "no mutation left a file whole: the control of the strategy"
    assert sum(verdicts.values()) > verdicts["accepted"], "the mutations changed nothing"


def _final(tenant: Any) -> tuple[list[IngestItem], int]:
    with tenant_scope(tenant):
        return list(IngestItem.objects.all()), Instance.objects.count()


def _assert_nothing_half_written(tenant: Any) -> Counter[str]:
    """Every item reached a final state; a refused one says why and names no patient; nothing refused is indexed;
    every instance is the one of a stored item (its blob is a required column)."""
    items, instances = _final(tenant)
    states: Counter[str] = Counter(item.state for item in items)
    assert set(states) <= set(IngestItem.FINAL_STATES), states
    for item in items:
        if item.state in (IngestItem.State.REJECTED, IngestItem.State.CONFLICT):
            _no_patient_data(item.reason)
        if item.state == IngestItem.State.REJECTED:
            assert item.instance_id is None
            assert item.failure != IngestItem.Failure.INTERNAL, f"a fault of ours: {item.reason}"
    stored = {item.instance_id for item in items if item.state in (IngestItem.State.STORED, IngestItem.State.DUPLICATE)}
    assert None not in stored
    assert instances == len(stored)
    return states


@pytest.mark.django_db(transaction=True)
def test_stow_rs_stores_or_refuses_every_mutated_file_with_its_reason(api_client_for, tenant_a, technologist_a):
    client = api_client_for(technologist_a, tenant_a)
    statuses: Counter[int] = Counter()

    @fuzz(80)
    @given(mutated_files())
    def send(case: tuple[str, bytes]) -> None:
        _, data = case
        response = post_parts(client, STOW, [data])
        statuses[response.status_code] += 1
        assert response.status_code in (200, 202, 409), (response.status_code, response.content[:300])
        body = response.json()
        for refusal in failed(body):
            assert value(refusal, FAILURE_REASON), refusal
            _no_patient_data(comment(refusal) or "")
        assert len(failed(body)) + len(referenced(body)) == 1

    send()
    states = _assert_nothing_half_written(tenant_a)
    print(f"STOW-RS: {sum(statuses.values())} requests, statuses {dict(statuses)}, items {dict(states)}")
    assert states[IngestItem.State.REJECTED] > 0


@pytest.mark.django_db(transaction=True)
def test_stow_rs_a_uid_under_a_numeric_vr_is_refused_not_a_server_error(api_client_for, tenant_a, technologist_a):
    """Found by the longer fuzzing run: SOP Class UID re-labelled UL made pydicom raise BytesLengthException (not a
    ValueError) while STOW-RS read the identifying UIDs for its answer, and the request ended in a 500."""
    data = bytearray(bases()[0].data)
    at = data.index(b"\x08\x00\x16\x00UI", bases()[0].meta_end)
    data[at + 4 : at + 6] = b"UL"

    response = post_parts(api_client_for(technologist_a, tenant_a), STOW, [bytes(data)])

    assert response.status_code == 409, response.content
    [refusal] = failed(response.json())
    assert value(refusal, FAILURE_REASON)
    _no_patient_data(comment(refusal))
    _assert_nothing_half_written(tenant_a)


class _Sender:
    """One association kept open across examples (opened again if the listener ended it), with a presentation
    context for every base file's SOP class and transfer syntax."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ae = PromptAE(ae_title="DEMO_CT")
        self.ae.add_requested_context(Verification)
        for base in bases():
            meta = pydicom.dcmread(io.BytesIO(base.data), stop_before_pixels=True).file_meta
            self.ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        self.assoc: Association | None = None
        self.associations = 0

    def send(self, path: str) -> tuple[int, str]:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title="NORTH")
            self.associations += 1
            assert self.assoc.is_established, "the listener refused a fresh association"
        status = self.assoc.send_c_store(path)
        if "Status" not in status:  # no answer: the association was aborted; the next file opens a new one
            self.assoc = None
            return -1, ""
        return int(status.Status), str(status.get("ErrorComment", ""))

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


@pytest.fixture
def sender(listener: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Sender]:
    # Send each file's data set bytes as they are: by default pynetdicom decodes the file and encodes it again,
    # which a damaged file fails on the client's side, before the listener ever sees it.
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    sender = _Sender(listener.port)
    try:
        yield sender
    finally:
        sender.close()


def test_c_store_stores_or_refuses_every_mutated_file_with_its_reason(listener, north, demo_ct, sender, tmp_path):
    statuses: Counter[int] = Counter()

    @fuzz(60)
    @given(mutated_files(keep_meta=True))
    def send(case: tuple[str, bytes]) -> None:
        _, data = case
        path = tmp_path / f"{uuid.uuid4().hex}.dcm"
        path.write_bytes(data)
        status, reason = sender.send(str(path))
        statuses[status] += 1
        assert status != STATUS_OUT_OF_RESOURCES, reason
        if status not in (0x0000, -1):
            _no_patient_data(reason)

    send()
    sender.close()
    states = _assert_nothing_half_written(north)
    named = {hex(code) if code >= 0 else "aborted": count for code, count in statuses.items()}
    print(
        f"C-STORE: {sum(statuses.values())} files over {sender.associations} association(s), "
        f"statuses {named}, items {dict(states)}"
    )
    assert states[IngestItem.State.REJECTED] > 0
    # the listener is still there for the next modality
    assert echo(port=listener.port, calling="DEMO_CT", called="NORTH") == 0x0000
