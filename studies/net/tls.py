"""DICOM TLS for the listener (PS3.15 B.1 and B.9, the IHE ATNA secure node): TLS 1.2 or later, forward-secret
AEAD suites only, and, by default, a client certificate signed by the CA the hospital gives its modalities.

A peer that fails the handshake never reaches the DICOM layer: no A-ASSOCIATE-RQ is read, so no tenant is known,
and the refusal goes on the platform's audit chain as a Security Alert (110113) of type Node Authentication
(110126), with a SecurityAlert for the operators. A peer that connects and goes away without a word (a port probe,
a load balancer's health check) is only logged: it tried nothing.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection

from audit.context import audit_context
from audit.events import EventType
from audit.services import security_alert_raise

__all__ = ["TLS12_CIPHERS", "handshake", "listener_tls_context"]

logger = logging.getLogger(__name__)

# TLS 1.2 suites (TLS 1.3's are all forward-secret AEAD and not set by this string): ECDHE key exchange, AES-GCM
# or ChaCha20-Poly1305. The BCP 195 recommendation; nothing with RSA key exchange, CBC or SHA-1 MACs.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


def listener_tls_context() -> ssl.SSLContext | None:
    """The listener's TLS context from the settings, or None when DICOM_TLS_CERT is empty (plain DICOM)."""
    if not settings.DICOM_TLS_CERT:
        return None
    if settings.DICOM_TLS_REQUIRE_CLIENT_CERT and not settings.DICOM_TLS_CA:
        raise ImproperlyConfigured(
            "DICOM_TLS_REQUIRE_CLIENT_CERT is on: DICOM_TLS_CA must name the CA that signs the modalities' "
            "certificates."
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(settings.DICOM_TLS_CERT, settings.DICOM_TLS_KEY or None)
    if settings.DICOM_TLS_CA:
        context.load_verify_locations(cafile=settings.DICOM_TLS_CA)
        context.verify_mode = ssl.CERT_REQUIRED if settings.DICOM_TLS_REQUIRE_CLIENT_CERT else ssl.CERT_OPTIONAL
    return context


def handshake(sock: ssl.SSLSocket, address: str) -> bool:
    """Finish the TLS handshake of an accepted connection, in its association's thread; False if it failed (the
    refusal recorded). The peer gets DICOM_TLS_HANDSHAKE_SECONDS, then the socket's own timeout is restored."""
    timeout = sock.gettimeout()
    sock.settimeout(settings.DICOM_TLS_HANDSHAKE_SECONDS)
    try:
        sock.do_handshake()
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
        logger.info("DICOM TLS connection from %s closed during the handshake (%s)", address, type(exc).__name__)
        return False
    except ssl.SSLError as exc:
        _refusal_record(address=address, reason=str(exc.reason or type(exc).__name__))
        return False
    except OSError as exc:  # reset, timed out: the peer went away, it was not refused
        logger.info("DICOM TLS handshake from %s did not finish (%s)", address, type(exc).__name__)
        return False
    sock.settimeout(timeout)
    return True


def peer_certificate_summary(sock: object) -> str:
    """The peer certificate's subject common name, for the log line of an accepted association ('' without TLS)."""
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def peer_certificate_sha256(sock: object) -> str:
    """SHA-256 of the peer's DER certificate as lower-case hex, '' without TLS or without a client certificate."""
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    der = sock.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest() if der else ""


def _refusal_record(*, address: str, reason: str) -> None:
    summary = f"DICOM TLS handshake from {address} refused: {reason}."
    try:
        with audit_context(source_address=address, system_principal="dicom:tls"):
            security_alert_raise(
                kind="dicom_tls_refused",
                summary=summary,
                event=EventType.ASSOCIATION_REJECTED,
                tenant=None,
                subject=address,
                extra={"address": address, "reason": reason, "layer": "tls"},
            )
    except DatabaseError:  # the handshake is refused whatever happens; a database down is logged as an error
        logger.exception("DICOM TLS refusal from %s could not be recorded", address)
    finally:
        connection.close()  # this thread's connection: the association thread ends here
    logger.warning("DICOM TLS handshake refused: %s (%s)", address, reason)
