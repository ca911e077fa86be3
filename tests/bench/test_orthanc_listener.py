"""bench/orthanc.py starts Enclave's DICOM listener as scripts/run.sh does: several processes sharing one port."""

from __future__ import annotations

import os
import socket

from bench.ingest import Processes, children
from bench.orthanc import listener_start


def test_the_listener_is_ready_with_its_processes_on_one_port(tmp_path):
    count = 2
    processes = Processes(tmp_path)
    try:
        listener, port = listener_start(processes, dict(os.environ), count)

        assert len(children(listener.process.pid)) == count
        assert f"DICOM listener on 127.0.0.1:{port} ({count} processes:" in listener.output()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        processes.stop("listener")
