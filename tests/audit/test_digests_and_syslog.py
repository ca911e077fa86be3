"""Signed digests of the chain heads, and forwarding to a syslog receiver (issue 12).

The digests: a forged digest and a truncated tail (as a database superuser with triggers disabled) are found by
`audit_verify`. The forwarding: a receiver on loopback started by the test gets every event exactly once and in
order, across a receiver that is down for a while.
"""

from __future__ import annotations

import re
import socket
import threading

import psycopg
import pytest
from django.db import DatabaseError, transaction

from audit.events import EventType
from audit.models import AuditDigest, AuditEvent, SyslogCursor
from audit.services import audit_digests_sign, audit_syslog_forward, syslog_message
from tests.audit.helpers import record
from tests.audit.test_tamper import _verify, _verify_fails
from tests.chains import chain_of, platform_read
from tests.databases import superuser_connect_kwargs


def _superuser(*statements, disable=("audit_auditevent", "audit_auditevent_append_only")):
    table, trigger = disable
    # The server the tests run on (the embedded one of `make test`, or DATABASE_URL's), as its superuser.
    with psycopg.connect(**superuser_connect_kwargs(), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
        finally:
            conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


@pytest.mark.django_db
def test_digests_sign_every_chain_head_once_a_day(tenant_a, tenant_b, admin_a):
    record(tenant_a, EventType.LOGOUT)
    written = audit_digests_sign()
    assert written >= 2
    digest = platform_read(lambda: AuditDigest.objects.get(chain__tenant=tenant_a))
    chain = chain_of(tenant_a)
    assert (digest.last_sequence, digest.last_hash) == (chain.last_sequence, chain.last_hash)
    assert len(digest.signature) == 128  # Ed25519: 64 bytes
    assert audit_digests_sign() == 0  # one a day
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditDigest.objects.filter(pk=digest.pk).update(signature="0" * 64)
    assert "OK" in _verify("--tenant", "north")


@pytest.mark.django_db
def test_without_a_key_nothing_is_signed_and_verify_says_so(tenant_a, settings):
    settings.AUDIT_SIGNING_KEY = ""
    assert audit_digests_sign() == 0
    assert not AuditDigest.objects.exists()
    assert "AUDIT_SIGNING_KEY is not set: signed digests not checked." in _verify()


@pytest.mark.django_db(transaction=True)
def test_a_forged_digest_is_found(tenant_a):
    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign()
    digest = platform_read(lambda: AuditDigest.objects.get(chain__tenant=tenant_a))
    _superuser(
        ("UPDATE audit_auditdigest SET last_sequence = 1, signature = %s WHERE id = %s", ["ab" * 32, digest.pk]),
        disable=("audit_auditdigest", "audit_auditdigest_append_only"),
    )
    assert f"digest of {digest.day} has a forged signature" in _verify_fails("--tenant", "north")


@pytest.mark.django_db(transaction=True)
def test_a_truncated_tail_with_a_rewound_head_is_found_by_the_digest(tenant_a):
    for n in range(4):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username=f"guess{n}")
    audit_digests_sign()
    chain = chain_of(tenant_a)
    assert chain.last_sequence == 5
    keep = AuditEvent.unscoped_objects.get(chain=chain, sequence=3)
    # The attacker deletes the last two events and rewinds the head so that the chain itself is whole again.
    _superuser(
        ("DELETE FROM audit_auditevent WHERE chain_id = %s AND sequence > 3", [chain.pk]),
        ("UPDATE audit_auditchain SET last_sequence = 3, last_hash = %s WHERE id = %s", [keep.hash, chain.pk]),
    )
    message = _verify_fails("--tenant", "north")
    assert "signed sequence 5, which the chain no longer holds" in message
    assert "chain broken" not in message  # only the digest can tell


# Syslog forwarding
# ------------------------------------------------------------------------------


