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

# Threaded workers, which keep a viewer's connection alive between requests (the sync worker closes every one):
# the default for any `gunicorn -c portal/gunicorn_conf.py`, production's included; scripts/run.sh names the
# same on its command line, which takes precedence. The number of workers is run.sh's (or the deployment's).
worker_class = "gthread"
threads = 8

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


# No version banner, and no server name either (issue 14): gunicorn writes `Server: gunicorn` on every answer and
# has no setting to leave it out, so its response's default headers are filtered here. This file is read by the
# master before it forks, so every worker inherits the change.
def _without_server_banner() -> None:
    from gunicorn.http import wsgi

    if getattr(wsgi.Response.default_headers, "enclave_no_banner", False):
        return
    default_headers = wsgi.Response.default_headers

    def headers_without_banner(self: Any) -> list[str]:
        return [line for line in default_headers(self) if not line.startswith("Server:")]

    headers_without_banner.enclave_no_banner = True  # type: ignore[attr-defined]
    wsgi.Response.default_headers = headers_without_banner  # type: ignore[method-assign]


_without_server_banner()


# A WADO-RS part written from the buffer it was decrypted into (issue 10): gunicorn's Response.write takes only
# bytes, so the body of a retrieval was copied once more, out of that buffer into a bytes object of its own (half a
# megabyte per CT slice), only to be written and dropped. Here write also takes a memoryview, with the same
# bookkeeping (Content-Length's cut-off, chunked framing, a body-less answer), and every request's environ says so
# (BODY_VIEWS, studies.dicomweb.wado's key of the same name: a test checks they agree). gunicorn writes each item
# of a body to the socket before it asks for the next, so the buffer may be reused for the next part then.
BODY_VIEWS = "enclave.body_views"


def _body_views() -> None:
    from gunicorn.http import wsgi

    if getattr(wsgi.Response.write, "enclave_views", False):
        return
    write, create = wsgi.Response.write, wsgi.create

    def write_views(self: Any, arg: Any) -> None:
        if type(arg) is not memoryview or self._omits_body:
            write(self, arg if type(arg) is not memoryview else arg.tobytes())
            return
        self.send_headers()  # what gunicorn's write does with bytes (27.0.1), with a view of bytes
        tosend = arglen = arg.nbytes
        if self.response_length is not None:
            if self.sent >= self.response_length:
                return  # never more than response_length bytes
            tosend = min(self.response_length - self.sent, tosend)
            if tosend < arglen:
                arg = arg[:tosend]
        if self.chunked and tosend == 0:
            return  # an empty chunk would end the body
        self.sent += tosend
        self._emit_body(arg)

    def create_views(*args: Any, **kwargs: Any) -> Any:
        response, environ = create(*args, **kwargs)
        environ[BODY_VIEWS] = True
        return response, environ

    write_views.enclave_views = True  # type: ignore[attr-defined]
    wsgi.Response.write = write_views  # type: ignore[method-assign]
    wsgi.create = create_views


_body_views()


# A send buffer of 4 MiB set on each connection (issue 10, WADO-RS; Linux doubles it for its bookkeeping, so 8 MiB):
# a retrieval writes each instance (0.5 MB for a CT slice) with one sendall, and with the buffer the kernel sizes by
# itself (at most net.ipv4.tcp_wmem's maximum, 4 MiB, counted with that same overhead) the request thread sleeps
# part-way through some writes until the client has read, and is woken again. Measured on a 60-instance series
# (31.5 MB, harness of the h2 branch, docs/BENCHMARKS.md), about 2 ms of system CPU less per retrieval with it,
# under load. Memory: only bytes written and not yet read by the client are held, so a worker's bound is its
# threads times 8 MiB. Set only where the kernel lets a socket have it whole (net.core.wmem_max): a smaller cap
# would fix the buffer below what the kernel's own sizing reaches.
SEND_BUFFER_BYTES = 4 << 20


