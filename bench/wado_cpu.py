"""bench.orthanc with the server's CPU per WADO-RS retrieval: figures that load inflates far less than wall time.

Runs bench/orthanc.py unchanged (the same sets, services and order) on a database and Redis database of its own
(`--db`, `--redis`: several people's benchmarks can share the machine), and around each archive's series
retrieval also measures, over 20 more retrievals of the same series on the same keep-alive session:

- CPU seconds (user + system, /proc/<pid>/stat) of every process listening on the server's port (gunicorn's master
  and workers; Orthanc) per retrieval, the system part alone (the kernel's file reads and socket writes), and
  their minor page faults;
- the client's CPU per retrieval (this process: requests reading the body and counting its parts);
- the peak resident memory of those processes during the retrievals (VmHWM after clearing it, /proc/<pid>/clear_refs),
  beside their resident memory before;
- the CPU of 20 retrievals of one instance of the series: the fixed cost of a request;
- for Enclave, the CPU of PostgreSQL's backends on the benchmark's database per retrieval (the backends there
  both before and after the retrievals; a series retrieval is one connection's statements).

`--extra N`: N measured retrievals instead of 20 (CPU is counted in ticks of 10 ms, so PostgreSQL's few ms per
retrieval need more of them to be resolved: 100 resolve 0.1 ms). `--pyspy PREFIX` also records a py-spy profile
(raw, folded stacks) of each gunicorn worker over 30 retrievals, written to PREFIX-<pid>.txt. Every other option
is bench/orthanc.py's. `--ports LO-HI`: the servers' ports from that range (a shared machine's own range).

    .venv/bin/python -m bench.wado_cpu --db enclave_bench_vs_me --redis redis://127.0.0.1:6379/3 --index 0

`--probe SPOT` (first argument) measures a server held by `--hold PATH` (SPOT is the PATH-enclave.json it wrote:
the series' URL, headers and gunicorn's pids) instead: the series retrieved `--runs` times per round, `--rounds`
rounds, on one keep-alive `http.client` connection, the body read into one reused 8 MiB buffer (the least a
client can do); per round, the CPU of gunicorn's processes (user, system) and of PostgreSQL's backends on `--db`
per retrieval, from /proc. A HUP to gunicorn's master loads changed code, so two trees can be alternated on one
held server (discard the first round after a HUP: the new workers warm up).

    .venv/bin/python -m bench.wado_cpu --probe /tmp/hold-enclave.json --db enclave_h5 --runs 60 --rounds 3
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import orthanc  # noqa: E402  (the path above first)
from bench.profile import postgres_backends  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
EXTRA = 20
READER_RUNS = 15


def pids_on(port: int) -> list[int]:
    """The processes listening on `port` (gunicorn's master and its workers share the socket)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return sorted({int(p) for p in re.findall(r"pid=(\d+)", out)})


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cpu_seconds(pids: list[int]) -> float:
    return sum(int(f[11]) + int(f[12]) for f in map(_stat, pids) if f) / TICK


def system_seconds(pids: list[int]) -> float:
    """The system part of `cpu_seconds`: the kernel's reads of the copies and writes to the socket."""
    return sum(int(f[12]) for f in map(_stat, pids) if f) / TICK


def minor_faults(pids: list[int]) -> int:
    return sum(int(f[7]) for f in map(_stat, pids) if f)


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: (int(f[11]) + int(f[12])) / TICK for pid, f in ((p, _stat(p)) for p in pids) if f}


