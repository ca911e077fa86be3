"""`make run` when one of its processes cannot start: the run names it and stops at once, everything stopped.

A newcomer's first `make run` on a machine whose port 8000 is taken (another project's server) used to print "still
starting ... waiting for the web server" every 30 s for READY_SECONDS (10 minutes), gunicorn's "Connection in use"
long scrolled away, while the rest of the stack kept running."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.journey.conftest import NOT_A_USERS_ENVIRONMENT, ROOT, free_port

pytestmark = [pytest.mark.journey, pytest.mark.integration]

# Long enough for the embedded stack, the migrations, the demo and gunicorn's five tries to bind (about 5 s) on a
# busy two-core machine; far shorter than the READY_SECONDS the run is given, which the old check waited out.
ENDS_WITHIN_SECONDS = 300
READY_SECONDS = 1200


def _processes_naming(text: str) -> list[str]:
    """The processes on this machine whose command line or environment names `text` (the run's var folder: every
    process the run starts has it in ENCLAVE_VAR_DIR), as "pid: command line"."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environment = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in command or text in environment:
            found.append(f"{entry.name}: {command}")
    return found


def test_a_process_that_cannot_start_ends_the_run_with_its_name_and_stops_the_rest():
    folder = Path(tempfile.mkdtemp(prefix="enclave-start-"))
    var = folder / "var"
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_USERS_ENVIRONMENT}
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # another program holds the web port
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    web_port = taken.getsockname()[1]
    env.update({
        "ENCLAVE_VAR_DIR": str(var), "WEB_PORT": str(web_port), "DICOM_PORT": str(free_port()),
        "READY_SECONDS": str(READY_SECONDS),
    })  # fmt: skip
    log = folder / "make-run.log"
    process = None
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            status = process.wait(timeout=ENDS_WITHIN_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=120)
            pytest.fail(f"make run still waiting after {ENDS_WITHIN_SECONDS} s:\n{log.read_text()[-4000:]}")
        output = log.read_text(errors="replace")
        assert status == 1, output[-4000:]
        assert "starting gunicorn, worker, beat, listener" in output  # it got as far as starting them
        assert "Connection in use" in output  # gunicorn's own reason, above
        assert "gunicorn (the web server) ended during start-up" in output
        assert "Enclave is running" not in output
        assert "Enclave stopped." in output
        # Nothing of this run is left: not the worker, the listener or beat, nor the embedded PostgreSQL and Valkey.
        deadline = time.monotonic() + 30
        while (left := _processes_naming(str(var))) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == []
    finally:
        taken.close()
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
