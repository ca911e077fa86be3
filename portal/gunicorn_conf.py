"""gunicorn's settings beyond scripts/run.sh's command line (`gunicorn -c portal/gunicorn_conf.py ...`).

TLS: with TLS_CERT and TLS_KEY set (PEM files; the certificate file may hold the chain), gunicorn itself serves
HTTPS, TLS 1.2 or later with forward-secret AEAD suites only; production's settings then trust no
X-Forwarded-Proto header. Without them, a proxy in front terminates TLS (SECURITY.md A9).

The access log names the path without its query string (a search's query holds patient data) and the request id
the portal gave the answer, so a log line can be matched with the audit event of the same request.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

# The same suites as the DICOM listener (studies.net.tls.TLS12_CIPHERS; a test checks they agree). This file is
# read by gunicorn before Django is set up, so it cannot import it.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"

access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms %({x-request-id}o)s'

if os.environ.get("TLS_CERT"):
    certfile = os.environ["TLS_CERT"]
    keyfile = os.environ.get("TLS_KEY") or None

    def ssl_context(conf: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default_ssl_context_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS12_CIPHERS)
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        return context
