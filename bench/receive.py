"""Receive side (`make bench`, issue 10 "Every core on the receive side"): C-STORE in parallel associations to
`manage.py dicom_listener --processes N`, for N = 1 and N = the number of cores, timed until every C-STORE is
answered (each object quarantined and its IngestItem committed, which is what the listener does before it says
success). No worker runs: the pipeline after the listener is bench/ingest.py's subject, and here it would share
the cores being measured.

Sets up its own database (`enclave_bench_receive`, dropped and created again) and Redis database (/13, flushed),
makes `--associations` folders of `--per-association` CT instances (512 x 512, 16-bit, 0.53 MB), and for each N
a tenant of its own; dcmtk's storescu (TCP_NODELAY=1) sends each folder in one association, all at once. Reports
instances/s, the listener processes' CPU seconds and peak memory, and how the associations spread over the
processes (from the listener's log). Writes var/bench/receive-<time>.json.

    .venv/bin/python -m bench.receive [--associations 4] [--per-association 60] [--processes 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (after the sys.path line, for `python bench/receive.py`)
    MB,
    PG_SERVER,
    PYTHON,
    STORESCU,
    BenchError,
    Processes,
    bench_cleanup,
    bench_environment,
    cpu_busy_since,
    django_on_fresh_database,
    generate,
    log,
    log_says,
    machine,
    machine_cpu,
    memory_of,
    provision,
    stores_env,
)

DB_NAME = "enclave_bench_receive"
REDIS_URL = "redis://127.0.0.1:6379/13"
SEND_SECONDS = 600


def received(tenant: Any) -> int:
    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    with tenant_scope(tenant):
        return IngestItem.objects.count()


def run(processes: Processes, env: dict[str, str], folders: list[Path], listeners: int, tag: str) -> dict[str, Any]:
    target = provision(tag)
    processes.suffix = f"-{listeners}"
    listener = processes.start(
        "listener",
        [PYTHON, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0", "--processes", str(listeners)],
        env,
        log_says(r"DICOM listener on 127\.0\.0\.1:\d+ \(\d+ processes" if listeners > 1 else r"DICOM listener on "),
    )
    port = int(re.findall(r"DICOM listener on 127\.0\.0\.1:(\d+)", listener.output())[0])
    count = sum(len(list(f.iterdir())) for f in folders)
    cpu0 = machine_cpu()
    t0 = time.monotonic()
    senders = []
    for n, folder in enumerate(folders):
        out = (processes.folder / f"storescu-{listeners}-{n}.log").open("wb")
        argv = [
            STORESCU,
            "-aet",
            target.device_ae,
            "-aec",
            target.tenant_ae,
            "+sd",
            "127.0.0.1",
            str(port),
            str(folder),
        ]
        senders.append((subprocess.Popen(argv, env={**os.environ, "TCP_NODELAY": "1"}, stdout=out, stderr=out), out))
    for sender, out in senders:
        try:
            status = sender.wait(timeout=max(SEND_SECONDS - (time.monotonic() - t0), 1))
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"storescu did not finish within {SEND_SECONDS} s") from exc
        finally:
            out.close()
        if status != 0:
            raise BenchError(f"storescu exited with {status}; see {out.name}")
    seconds = time.monotonic() - t0
    busy = cpu_busy_since(cpu0)
    memory = memory_of(listener)
    spread = Counter(re.findall(r"listener process (\d+)", listener.output()))
    processes.stop("listener")
    got = received(target.tenant)
    if got != count:
        raise BenchError(f"{got} of {count} objects received")
    megabytes = sum(p.stat().st_size for f in folders for p in f.iterdir()) / MB
    return {
        "listener_processes": listeners,
        "instances": count,
        "seconds": round(seconds, 2),
        "instances_per_second": round(count / seconds, 1),
        "megabytes_per_second": round(megabytes / seconds, 1),
        "listener_cpu_s": memory["cpu_s"],
        "listener_cpu_ms_per_instance": round(1000 * memory["cpu_s"] / count, 1),
        "listener_peak_mb": memory["children_max_mb"] or memory["main_mb"],
        "associations_per_process": sorted(spread.values(), reverse=True),
        "machine_cpu_busy": busy,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=4, help="parallel associations")
    parser.add_argument("--per-association", type=int, default=60, help="instances in each")
    parser.add_argument("--processes", default=f"1,{os.cpu_count() or 1}", help="listener processes to try")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and database")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    if not shutil.which(STORESCU):
        raise SystemExit("storescu is missing (apt-get install dcmtk)")
    counts = sorted({int(p) for p in args.processes.split(",") if p.strip()})
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-receive-"))
    log(f"load average before: {os.getloadavg()}; working in {tmp}")
    env = bench_environment(db_url=f"{PG_SERVER}/{DB_NAME}", redis_url=REDIS_URL, var_dir=tmp / "var")
    env = stores_env(env, tmp / "stores", "")
    os.environ.clear()
    os.environ.update(env)
    processes = Processes(tmp)
    results = []
    try:
        django_on_fresh_database(db_name=DB_NAME, redis_url=REDIS_URL)
        info = machine()
        folders = [tmp / "dicom" / f"a{n}" for n in range(args.associations)]
        for folder in folders:
            generate(folder, studies=1, series=1, per_series=args.per_association)
        for n, listeners in enumerate(counts, start=1):
            log(f"{listeners} listener process(es), {args.associations} associations")
            result = run(processes, env, folders, listeners, f"R{n}")
            log(f"{result}")
            results.append(result)
        print()
        print(f"{'listeners':>9}{'inst':>6}{'s':>7}{'inst/s':>8}{'MB/s':>6}{'CPU ms/inst':>12}{'peak MB':>8}  spread")
        for r in results:
            print(
                f"{r['listener_processes']:>9}{r['instances']:>6}{r['seconds']:>7}{r['instances_per_second']:>8}"
                f"{r['megabytes_per_second']:>6}{r['listener_cpu_ms_per_instance']:>12}{r['listener_peak_mb']!s:>8}"
                f"  {r['associations_per_process']}"
            )
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        path = out / f"receive-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(
            json.dumps(
                {
                    "date": now.isoformat(timespec="seconds"),
                    "command": " ".join([Path(PYTHON).name, "-m", "bench.receive", *sys.argv[1:]]),
                    "machine": info,
                    "runs": results,
                },
                indent=2,
            )
        )
        print(f"Written: {path.relative_to(ROOT)}")
        return 0
    finally:
        processes.stop_all()
        bench_cleanup(db_name=DB_NAME, redis_url=REDIS_URL, tmp=tmp, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
