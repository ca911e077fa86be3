"""DICOM TLS (SECURITY.md A8, A9): the listener in this process with a server certificate from the test CA, spoken
to by pynetdicom's SCU over TLS on loopback. A modality with a certificate the CA signed is served; no certificate,
another CA's certificate, TLS 1.1 and plain DICOM are refused at the handshake, each on the platform's audit chain as
a Security Alert of type Node Authentication."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from devices.models import Device
from studies.dicom.synthetic import make_study
from studies.models import Instance
from studies.net.scp import ListenerServer, start_listener, stop_listener
from tenants.scoping import tenant_scope
from tests.studies.net.scu import associate, echo, write_files
from tests.tlsca import TestCA

SUCCESS = 0x0000


@pytest.fixture
def tls_settings(settings: Any, test_ca: TestCA) -> Any:
    server = test_ca.server()
    settings.DICOM_TLS_CERT = str(server.cert)
    settings.DICOM_TLS_KEY = str(server.key)
    settings.DICOM_TLS_CA = str(test_ca.ca_pem)
    settings.DICOM_TLS_REQUIRE_CLIENT_CERT = True
    return settings


@pytest.fixture
def tls_listener(transactional_db: Any, tls_settings: Any) -> Iterator[ListenerServer]:
    server = start_listener("127.0.0.1", 0)
    try:
        yield server
    finally:
        stop_listener(server, grace=5)


@pytest.fixture
def demo_ct_cert(test_ca: TestCA) -> ssl.SSLContext:
    return test_ca.client_context(test_ca.client("demo-ct"))


def _tls_refusals() -> list[AuditEvent]:
    return list(AuditEvent.unscoped_objects.filter(event_type=EventType.ASSOCIATION_REJECTED, extra__layer="tls"))


def _eventually(found: Callable[[], list[AuditEvent]]) -> list[AuditEvent]:
    """The listener records a refused handshake in its own thread, after the alert has reached the client."""
    deadline = time.monotonic() + 10
    while not (rows := found()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


def test_echo_and_store_with_a_client_certificate(tls_listener, north, demo_ct, demo_ct_cert, tmp_path):
    assert tls_listener.ssl_context is not None
    assert echo(port=tls_listener.port, calling="DEMO_CT", called="NORTH", tls=demo_ct_cert) == SUCCESS

    files = write_files(tmp_path, make_study(series=1, instances_per_series=2, patient_id="TLS0001"))
    versions: list[str | None] = []
    result = associate(
        port=tls_listener.port, calling="DEMO_CT", called="NORTH", files=files, tls=demo_ct_cert,
        during=lambda assoc: versions.append(assoc.dul.socket.socket.version()),
    )  # fmt: skip

    assert result.statuses == [SUCCESS, SUCCESS]
    assert versions[0] in ("TLSv1.2", "TLSv1.3")
    with tenant_scope(north):
        assert Instance.objects.count() == 2
    assert _tls_refusals() == []


def test_the_device_gate_still_applies_over_tls(tls_listener, north, demo_ct, demo_ct_cert):
    """A valid certificate is not a device approval: an unknown calling AE title is still rejected."""
    result = associate(port=tls_listener.port, calling="ROGUE_SCU", called="NORTH", tls=demo_ct_cert)
    assert result.rejected
    with tenant_scope(north):
        assert AuditEvent.objects.filter(event_type=EventType.ASSOCIATION_REJECTED).count() == 1


def test_no_client_certificate_is_refused_and_recorded(tls_listener, north, demo_ct, test_ca):
    assert echo(port=tls_listener.port, calling="DEMO_CT", called="NORTH", tls=test_ca.client_context()) is None

    [event] = _eventually(_tls_refusals)
    assert event.tenant_id is None  # no DICOM was read: the platform's chain
    assert event.event_id == "110113"  # Security Alert
    assert event.event_type_code == "110126"  # Node Authentication
    assert event.outcome == Outcome.SERIOUS_FAILURE
    assert event.source_address == "127.0.0.1"
    assert "CERTIFICATE" in event.extra["reason"].upper()
    alert = SecurityAlert.unscoped_objects.get(event=event)
    assert alert.kind == "dicom_tls_refused"
    with tenant_scope(north):
        assert Instance.objects.count() == 0


def test_a_certificate_from_another_ca_is_refused(tls_listener, north, demo_ct, test_ca, tmp_path):
    stranger = TestCA(tmp_path / "other-ca", name="Somebody Else's CA")
    context = test_ca.client_context(stranger.client("demo-ct"))  # trusts our server, presents a foreign cert

    assert echo(port=tls_listener.port, calling="DEMO_CT", called="NORTH", tls=context) is None
    [event] = _eventually(_tls_refusals)
    assert "CERTIFICATE" in event.extra["reason"].upper()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_is_refused(tls_listener, demo_ct_cert, test_ca):
    old = test_ca.client_context(test_ca.client("old-modality"))
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer what an old modality would
    with (
        socket.create_connection(("127.0.0.1", tls_listener.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError) as refused,
    ):
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    # The server's alert: this client did offer TLS 1.1 (it would say NO_PROTOCOLS_AVAILABLE if it could not).
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    [event] = _eventually(_tls_refusals)
    assert event.extra["reason"] == "UNSUPPORTED_PROTOCOL"

    # The same client allowed TLS 1.2 is served: the refusal was the version, not the certificate.
    with (
        socket.create_connection(("127.0.0.1", tls_listener.port), timeout=10) as raw,
        demo_ct_cert.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock,
    ):
        assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")


def test_plain_dicom_to_the_tls_port_is_refused(tls_listener, north, demo_ct):
    assert echo(port=tls_listener.port, calling="DEMO_CT", called="NORTH") is None
    [event] = _eventually(_tls_refusals)
    assert event.extra["address"] == "127.0.0.1"


def test_a_port_probe_is_logged_not_alerted(tls_listener, demo_ct_cert):
    socket.create_connection(("127.0.0.1", tls_listener.port), timeout=10).close()
    # A real client afterwards is served, so the probe's thread has come and gone without an alert.
    with (
        socket.create_connection(("127.0.0.1", tls_listener.port), timeout=10) as raw,
        demo_ct_cert.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass
    assert _tls_refusals() == []


def test_client_certificates_may_be_optional(transactional_db, tls_settings, north, demo_ct, test_ca):
    tls_settings.DICOM_TLS_REQUIRE_CLIENT_CERT = False
    server = start_listener("127.0.0.1", 0)
    try:
        assert echo(port=server.port, calling="DEMO_CT", called="NORTH", tls=test_ca.client_context()) == SUCCESS
    finally:
        stop_listener(server, grace=5)


def test_requiring_client_certificates_needs_a_ca(transactional_db, tls_settings):
    tls_settings.DICOM_TLS_CA = ""
    with pytest.raises(ImproperlyConfigured, match="DICOM_TLS_CA"):
        start_listener("127.0.0.1", 0)


def test_a_listener_without_a_certificate_speaks_plain_dicom(listener, north, demo_ct):
    assert listener.ssl_context is None
    assert echo(port=listener.port, calling="DEMO_CT", called="NORTH") == SUCCESS
    assert demo_ct.kind == Device.Kind.MODALITY


def test_dcmtk_storescu_over_tls(tls_listener, north, demo_ct, test_ca, tmp_path):
    """Another implementation: dcmtk's storescu with its client certificate (`+tls key cert`, `+cf` our CA)."""
    storescu = shutil.which("storescu")
    assert storescu, "dcmtk's storescu is missing: scripts/system-deps.sh installs dcmtk"
    issued = test_ca.client("dcmtk-ct")
    files = write_files(tmp_path, make_study(series=1, instances_per_series=2, patient_id="TLS0002"))
    done = subprocess.run(
        [storescu, "+tls", str(issued.key), str(issued.cert), "+cf", str(test_ca.ca_pem), "-aet", "DEMO_CT",
         "-aec", "NORTH", "127.0.0.1", str(tls_listener.port), *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with tenant_scope(north):
        assert Instance.objects.count() == 2
    # Without its certificate (anonymous TLS), the same storescu is refused at the handshake.
    refused = subprocess.run(
        [storescu, "+tla", "+cf", str(test_ca.ca_pem), "-aet", "DEMO_CT", "-aec", "NORTH", "127.0.0.1",
         str(tls_listener.port), str(files[0])],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert _eventually(_tls_refusals)