class Receiver:
    """An RFC 5425/6587 octet-counting syslog receiver on loopback, in a thread."""

    def __init__(self, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR: a restart reuses the port
        self.port = self.server.getsockname()[1]
        self.messages: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while chunk := conn.recv(65536):
                    buffer += chunk
                    while b" " in buffer:
                        length, rest = buffer.split(b" ", 1)
                        if len(rest) < int(length):
                            break
                        self.messages.append(rest[: int(length)])
                        buffer = rest[int(length) :]

    def stop(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(): the port is closed from now on
        self.server.close()
        self.thread.join(timeout=5)

    def sequences(self, tenant_slug: str) -> list[int]:
        found = []
        for message in self.messages:
            match = re.search(rb'\[enclave@32473 tenant="([^"]+)" seq="(\d+)"', message)
            assert match, message
            if match.group(1).decode() == tenant_slug:
                found.append(int(match.group(2)))
        return found


def _wait(predicate, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.django_db
def test_every_event_is_forwarded_once_in_order_across_a_receiver_restart(tenant_a, tenant_b, settings):
    receiver = Receiver()
    settings.AUDIT_SYSLOG_HOST, settings.AUDIT_SYSLOG_PORT, settings.AUDIT_SYSLOG_PROTOCOL = (
        "127.0.0.1", receiver.port, "tcp",
    )  # fmt: skip
    for n in range(3):
        record(tenant_a, EventType.LOGIN_FAILED, actor_username=f"guess{n}")
    first = audit_syslog_forward()
    assert _wait(lambda: len(receiver.messages) == first)
    assert receiver.sequences("north") == [1, 2, 3, 4]
    port = receiver.port
    receiver.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    # The receiver is down: events are kept, nothing is lost, the cursor does not move.
    for n in range(2):
        record(tenant_a, EventType.LOGOUT, actor_username=f"later{n}")
    assert audit_syslog_forward() == 0
    assert platform_read(lambda: SyslogCursor.objects.get(chain__tenant=tenant_a)).last_sequence == 4

    restarted = Receiver(port)
    try:
        assert audit_syslog_forward() == 2
        assert _wait(lambda: len(restarted.messages) == 2)
        assert restarted.sequences("north") == [5, 6]
        assert audit_syslog_forward() == 0  # nothing twice
    finally:
        restarted.stop()


@pytest.mark.django_db
def test_udp_and_the_message_format(tenant_a, settings):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    settings.AUDIT_SYSLOG_HOST, settings.AUDIT_SYSLOG_PORT, settings.AUDIT_SYSLOG_PROTOCOL = (
        "127.0.0.1", server.getsockname()[1], "udp",
    )  # fmt: skip
    event = record(tenant_a, EventType.LOGIN_FAILED, actor_username="mallory", outcome=4)
    try:
        assert audit_syslog_forward() == 2
        datagrams = [server.recv(65536) for _ in range(2)]
    finally:
        server.close()
    assert datagrams[1] == syslog_message(event, hostname=socket.gethostname())
    header = datagrams[1].split(b"\xef\xbb\xbf")[0].decode()
    # <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD]: authpriv.warning (10*8+4) for a failure.
    assert re.fullmatch(
        r"<84>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \S+ enclave - 110114 "
        r'\[enclave@32473 tenant="north" seq="2" outcome="4" hash="[0-9a-f]{64}"\] ',
        header,
    )
    assert b'"UserID":"mallory"' in datagrams[1]


@pytest.mark.django_db
def test_forwarding_is_off_without_a_receiver(tenant_a, settings):
    settings.AUDIT_SYSLOG_HOST = ""
    assert audit_syslog_forward() == 0


def _test_ca_and_server_cert(tmp_path):
    """A CA and a server certificate for 127.0.0.1 made for this test (nothing leaves loopback)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave test syslog CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_file, cert_file, key_file


@pytest.mark.django_db
def test_tls_receiver_gets_the_events_and_an_untrusted_one_gets_none(tenant_a, settings, tmp_path):
    import ssl

    ca_file, cert_file, key_file = _test_ca_and_server_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    plain = socket.create_server(("127.0.0.1", 0))
    port = plain.getsockname()[1]
    received: list[bytes] = []

    def serve():
        try:
            conn, _ = plain.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                while chunk := tls.recv(65536):
                    received.append(chunk)
        except (OSError, ssl.SSLError):
            return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    settings.AUDIT_SYSLOG_HOST, settings.AUDIT_SYSLOG_PORT, settings.AUDIT_SYSLOG_PROTOCOL = (
        "127.0.0.1", port, "tls",
    )  # fmt: skip
    settings.AUDIT_SYSLOG_CA_FILE = ""  # the system CAs do not know the test CA: the receiver is not trusted
    try:
        assert audit_syslog_forward() == 0
        assert platform_read(lambda: SyslogCursor.objects.filter(last_sequence__gt=0).count()) == 0
        thread.join(timeout=5)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        settings.AUDIT_SYSLOG_CA_FILE = str(ca_file)
        assert audit_syslog_forward() == 1  # the tenant's first event, TENANT_CREATED
        thread.join(timeout=5)
    finally:
        plain.close()
    data = b"".join(received)
    assert b'tenant="north" seq="1"' in data
    assert data.split(b" ", 1)[0].isdigit()  # octet-counting framing


# Scheduled verification
# ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_scheduled_verification_records_success_and_alerts_on_failure(tenant_a, tenant_b):
    from audit.models import SecurityAlert
    from audit.tasks import audit_verify_all_task
    from tenants.scoping import tenant_scope

    record(tenant_a, EventType.LOGOUT)
    audit_digests_sign()
    assert audit_verify_all_task.delay().get() == 2  # eager in tests: one verification per tenant ran
    with tenant_scope(tenant_a):
        verified = AuditEvent.objects.filter(event_type=EventType.AUDIT_VERIFIED).get()
    assert verified.outcome == 0
    assert verified.extra["problems"] == []
    assert verified.extra["digests_checked"] is True

    _superuser(("UPDATE audit_auditevent SET actor_username = 'mallory' WHERE tenant_id = %s AND sequence = 2",
                [tenant_a.pk]))  # fmt: skip
    audit_verify_all_task.delay()
    with tenant_scope(tenant_a):
        alert = SecurityAlert.objects.get(kind="audit_verification_failed")
        assert alert.event.outcome == 12
    assert alert.severity == "critical"
    assert "events: broken at sequence 2 (event altered)" in alert.summary
    with tenant_scope(tenant_b):
        assert not SecurityAlert.objects.exists()
