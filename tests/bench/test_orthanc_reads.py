"""bench/orthanc.py's alternating reads: both servers answer the same reads taking turns, and one server's failed
search at scale is recorded for that server while the other's goes on."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bench.orthanc import Server, alternate, reads_alternating


def test_the_sides_take_turns_and_swap_the_order_every_round():
    calls = []

    order = alternate(
        {"enclave": lambda i: calls.append(("enclave", i)), "orthanc": lambda i: calls.append(("orthanc", i))}, 4
    )

    assert calls == [("enclave", 0), ("orthanc", 0), ("orthanc", 1), ("enclave", 1), ("enclave", 2), ("orthanc", 2),
                     ("orthanc", 3), ("enclave", 3)]  # fmt: skip
    assert {name: len(values) for name, values in order.items()} == {"enclave": 4, "orthanc": 4}


class _Archive(BaseHTTPRequestHandler):
    """A DICOMweb server of two parts per series and one result per search; `failing` paths answer 503."""

    seen: list[tuple[str, str]]
    failing: str = ""
    name: str = ""

    def do_GET(self):
        self.seen.append((self.name, self.path))
        if self.failing and self.failing in self.path:
            self._send(503, "application/json", b"{}")
        elif self.path.endswith("/series/2.3"):
            body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n" for _ in range(2)) + b"--b--\r\n"
            self._send(200, 'multipart/related; type="application/dicom"; boundary=b', body)
        else:
            self._send(200, "application/dicom+json", json.dumps([{"0020000D": {"vr": "UI"}}]).encode())

    def _send(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def archives():
    seen: list[tuple[str, str]] = []
    servers = {}
    for name, failing in (("enclave", ""), ("orthanc", "PatientName")):
        handler = type(f"Handler_{name}", (_Archive,), {"seen": seen, "failing": failing, "name": name})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield servers, seen
    for server in servers.values():
        server.shutdown()
        server.server_close()


def _sides(servers, one, two) -> tuple[dict[str, Server], dict[str, dict[str, str]]]:
    """Both fake archives as `reads_alternating` takes them, over the sessions `one` and `two`, and a search each."""
    sides = {name: Server(session, f"http://127.0.0.1:{servers[name].server_port}", {})
             for name, session in (("enclave", one), ("orthanc", two))}  # fmt: skip
    searches = {name: {"series of a study": f"{side.base}/studies/1/series"} for name, side in sides.items()}
    return sides, searches


def test_both_servers_answer_every_read_in_turn_and_a_failed_search_stays_with_its_server(archives):
    servers, seen = archives
    with requests.Session() as one, requests.Session() as two:
        sides, searches = _sides(servers, one, two)
        picked = {"by PatientID": lambda i: ("studies", {"PatientID": f"P{i}"}),
                  "PatientName=MARTIN*": lambda i: ("studies", {"PatientName": "MARTIN*"})}  # fmt: skip

        out = reads_alternating(sides, series="studies/1/series/2.3", expected=2, retrievals=3, searches=searches,
                                scale=sides, picked_searches=picked, warmup=1, repeat=4, timeout=10)  # fmt: skip

    for name in ("enclave", "orthanc"):
        assert len(out[name]["wado_series"]["megabytes_per_second"]) == 3
        assert out[name]["qido"]["series of a study"]["median_ms"] > 0
        assert out[name]["qido_index"]["by PatientID"]["results_median"] == 1
    assert out["enclave"]["qido_index"]["PatientName=MARTIN*"]["results_median"] == 1
    assert out["orthanc"]["qido_index"]["PatientName=MARTIN*"] == {
        "timed_out_s": 10, "failure": "HTTP 503", "answered": 0, "samples_ms": []}  # fmt: skip
    by_patient = [name for name, path in seen if "PatientID" in path]
    assert by_patient == ["enclave", "orthanc", "orthanc", "enclave", "enclave", "orthanc", "orthanc", "enclave",
                          "enclave", "orthanc"]  # fmt: skip
    assert [path for name, path in seen if name == "enclave" and "PatientID" in path] == [
        f"/studies?PatientID=P{i}" for i in range(5)]  # fmt: skip
    martin = [name for name, path in seen if "MARTIN" in path]
    assert martin.count("orthanc") == 1  # its first request failed: no more asked of it
    assert martin.count("enclave") == 5


def test_each_servers_lightest_answer_is_timed_in_turn_first_as_the_floor(archives):
    servers, seen = archives
    with requests.Session() as one, requests.Session() as two:
        sides, searches = _sides(servers, one, two)
        floors = {"enclave": f"{sides['enclave'].base}/health/", "orthanc": f"{sides['orthanc'].base}/system"}

        out = reads_alternating(sides, series="studies/1/series/2.3", expected=2, retrievals=1, searches=searches,
                                scale=None, picked_searches={}, warmup=1, repeat=4, timeout=10,
                                floors=floors)  # fmt: skip

    for name in ("enclave", "orthanc"):
        assert out[name]["floor"]["median_ms"] > 0
    floor_calls = [(name, path) for name, path in seen if path in ("/health/", "/system")]
    assert [name for name, _ in floor_calls[:8]] == ["enclave", "orthanc", "orthanc", "enclave", "enclave",
                                                     "orthanc", "orthanc", "enclave"]  # fmt: skip
    assert {path for name, path in floor_calls if name == "orthanc"} == {"/system"}
    assert len(floor_calls) == 2 * (4 + 3)  # repeat + the three not counted, each side
    assert seen.index(floor_calls[-1]) < min(i for i, (_, path) in enumerate(seen) if "series" in path)


def test_without_floors_none_is_timed(archives):
    servers, seen = archives
    with requests.Session() as one, requests.Session() as two:
        sides, searches = _sides(servers, one, two)

        out = reads_alternating(sides, series="studies/1/series/2.3", expected=2, retrievals=1, searches=searches,
                                scale=None, picked_searches={}, warmup=1, repeat=2, timeout=10)  # fmt: skip

    assert "floor" not in out["enclave"]
    assert "floor" not in out["orthanc"]
    assert not [path for _, path in seen if path in ("/health/", "/system")]
