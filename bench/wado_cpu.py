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
- the CPU of 20 retrievals of one instance of the series: the fixed cost of a request.

`--pyspy PREFIX` also records a py-spy profile (raw, folded stacks) of each gunicorn worker over 30 retrievals,
written to PREFIX-<pid>.txt. Every other option is bench/orthanc.py's.

    .venv/bin/python -m bench.wado_cpu --db enclave_bench_vs_me --redis redis://127.0.0.1:6379/3 --index 0
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import orthanc  # noqa: E402  (the path above first)

TICK = os.sysconf("SC_CLK_TCK")
EXTRA = 20


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


def memory(pids: list[int], field: str) -> dict[int, str]:
    out = {}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                out[pid] = " ".join(line.split()[1:])
    return out


def measured(original: Any, pyspy: str | None) -> Any:
    def retrieve_series(session: Any, url: str, headers: dict[str, str], *, runs: int, expected: int) -> Any:
        match = re.match(r"https?://[^:/]+:(\d+)", url)
        assert match is not None
        pids = pids_on(int(match.group(1)))
        who = "enclave" if "/dicomweb/" in url else "orthanc"
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
        c0, p0, t0, f0 = cpu_seconds(pids), time.process_time(), time.perf_counter(), minor_faults(pids)
        s0 = system_seconds(pids)
        original(session, url, headers, runs=EXTRA - 1, expected=expected)  # EXTRA retrievals (one untimed)
        c1, p1, t1, f1 = cpu_seconds(pids), time.process_time(), time.perf_counter(), minor_faults(pids)
        s1 = system_seconds(pids)
        result = original(session, url, headers, runs=runs, expected=expected)
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
        result["load_average"] = [round(v, 2) for v in os.getloadavg()]
        print(f"[wado_cpu] {who} {json.dumps(result)}", flush=True)
        return result

    return retrieve_series


def main() -> int:
    own = {"--db": "", "--redis": "", "--pyspy": ""}
    rest = []
    argv = iter(sys.argv[1:])
    for arg in argv:
        if arg in own:
            own[arg] = next(argv)
        else:
            rest.append(arg)
    if own["--db"]:
        orthanc.DB_NAME = own["--db"]
    if own["--redis"]:
        orthanc.REDIS_URL = own["--redis"]
    orthanc.retrieve_series = measured(orthanc.retrieve_series, own["--pyspy"] or None)
    sys.argv = [sys.argv[0], *rest]
    return orthanc.main()


if __name__ == "__main__":
    sys.exit(main())
