"""Plain logs (SECURITY.md E9, G12): a representative run through the real stack (ingest, a rejected upload,
QIDO-RS searching by patient name and id with a bearer token, a wrong token, sign-in attempts, a 404 and a 500)
writes JSON lines with request ids, and never the seeded patient's name, id or accession, a token or a password;
CR/LF in user-controlled text never starts a line of its own. Every other test's log output is checked for tokens
and the default synthetic patient by the autouse guard of tests/conftest.py (tests/log_guard.py)."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest
from django.test import Client

from portal.log_filters import JsonFormatter, PlainFormatter, RequestIdFilter, StripQueryStringFilter
from studies import services
from studies.dicom.synthetic import make_instance
from studies.models import IngestItem
from tenants.scoping import tenant_scope
from tests.log_guard import LogGuard
from tests.studies.dicomweb.reading import ingest
from tests.tenants.factories import DEFAULT_PASSWORD

PATIENT_NAME = "LOGLEAK^ZEBEDEE"
PATIENT_ID = "LOGLEAK-PID-7731"
ACCESSION = "LOGACC991"
INJECTED = "mallory\r\nFAKE 2026-01-01 INFO forged: admin signed in"


@pytest.mark.django_db(transaction=True)  # ingestion runs on commit
def test_a_representative_run_logs_json_lines_without_patient_data_or_tokens(
    settings, api_client_for, radiologist_a, tenant_a
):
    settings.ROOT_URLCONF = "tests.portal.urls_raising"  # the portal plus /boom/, a view that fails
    guard = LogGuard(forbidden=("LOGLEAK", "ZEBEDEE", PATIENT_ID, ACCESSION, DEFAULT_PASSWORD)).install()
    tokens = []
    try:
        ingest(tenant_a, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, accession=ACCESSION, rows=16, columns=16)
        with tenant_scope(tenant_a):
            services.ingest_receive(source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=b"not DICOM " * 20)

        api = api_client_for(radiologist_a, tenant_a)
        tokens.append(api._credentials["HTTP_AUTHORIZATION"].removeprefix("Bearer "))
        found = api.get("/dicomweb/north/studies", {"PatientName": PATIENT_NAME, "PatientID": PATIENT_ID})
        assert found.status_code == 200
        assert PATIENT_ID.encode() in found.content
        bad = api.get("/dicomweb/north/studies", {"PatientName": "LOGLEAK*" + "*" * 40})
        assert bad.status_code == 400

        forged = "enc_" + "x" * 43
        tokens.append(forged)
        assert Client().get("/dicomweb/north/studies", HTTP_AUTHORIZATION=f"Bearer {forged}").status_code == 401

        browser = Client(raise_request_exception=False)
        login = {"username": radiologist_a.username, "password": DEFAULT_PASSWORD + "-wrong"}
        assert browser.post("/accounts/login/", login).status_code == 200
        browser.post("/accounts/login/", {"username": INJECTED, "password": DEFAULT_PASSWORD})
        assert browser.get("/t/north/studies/%0D%0AFAKE%20forged").status_code in (302, 404)
        assert browser.get("/no/such/page/%0A%0DFAKE").status_code == 404
        assert browser.get("/boom/").status_code == 500
    finally:
        guard.remove()

    assert guard.lines, "the run logged nothing: the check would prove nothing"
    records = [json.loads(line) for line in guard.lines]  # every line is one JSON object
    assert all(set(r) >= {"time", "level", "logger", "message", "request_id"} for r in records)
    failures = [r for r in records if r["logger"] == "django.request"]
    assert failures, "the 4xx and 500 answers are logged"
    assert all(r["request_id"] for r in failures)
    assert any("exception" in r and "the secret detail" in r["exception"] for r in failures)
    # The forged line is kept inside its record's message (Django escapes the path, our formatter the rest).
    assert any("FAKE forged" in r["message"] for r in records)
    assert not any(line.startswith("FAKE") or "\n" in line or "\r" in line for line in guard.lines)
    assert guard.leaks() == []
    text = guard.text()
    for token in tokens:
        assert token not in text
        assert token[4:20] not in text


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("portal.accounts", logging.WARNING, __file__, 1, message, args, None)


def test_cr_lf_in_a_user_name_is_escaped_in_both_formats():
    for formatter in (JsonFormatter(), PlainFormatter()):
        record = _record("Sign-in failed for %s", INJECTED)
        RequestIdFilter().filter(record)
        line = formatter.format(record)
        assert "\n" not in line
        assert "\r" not in line
        assert "mallory\\r\\nFAKE" in line


def test_tracebacks_in_the_plain_format_cannot_forge_a_line():
    try:
        raise ValueError(INJECTED)
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = PlainFormatter().format(record)
    assert all(line.startswith(("    ", "2")) for line in text.splitlines())  # the record's line, then indented


def test_tokens_are_masked_wherever_they_appear():
    raw = "enc_" + "A1b2" * 11
    record = _record("token %s refused, device token %s", raw, "encd_" + "z" * 40)
    StripQueryStringFilter().filter(record)
    message = record.getMessage()
    assert "A1b2" not in message
    assert "zzzz" not in message
    assert message == "token enc_… refused, device token encd_…"


def test_the_configured_handler_writes_json_with_the_request_id(settings):
    from audit.context import audit_context

    handler_conf = settings.LOGGING["handlers"]["console"]
    assert handler_conf["formatter"] == "json"
    assert handler_conf["filters"] == ["strip_query", "request_id"]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(StripQueryStringFilter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("enclave.test.logs")
    logger.addHandler(handler)
    try:
        with audit_context(request_id="req-1234abcd"):
            logger.warning("GET /dicomweb/north/studies?PatientName=%s", PATIENT_NAME)
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["request_id"] == "req-1234abcd"
    assert entry["message"] == "GET /dicomweb/north/studies?…"
    assert entry["level"] == "WARNING"
    assert entry["time"].endswith("+00:00")  # UTC, with its offset written (SECURITY.md E8)


BIRTH_DATE_WRITTEN_WRONG = "1931-07-04"  # a DA written with dashes: pydicom's reading validation complains, quoting it


def _with_birth_date_written_wrong(**kw: object) -> bytes:
    """make_instance's file with its PatientBirthDate as BIRTH_DATE_WRITTEN_WRONG (not YYYYMMDD)."""
    import warnings

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(make_instance(**kw)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # building the test's file, not what is tested
        ds.PatientBirthDate = BIRTH_DATE_WRITTEN_WRONG
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)  # ingestion runs on commit
def test_a_value_pydicom_finds_invalid_is_not_quoted_in_the_log_nor_on_stderr(capfd, tenant_a):
    """pydicom warns about a value that breaks its VR's rule quoting the value ("Invalid value for VR DA:
    '1931-07-04'."), through its logger and as a Python warning (stderr; a Celery worker logs its stderr): a
    patient's birth date or name in a plain log. The record keeps which rule was broken, never the value; the
    warning is not printed."""
    guard = LogGuard(forbidden=(BIRTH_DATE_WRITTEN_WRONG,)).install()
    try:
        with tenant_scope(tenant_a):
            item = services.ingest_receive(
                source=IngestItem.Source.UPLOAD, batch=uuid.uuid4(), data=_with_birth_date_written_wrong()
            )
            item.refresh_from_db()
            assert item.instance is not None, item.reason  # stored as sent: the archive keeps what it was given
    finally:
        guard.remove()
    captured = capfd.readouterr()
    assert BIRTH_DATE_WRITTEN_WRONG not in captured.err + captured.out
    assert guard.leaks() == []
    pydicom_lines = [line for line in guard.lines if '"logger": "pydicom"' in line]
    assert any("Invalid value for VR DA" in line for line in pydicom_lines), guard.text()[-2000:]


VALUE_IN_A_FRESH_PROCESS = """
import sys, django
django.setup()
from pydicom.dataset import Dataset
ds = Dataset()
ds.PatientBirthDate = sys.argv[1]  # validated as a value read is (pydicom's reading validation mode)
print("set", len(ds.PatientBirthDate))
"""


def test_pydicoms_warning_quoting_a_value_is_not_printed_by_a_process_as_production_runs():
    """A process set up as gunicorn, the listener and the workers are (django.setup(), outside pytest, whose own
    warning capture would hide what a server prints): pydicom's warning about an invalid value, which quotes it,
    does not reach stderr, and its logger's record withholds the value."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test", "PYTHONWARNINGS": ""}
    out = subprocess.run([sys.executable, "-c", VALUE_IN_A_FRESH_PROCESS, BIRTH_DATE_WRITTEN_WRONG], cwd=root,
                         env=env, capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert out.stdout.split() == ["set", str(len(BIRTH_DATE_WRITTEN_WRONG))]
    assert BIRTH_DATE_WRITTEN_WRONG not in out.stderr + out.stdout
    assert "Invalid value for VR DA: [value withheld]" in out.stderr, out.stderr
    assert "UserWarning" not in out.stderr, out.stderr
