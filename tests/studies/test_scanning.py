from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator

import pydicom
import pytest

from studies.dicom.parse import Limits, parse
from studies.dicom.synthetic import make_instance
from studies.scanning import (
    BUILTIN_EICAR_SIGNATURE,
    ScanError,
    _verdict,
    builtin_scan,
    clamd_scan,
    eicar_test_bytes,
    scan,
)
from tests.studies.conftest import ClamdDaemon


def _dicom_with_eicar() -> bytes:
    """A valid DICOM file carrying EICAR in a private element, the way a payload would ride along."""
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    block = ds.private_block(0x0009, "ENCLAVE TEST", create=True)
    block.add_new(0x10, "OB", eicar_test_bytes())
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    parse(data, limits=Limits(max_bytes=10**7))
    return data


def test_eicar_is_built_at_run_time():
    assert len(eicar_test_bytes()) == 68
    assert eicar_test_bytes().startswith(b"X5O!P%@AP")


def test_builtin_finds_eicar_in_dicom():
    assert builtin_scan(_dicom_with_eicar()).clean is False
    assert builtin_scan(_dicom_with_eicar()).signature == BUILTIN_EICAR_SIGNATURE
    assert builtin_scan(make_instance() + eicar_test_bytes()).clean is False


def test_builtin_passes_clean_file():
    result = builtin_scan(make_instance())
    assert result.clean is True
    assert result.signature == ""


def test_scan_without_address_uses_builtin():
    assert scan(_dicom_with_eicar(), address=None).clean is False
    assert scan(make_instance(), address="").clean is True


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_clamd_finds_eicar_in_dicom(clamd_daemon: ClamdDaemon, kind: str):
    address = clamd_daemon.unix_address if kind == "unix" else clamd_daemon.tcp_address
    result = clamd_scan(_dicom_with_eicar(), address=address)
    assert result.clean is False
    assert result.signature == clamd_daemon.signature


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_clamd_passes_clean_file(clamd_daemon: ClamdDaemon, kind: str):
    address = clamd_daemon.unix_address if kind == "unix" else clamd_daemon.tcp_address
    assert clamd_scan(make_instance(), address=address).clean is True


def test_clamd_large_object_in_many_chunks(clamd_daemon: ClamdDaemon):
    data = make_instance(rows=1024, columns=1024, frames=3)  # ~6 MB, about 100 chunks
    assert clamd_scan(data, address=clamd_daemon.address).clean is True
    assert clamd_scan(data + eicar_test_bytes(), address=clamd_daemon.address).clean is False


def test_scan_with_address_uses_clamd(clamd_daemon: ClamdDaemon):
    assert scan(_dicom_with_eicar(), address=clamd_daemon.address).signature == clamd_daemon.signature


def test_unreachable_clamd_is_an_error_not_clean(tmp_path):
    with pytest.raises(ScanError):
        clamd_scan(b"data", address=f"unix://{tmp_path}/none.sock")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ScanError):
        clamd_scan(b"data", address=f"tcp://127.0.0.1:{port}")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and reads but never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while not stop.wait(0.05):
                try:
                    conn.setblocking(False)
                    conn.recv(65536)
                except BlockingIOError:
                    pass
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_clamd_timeout_is_an_error(silent_server: int):
    with pytest.raises(ScanError):
        clamd_scan(b"data", address=f"tcp://127.0.0.1:{silent_server}", timeout=0.5)


@pytest.mark.parametrize(
    "reply", ["INSTREAM size limit exceeded. ERROR", "stream: Can't allocate memory ERROR", "UNKNOWN COMMAND", ""]
)
def test_error_replies_are_errors(reply: str):
    with pytest.raises(ScanError):
        _verdict(reply)


def test_replies():
    assert _verdict("stream: OK").clean is True
    found = _verdict("stream: Win.Test.EICAR_HDB-1 FOUND")
    assert (found.clean, found.signature) == (False, "Win.Test.EICAR_HDB-1")


@pytest.mark.parametrize("address", ["clamd.sock", "http://x:1", "tcp://127.0.0.1", "unix://"])
def test_bad_address(address: str):
    with pytest.raises(ValueError, match="clamd address"):
        clamd_scan(b"", address=address)
