"""DICOM TLS (SECURITY.md A8, A9): the listener in this process with a server certificate from the test CA, spoken
to by pynetdicom's SCU over TLS on loopback. A modality with a certificate the CA signed is served; no certificate,
another CA's certificate, TLS 1.1 and plain DICOM are refused at the handshake, each on the platform's audit chain as
a Security Alert of type Node Authentication."""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from audit.events import EventType, Outcome
from audit.models import AuditEvent, SecurityAlert
from devices.models import Device
from devices.services import device_certificate_pin
from studies.dicom.synthetic import make_study
from studies.models import Instance
from studies.net.scp import ListenerServer, start_listener, stop_listener
from tenants import access
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


# A registered certificate (SECURITY.md A8, IHE ATNA node authentication): the device presents its own certificate,
# not merely one the CA signed
# ------------------------------------------------------------------------------


def _sha256_of(issued: Any) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(issued.cert.read_text())).hexdigest()


def _colons(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, 64, 2)).upper()  # as openssl x509 -fingerprint writes it


def _pin(device: Device, tenant: Any, sha256: str, actor: Any) -> Device:
    """`actor` registers `sha256` for `device`, in `tenant`'s scope (the actor's own tenant)."""
    with tenant_scope(device.tenant):
        device = Device.objects.get(pk=device.pk)
    with tenant_scope(tenant):
        return device_certificate_pin(actor=actor, device=device, sha256=sha256)


def _certificate_refusals(tenant: Any) -> list[AuditEvent]:
    with tenant_scope(tenant):
        return list(AuditEvent.objects.filter(event_type=EventType.ASSOCIATION_REJECTED, extra__layer="certificate"))


def test_a_device_with_its_registered_certificate_is_served(tls_listener, north, demo_ct, test_ca, admin_a, tmp_path):
    own = test_ca.client("pinned-ct")
    _pin(demo_ct, north, _colons(_sha256_of(own)), admin_a)
    files = write_files(tmp_path, make_study(series=1, instances_per_series=1, patient_id="TLS0003"))
    result = associate(port=tls_listener.port, calling="DEMO_CT", called="NORTH", files=files,
                       tls=test_ca.client_context(own))  # fmt: skip
    assert result.statuses == [SUCCESS]
    assert _certificate_refusals(north) == []


def test_another_certificate_of_the_same_ca_is_refused_and_recorded(tls_listener, north, demo_ct, test_ca, admin_a,
                                                                    tmp_path):  # fmt: skip
    own, impostor = test_ca.client("pinned-ct"), test_ca.client("impostor-ct")
    _pin(demo_ct, north, _sha256_of(own), admin_a)
    files = write_files(tmp_path, make_study(series=1, instances_per_series=1, patient_id="TLS0004"))

    result = associate(port=tls_listener.port, calling="DEMO_CT", called="NORTH", files=files,
                       tls=test_ca.client_context(impostor))  # fmt: skip

    assert result.rejected
    [event] = _certificate_refusals(north)
    assert (event.event_id, event.event_type_code) == ("110113", "110126")  # Security Alert, Node Authentication
    assert event.outcome == Outcome.SERIOUS_FAILURE
    assert event.source_address == "127.0.0.1"
    assert event.extra["presented_sha256"] == _sha256_of(impostor)
    assert event.extra["registered_sha256"] == _sha256_of(own)
    assert SecurityAlert.unscoped_objects.get(event=event).kind == "dicom_certificate_mismatch"
    with tenant_scope(north):
        assert Instance.objects.count() == 0
    # The refusal is for that device only: its own certificate still gets in.
    assert echo(port=tls_listener.port, calling="DEMO_CT", called="NORTH", tls=test_ca.client_context(own)) == SUCCESS


def test_a_device_with_a_registered_certificate_is_refused_over_plain_dicom(listener, north, demo_ct, test_ca,
                                                                           admin_a):  # fmt: skip
    _pin(demo_ct, north, _sha256_of(test_ca.client("pinned-ct")), admin_a)
    assert echo(port=listener.port, calling="DEMO_CT", called="NORTH") is None
    [event] = _certificate_refusals(north)
    assert event.extra["presented_sha256"] == ""


def test_registering_a_certificate_needs_the_right_is_validated_and_recorded(north, demo_ct, admin_a, radiologist_a,
                                                                             tenant_b, admin_b):  # fmt: skip
    digest = "ab" * 32
    with pytest.raises(access.Forbidden):
        _pin(demo_ct, north, digest, radiologist_a)
    with pytest.raises(ValidationError):
        _pin(demo_ct, north, "not-a-fingerprint", admin_a)
    with pytest.raises((access.Forbidden, access.NotVisible)):
        _pin(demo_ct, tenant_b, digest, admin_b)  # another tenant's administrator
    device = _pin(demo_ct, north, _colons(digest), admin_a)
    assert device.certificate_sha256 == digest
    _pin(demo_ct, north, digest, admin_a)  # the same again: nothing to record
    with tenant_scope(north):
        [event] = AuditEvent.objects.filter(event_type=EventType.DEVICE_CERTIFICATE_PINNED)
    assert event.actor_user == admin_a
    assert event.extra == {"ae_title": "DEMO_CT", "old_sha256": "", "new_sha256": digest}
