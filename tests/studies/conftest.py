"""Fixtures for the studies tests: a real clamd with only a test signature, started once per session.

Other test trees reuse it with `from tests.studies.conftest import clamd_daemon  # noqa: F401` in their conftest.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from studies.scanning import eicar_test_bytes

CLAMD = Path("/usr/sbin/clamd")
# clamd appends ".UNOFFICIAL" to names from a database that is not one of ClamAV's own.
EICAR_SIGNATURE = "Enclave.Test.EICAR"
EICAR_FOUND_AS = f"{EICAR_SIGNATURE}.UNOFFICIAL"
STARTUP_SECONDS = 30


@dataclass(frozen=True)
class ClamdDaemon:
    unix_address: str
    tcp_address: str
    process: subprocess.Popen[bytes]
    log: Path
    signature: str = EICAR_FOUND_AS

    @property
    def address(self) -> str:
        return self.unix_address

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"zPING\0")
            return sock.recv(16).startswith(b"PONG")
    except OSError:
        return False


def start_clamd(workdir: Path) -> ClamdDaemon:
    """Start clamd in the foreground with one EICAR body signature; returns once it answers PING."""
    if not CLAMD.exists():
        pytest.fail(f"{CLAMD} is missing: run `apt-get install clamav-daemon` (the tests need a real clamd)")
    db = workdir / "db"
    db.mkdir()
    # An .ndb body signature (offset *) finds EICAR anywhere, e.g. appended to a DICOM file; an .hdb would only
    # match a file that is exactly EICAR. clamd refuses to start with an empty database directory.
    (db / "enclave-test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{eicar_test_bytes().hex()}\n")
    sock = workdir / "c.sock"
    port = _free_tcp_port()
    conf = workdir / "clamd.conf"
    conf.write_text(
        f"DatabaseDirectory {db}\n"
        f"LocalSocket {sock}\n"
        f"TCPSocket {port}\n"
        "TCPAddr 127.0.0.1\n"
        "Foreground yes\n"
        "StreamMaxLength 200M\n"
    )
    log = workdir / "clamd.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(CLAMD), f"--config-file={conf}"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"clamd exited with {process.returncode} while starting:\n{log.read_text(errors='replace')}")
        if sock.exists() and _answers_ping(sock):
            return ClamdDaemon(
                unix_address=f"unix://{sock}", tcp_address=f"tcp://127.0.0.1:{port}", process=process, log=log
            )
        time.sleep(0.1)
    _stop(process)
    pytest.fail(f"clamd did not answer within {STARTUP_SECONDS} s:\n{log.read_text(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def clamd_daemon() -> Iterator[ClamdDaemon]:
    """A real clamd on a Unix socket (short path, under /tmp) and on a loopback TCP port, for the whole session."""
    # Under /tmp, not pytest's deep tmp_path: a Unix socket path may be at most 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="ecl-", dir="/tmp"))
    try:
        daemon = start_clamd(workdir)
        try:
            yield daemon
        finally:
            _stop(daemon.process)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