def send_buffer_bytes() -> int:
    """SEND_BUFFER_BYTES when net.core.wmem_max allows it, else 0 (the kernel's own sizing is left alone)."""
    try:
        with open("/proc/sys/net/core/wmem_max") as limit:
            return SEND_BUFFER_BYTES if int(limit.read()) >= SEND_BUFFER_BYTES else 0
    except (OSError, ValueError):
        return 0


_SEND_BUFFER = send_buffer_bytes()


# Keep-alive without the delayed-ACK stall: a kept-alive connection whose answer leaves as headers and body in two
# small writes waits about 40-50 ms for the client's delayed ACK when Nagle's algorithm holds the second one back.
# gunicorn sets TCP_NODELAY on the listening socket and Linux passes it to every accepted socket; this hook makes
# sure of it on the connection itself, whatever the platform or how the listening socket came (systemd, --fd),
# before the first answer is written. (tests/portal/test_web_server.py reads the option off the worker's socket.)
def pre_request(worker: Any, req: Any) -> None:
    import socket as _socket

    sock = getattr(req, "sock", None) or getattr(getattr(req, "unreader", None), "sock", None)
    if sock is not None and sock.family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            if not sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY):
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            if _SEND_BUFFER:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, _SEND_BUFFER)  # see SEND_BUFFER_BYTES
        except OSError:  # the client has already gone; gunicorn notices on its next write
            pass


# Once the application is loaded, each worker settles as the listener and the Celery workers do
# (portal.web.runtime.process_settle): its start-up objects out of the cycle collector's reach (a search answering
# hundreds of studies otherwise triggered dozens of collections in the middle of it: bench/query.py saw them as the
# p95 tail), and large buffers kept in the threads' malloc arenas. A WADO-RS retrieval allocates two buffers the
# size of each instance (its ciphertext, its plaintext); glibc served each with a fresh mmap and the kernel faulted
# in and zeroed its pages: 13,500 page faults and 37 ms of system CPU per 60 instances (31 MB), three times the
# decryption itself, against 0 faults and 14 ms with the thresholds raised (tests/portal/test_gunicorn_malloc.py).


def _tasks_register() -> bool:
    """Every app's Celery tasks imported and registered in this worker now, at its start, and Celery made ready to
    send (tenants.jobs.messaging_warm: its AMQP helper, result backend and producer pool, which imports the broker's
    transport), instead of by the first request that queues one (tenants.jobs does it then: Celery's autodiscovery
    and its Django fix-up's model checks, 1.2 s of CPU measured in one process, and the producer pool about 0.1 s
    more, on the way of the first upload or STOW-RS request each worker served, in the middle of a benchmark's first
    set: the second worker's first requests came in bench.orthanc's STOW-RS set of four clients). Nothing connects
    to the broker here. A failure here fails no start: the first queueing tries again."""
    try:
        from tenants.jobs import messaging_warm

        messaging_warm()
    except Exception:  # any: logged, and left to the first queueing as before
        import logging

        logging.getLogger(__name__).warning("Celery tasks not registered at worker start", exc_info=True)
        return False
    return True


def _urls_warm() -> None:
    """Django's URL maps for reverse() built in this worker now, at its start, instead of by the first reverse() of
    the first request that names a URL (a STOW-RS answer's retrieve URLs, a search's, a page's links): about 18 ms
    of CPU, measured in a process whose start-up objects are frozen as a worker's are (a namespace's reverse after
    it: 1.5 ms more, once). Routing a request needs no such map; reverse() does."""
    from django.urls import get_resolver

    get_resolver().reverse_dict  # noqa: B018  # the property builds the maps (for the default language)


def post_worker_init(worker: Any) -> None:
    from portal.web.runtime import process_settle

    _tasks_register()  # before the freeze, so that the modules it imports are frozen with the rest
    _urls_warm()
    process_settle(what="gunicorn worker")