def postgres_seconds(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds of the backends present both times (one that began or ended meanwhile is left out)."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def memory(pids: list[int], field: str) -> dict[int, str]:
    out = {}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                out[pid] = " ".join(line.split()[1:])
    return out


def hold(path: str, who: str, url: str, headers: dict[str, str], pids: list[int], expected: int) -> None:
    """`--hold PATH`: write where the series is (PATH-<who>.json) and wait until that file is removed, so that
    other measurements can be made on the running server (a HUP to gunicorn's master loads changed code)."""
    spot = Path(f"{path}-{who}.json")
    spot.write_text(json.dumps({"url": url, "headers": headers, "pids": pids, "expected": expected}))
    print(f"[wado_cpu] holding: {spot} (remove it to go on)", flush=True)
    while spot.exists():
        time.sleep(1)


def read_plain(url: str, headers: dict[str, str], runs: int) -> dict[str, Any]:
    """The series read by the least a client can do: one keep-alive http.client connection, the body read into
    one reused 8 MiB buffer (no copy, no parsing). MB/s median and the client's CPU per retrieval."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    buffer = memoryview(bytearray(8 << 20))
    rates, cpu, size = [], 0.0, 0
    for i in range(runs + 1):  # the first warms up
        t0, p0 = time.perf_counter(), time.process_time()
        connection.request("GET", target, headers={**headers, "Accept": orthanc.ACCEPT_DICOM})
        response = connection.getresponse()
        if response.status != 200:
            raise orthanc.BenchError(f"{url}: HTTP {response.status}")
        size = 0
        while count := response.readinto(buffer):
            size += count
        elapsed, used = time.perf_counter() - t0, time.process_time() - p0
        if i:
            rates.append(size / orthanc.MB / elapsed)
            cpu += used
    connection.close()
    return {
        "megabytes_per_second_median": round(statistics.median(rates), 1),
        "client_cpu_ms_per_retrieval": round(cpu / runs * 1000, 1),
    }


def readers_compared(original: Any, session: Any, url: str, headers: dict[str, str], expected: int) -> dict[str, Any]:
    """`--readers`: whether the benchmark's reader (requests' iter_content in 1 MiB pieces, each searched for the
    boundary) limits the figure: the same series read by it, with 8 MiB pieces, and by `read_plain`, each
    `READER_RUNS` times, with the client's CPU per retrieval."""
    out: dict[str, Any] = {}
    for name, size in (("bench_reader_1MiB", 1 << 20), ("bench_reader_8MiB", 8 << 20)):
        orthanc.READ_CHUNK = size
        p0 = time.process_time()
        result = original(session, url, headers, runs=READER_RUNS, expected=expected)
        out[name] = {
            "megabytes_per_second_median": result["megabytes_per_second_median"],
            "client_cpu_ms_per_retrieval": round((time.process_time() - p0) / (READER_RUNS + 1) * 1000, 1),
        }
    orthanc.READ_CHUNK = 1 << 20
    out["plain_reader"] = read_plain(url, headers, READER_RUNS)
    return out


