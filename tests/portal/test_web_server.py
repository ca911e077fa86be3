"""The web server `make run` and production start (scripts/run.sh's gunicorn line, portal/gunicorn_conf.py), run for
real on a loopback port: a viewer's kept-alive connection is reused request after request, the server's socket of
that connection has TCP_NODELAY set (so headers and body written apart never wait for the client's delayed ACK: the
option is read off the worker's own socket, not inferred from timings), and no answer names the server."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY_SECONDS = 60
SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (unified syscall table since 5.x)


def run_sh_gunicorn_options() -> list[str]:
    """The worker options of scripts/run.sh's gunicorn command, so this test serves the way `make run` does."""
    script = (ROOT / "scripts" / "run.sh").read_text()
    command = re.search(r"^\s*\.venv/bin/gunicorn (.*?)& pids", script, re.S | re.M)
    assert command, "scripts/run.sh starts gunicorn"
    words = command.group(1).replace("\\\n", " ").split()
    options = []
    for name in ("--worker-class", "--threads", "--timeout", "--graceful-timeout"):
        assert name in words, name
        options += [name, words[words.index(name) + 1]]
    assert "-c" in words
    assert words[words.index("-c") + 1] == "portal/gunicorn_conf.py"
    return options


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def gunicorn_serving(application: str, ready_path: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`application` served by one gunicorn worker as `make run` configures it (portal/gunicorn_conf.py and
    scripts/run.sh's worker options) on a free loopback port, once `ready_path` answers: its base URL and process."""
    port = _free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test"}
    env.pop("TLS_CERT", None)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), application, "-c", "portal/gunicorn_conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", *run_sh_gunicorn_options(), "--no-control-socket"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            try:
                requests.get(f"{base}{ready_path}", timeout=10)
                break
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
                pass
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited with {process.returncode}")
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not answer within {READY_SECONDS} s")
            time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def web_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with gunicorn_serving("portal.wsgi:application", "/accounts/login/") as served:
        yield served


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _server_sockets_peered_with(pids: list[int], client: tuple[str, int]) -> list[socket.socket]:
    """Copies (pidfd_getfd) of the sockets these processes hold whose peer is `client`."""
    libc = ctypes.CDLL(None, use_errno=True)
    found = []
    for pid in pids:
        pidfd = os.pidfd_open(pid)
        try:
            for entry in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if not os.readlink(entry).startswith("socket:"):
                        continue
                except FileNotFoundError:
                    continue
                fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(entry.name), 0)
                if fd < 0:
                    error = ctypes.get_errno()
                    if error == 9:  # EBADF: closed meanwhile
                        continue
                    raise OSError(error, f"pidfd_getfd of {pid}'s fd {entry.name}: {os.strerror(error)}")
                copy = socket.socket(fileno=fd)
                try:
                    peer = copy.getpeername() if copy.family == socket.AF_INET else None
                except OSError:
                    peer = None
                if peer == client:
                    found.append(copy)
                else:
                    copy.close()
        finally:
            os.close(pidfd)
    return found


def test_run_sh_and_the_configuration_serve_with_threads_that_keep_connections_alive():
    from portal import gunicorn_conf

    options = run_sh_gunicorn_options()
    assert options[options.index("--worker-class") + 1] == "gthread"  # the sync worker closes every connection
    assert gunicorn_conf.worker_class == "gthread"  # also for a deployment that starts gunicorn with -c only


def test_a_kept_alive_connection_is_reused_and_its_server_socket_has_tcp_nodelay(web_server):
    from portal import gunicorn_conf

    base, process = web_server
    local_ports = set()
    with requests.Session() as session:
        for _ in range(20):
            answer = session.get(f"{base}/accounts/login/", stream=True, timeout=10)
            local_ports.add(answer.raw._connection.sock.getsockname()[1])
            assert answer.status_code == 200
            assert answer.headers["Connection"] == "keep-alive"
            answer.content  # noqa: B018  (read to the end: the connection goes back to the pool)
        pools = session.get_adapter(base).poolmanager.pools
        keys = pools.keys()  # urllib3's container refuses plain iteration
        assert [pools[key].num_connections for key in keys] == [1]  # one connection ever opened
        assert len(local_ports) == 1  # every request over the same TCP connection
        client = ("127.0.0.1", local_ports.pop())
        workers = _children(process.pid)
        assert workers
        sockets = _server_sockets_peered_with(workers, client)
        try:
            assert len(sockets) == 1, sockets  # one server-side socket served all twenty
            assert sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            # The send buffer (gunicorn_conf.SEND_BUFFER_BYTES), where the kernel allows it: Linux reports twice
            # the size set. Where it does not, the kernel's own sizing is left alone.
            if gunicorn_conf.send_buffer_bytes():
                assert sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * gunicorn_conf.SEND_BUFFER_BYTES
        finally:
            for copy in sockets:
                copy.close()
        # A connection the server did not make (a control: the probe tells a set option from an unset one).
        with socket.socket() as plain:
            assert plain.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


def test_no_answer_names_the_server(web_server):
    base, _ = web_server
    with requests.Session() as session:
        for path in ("/accounts/login/", "/dicomweb/north/studies", "/no-such-page/"):
            answer = session.get(f"{base}{path}", timeout=10)
            assert answer.status_code in (200, 401, 404), (path, answer.status_code)
            assert "Server" not in answer.headers, (path, answer.headers.get("Server"))
    # gunicorn's own answer to a request it cannot parse names no server either.
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"NOT A REQUEST\r\n\r\n")
        head = raw.recv(4096)
    assert head.startswith(b"HTTP/1.1 400"), head[:40]
    assert b"\r\nserver:" not in head.lower()