def measured(original: Any, pyspy: str | None, held: str | None = None, readers: bool = False) -> Any:
    def retrieve_series(session: Any, url: str, headers: dict[str, str], *, runs: int, expected: int) -> Any:
        match = re.match(r"https?://[^:/]+:(\d+)", url)
        assert match is not None
        pids = pids_on(int(match.group(1)))
        who = "enclave" if "/dicomweb/" in url else "orthanc"
        if held:
            hold(held, who, url, headers, pids, expected)
            pids = pids_on(int(match.group(1)))  # workers restarted meanwhile
        if who == "enclave" and pyspy:
            workers = [p for p in pids if p != min(pids)] or pids
            record = [str(Path(sys.executable).parent / "py-spy"), "record", "--rate", "500", "--format", "raw"]
            spies = [  # the profile of each worker while the series is retrieved 30 times
                subprocess.Popen(
                    [*record, "--nonblocking", "--pid", str(p), "-o", f"{pyspy}-{p}.txt"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for p in workers
            ]
            time.sleep(1.5)
            original(session, url, headers, runs=30, expected=expected)
            for spy in spies:
                spy.send_signal(2)
                spy.wait()
        original(session, url, headers, runs=1, expected=expected)  # warm
        for pid in pids:  # the peak resident memory from here on is the retrievals'
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass
        resident = memory(pids, "VmRSS")
        backends = postgres_backends(orthanc.DB_NAME, set()) if who == "enclave" else []
        g0 = cpu_by_pid(backends)
        c0, p0, t0, f0 = cpu_seconds(pids), time.process_time(), time.perf_counter(), minor_faults(pids)
        s0 = system_seconds(pids)
        original(session, url, headers, runs=EXTRA - 1, expected=expected)  # EXTRA retrievals (one untimed)
        c1, p1, t1, f1 = cpu_seconds(pids), time.process_time(), time.perf_counter(), minor_faults(pids)
        s1 = system_seconds(pids)
        g1 = cpu_by_pid(backends)
        result = original(session, url, headers, runs=runs, expected=expected)
        if backends:
            result["postgres_cpu_ms_per_retrieval"] = round(postgres_seconds(g0, g1) / EXTRA * 1000, 1)
        result["server_cpu_ms_per_retrieval"] = round((c1 - c0) / EXTRA * 1000, 1)
        result["server_system_cpu_ms_per_retrieval"] = round((s1 - s0) / EXTRA * 1000, 1)
        result["server_minor_faults_per_retrieval"] = round((f1 - f0) / EXTRA)
        result["client_cpu_ms_per_retrieval"] = round((p1 - p0) / EXTRA * 1000, 1)
        result["wall_ms_per_retrieval"] = round((t1 - t0) / EXTRA * 1000, 1)
        result["server_vmrss_before"] = resident
        result["server_vmhwm_during_retrievals"] = memory(pids, "VmHWM")
        listing = session.get(f"{url}/instances", headers={**headers, "Accept": "application/dicom+json"}, timeout=60)
        one = f"{url}/instances/{listing.json()[0]['00080018']['Value'][0]}"
        original(session, one, headers, runs=1, expected=1)
        c0 = cpu_seconds(pids)
        original(session, one, headers, runs=EXTRA - 1, expected=1)
        result["server_cpu_ms_per_one_instance_retrieval"] = round((cpu_seconds(pids) - c0) / EXTRA * 1000, 1)
        if readers:
            result["readers"] = readers_compared(original, session, url, headers, expected)
        result["load_average"] = [round(v, 2) for v in os.getloadavg()]
        print(f"[wado_cpu] {who} {json.dumps(result)}", flush=True)
        return result

    return retrieve_series


def user_system(pids: list[int]) -> tuple[float, float]:
    stats = [f for f in map(_stat, pids) if f]
    return sum(int(f[11]) for f in stats) / TICK, sum(int(f[12]) for f in stats) / TICK


def _retrieve(connection: Any, target: str, headers: dict[str, str], buffer: memoryview) -> int:
    connection.request("GET", target, headers={**headers, "Accept": orthanc.ACCEPT_DICOM})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}")
    size = 0
    while count := response.readinto(buffer):
        size += count
    return size


def probe(argv: list[str]) -> int:
    """`--probe SPOT`: see the module's docstring."""
    import argparse
    import http.client
    from urllib.parse import urlsplit

    parser = argparse.ArgumentParser(prog="bench.wado_cpu --probe")
    parser.add_argument("spot")
    parser.add_argument("--db", required=True)
    parser.add_argument("--runs", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    spot = json.loads(Path(args.spot).read_text())
    parts = urlsplit(spot["url"])
    pids = pids_on(parts.port or 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    buffer = memoryview(bytearray(8 << 20))
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)
    for _ in range(3):  # warm
        size = _retrieve(connection, target, spot["headers"], buffer)
    for _ in range(args.rounds):
        backends = postgres_backends(args.db, set())
        g0 = cpu_by_pid(backends)
        u0, s0 = user_system(pids)
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            _retrieve(connection, target, spot["headers"], buffer)
            walls.append(time.perf_counter() - t0)
        u1, s1 = user_system(pids)
        g1 = cpu_by_pid(backends)
        n = args.runs
        gunicorn = (u1 - u0 + s1 - s0) / n * 1000
        postgres = postgres_seconds(g0, g1) / n * 1000
        print(
            json.dumps(
                {
                    "gunicorn_ms": round(gunicorn, 2),
                    "user_ms": round((u1 - u0) / n * 1000, 2),
                    "system_ms": round((s1 - s0) / n * 1000, 2),
                    "postgres_ms": round(postgres, 2),
                    "server_ms": round(gunicorn + postgres, 2),
                    "bytes": size,
                    "mb_s_median": round(size / orthanc.MB / statistics.median(walls), 1),
                    "load": os.getloadavg()[0],
                }
            ),
            flush=True,
        )
    connection.close()
    return 0


def ports_from(span: str) -> Any:
    """`--ports LO-HI`: the servers' ports taken from this range (the first free one each time), where a shared
    machine gives each person's benchmarks a range of their own, instead of any port the kernel picks."""
    import socket

    low, high = (int(p) for p in span.split("-"))
    taken: set[int] = set()

    def free_port() -> int:
        for port in range(low, high + 1):
            if port in taken:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            taken.add(port)
            return port
        raise orthanc.BenchError(f"no free port in {span}")

    return free_port


def main() -> int:
    global EXTRA
    if sys.argv[1:2] == ["--probe"]:
        return probe(sys.argv[2:])
    own = {"--db": "", "--redis": "", "--pyspy": "", "--hold": "", "--extra": "", "--ports": ""}
    readers = "--readers" in sys.argv
    rest = []
    argv = iter(sys.argv[1:])
    for arg in argv:
        if arg == "--readers":
            continue
        if arg in own:
            own[arg] = next(argv)
        else:
            rest.append(arg)
    if own["--db"]:
        orthanc.DB_NAME = own["--db"]
    if own["--redis"]:
        orthanc.REDIS_URL = own["--redis"]
    if own["--extra"]:
        EXTRA = int(own["--extra"])
    if own["--ports"]:
        orthanc.free_port = ports_from(own["--ports"])
    orthanc.retrieve_series = measured(orthanc.retrieve_series, own["--pyspy"] or None, own["--hold"] or None, readers)
    # Each server's retrievals one after the other (its CPU is read around them): not taking turns.
    sys.argv = [sys.argv[0], *rest, "--reads", "sequential"]
    return orthanc.main()


if __name__ == "__main__":
    sys.exit(main())
