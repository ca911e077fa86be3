"""Enclave beside Orthanc (`make bench`): the same synthetic CT set, in one run, through both archives.

Orthanc comes from Debian's packages (`apt-get install orthanc orthanc-dicomweb`). The benchmark starts it with a
configuration of its own in a temporary folder (loopback ports, `DicomAet` ORTHANC, no authentication, storage
and index in the folder; every other option is the Debian package's default, read from /etc/orthanc/orthanc.json,
so `SyncStorageArea` stays on) and stops it at the end. Enclave runs as in bench/ingest.py: its own database
(`enclave_bench_vs`, dropped and created again) and Redis database (/9, flushed), `manage.py dicom_listener`, one
Celery worker (-c 2) and gunicorn (2 sync workers), with encryption, the built-in scanner and auditing on.

Measured for both, in this order, with `TCP_NODELAY=1` for dcmtk and Orthanc:

- C-STORE of the set with dcmtk's storescu in one association, then of a second set (the same size, other UIDs)
  in four parallel associations (the set split in four): instances/s from the start of the senders to the last
  instance searchable. For Enclave that is the last IngestItem's final write (the transaction that indexes it);
  for Orthanc, which indexes before it answers a C-STORE, the moment `/statistics` counts every instance (polled
  every 50 ms after the senders exit).
- WADO-RS retrieval of one series (`multipart/related; type="application/dicom"`, every instance) over one
  keep-alive `requests.Session`: MB/s of the body, median of `--retrievals` timed runs after one warm-up.
- QIDO-RS medians over one `requests.Session`: studies by PatientID, series of a study, instances of a series.

Prints a table and writes var/bench/orthanc-<time>.json. Defaults are small (2 studies x 2 series x 30
instances = 120 per set); `--full` uses the issue's size (480 instances: 4 x 2 x 60).

    .venv/bin/python -m bench.orthanc [--full] [--studies 2 --series 2 --per-series 30] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (the path above first)
    GUNICORN,
    MB,
    PG_SERVER,
    PYTHON,
    STORESCU,
    BenchError,
    Processes,
    Started,
    Target,
    bench_cleanup,
    bench_environment,
    cpu_busy_since,
    django_on_fresh_database,
    free_port,
    generate,
    log,
    log_says,
    machine,
    machine_cpu,
    memory_of,
    provision,
    stores_env,
    wait_final,
    worker_start,
)

DB_NAME = "enclave_bench_vs"
REDIS_URL = "redis://127.0.0.1:6379/9"
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
ORTHANC_DEFAULTS = Path("/etc/orthanc/orthanc.json")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ASSOCIATIONS = 4


# Senders
# ------------------------------------------------------------------------------


def split(files: list[Path], folder: Path, parts: int) -> list[Path]:
    """`parts` folders of hard links, the files dealt round-robin (each association sends every series)."""
    folders = []
    for n in range(parts):
        sub = folder / f"part{n}"
        sub.mkdir(parents=True)
        folders.append(sub)
    for i, path in enumerate(files):
        os.link(path, folders[i % parts] / path.name)
    return folders


def storescu(folders: list[Path], *, calling: str, called: str, port: int, logs: Path, tag: str) -> tuple[float, float]:
    """Send each folder in an association of its own, all at once; (t0, seconds until the last sender exits)."""
    running = []
    t0 = time.time()
    for n, folder in enumerate(folders):
        out = (logs / f"storescu-{tag}-{n}.log").open("wb")
        argv = [STORESCU, "-aet", calling, "-aec", called, "+sd", "127.0.0.1", str(port), str(folder)]
        env = {**os.environ, "TCP_NODELAY": "1"}
        running.append((subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT), out))
    for process, out in running:
        code = process.wait()
        out.close()
        if code != 0:
            raise BenchError(f"storescu exited with {code} (see {out.name})")
    return t0, time.time() - t0


# Enclave
# ------------------------------------------------------------------------------


def enclave_searchable_at(target: Target) -> float:
    """The moment the run's last instance became searchable: the last final write of its IngestItems."""
    from django.db.models import Max

    from studies.models import IngestItem
    from tenants.scoping import tenant_scope

    with tenant_scope(target.tenant):
        last = IngestItem.objects.aggregate(last=Max("updated_at"))["last"]
        stored = IngestItem.objects.filter(state=IngestItem.State.STORED).count()
        total = IngestItem.objects.count()
    if stored != total:
        raise BenchError(f"Enclave stored {stored} of {total} items")
    return float(last.timestamp())


def enclave_reader(target: Target) -> str:
    """A radiologist of the run's tenant with an API token (a technologist may send but not read)."""
    from django.db import transaction

    from audit.context import audit_context
    from tenants import services
    from tenants.models import Role, User
    from tenants.scoping import tenant_scope

    with audit_context(system_principal="bench/orthanc.py"), transaction.atomic():
        user = User(username=f"{target.tenant.slug}-radiologist", email=f"{target.tenant.slug}@bench.enclave.invalid")
        user.set_unusable_password()
        user.save()
        services.membership_grant_by_operator(
            tenant=target.tenant, user=user, role=Role.RADIOLOGIST, reason="benchmark"
        )
        with tenant_scope(target.tenant):
            _, raw = services.api_token_create(actor=user, tenant=target.tenant, name="benchmark")
    return raw


def gunicorn_start(processes: Processes, env: dict[str, str], base: str, port: int, token: str) -> Started:
    import requests

    def answers(_: Started) -> bool:
        try:
            requests.get(f"{base}/studies?limit=1", headers={"Authorization": f"Bearer {token}"}, timeout=2)
        except requests.RequestException:
            return False
        return True

    argv = [GUNICORN, "portal.wsgi:application", "-w", "2", "-b", f"127.0.0.1:{port}", "--timeout", "300"]
    return processes.start("gunicorn", argv, {**env, "PORTAL_BASE_URL": f"http://127.0.0.1:{port}"}, answers)


# Orthanc
# ------------------------------------------------------------------------------


def orthanc_config(folder: Path, *, http_port: int, dicom_port: int) -> Path:
    """Orthanc's own configuration for this run: the Debian defaults, with paths, ports and plugins of its own."""
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def orthanc_start(processes: Processes, folder: Path) -> tuple[Started, str, int]:
    import requests

    http_port, dicom_port = free_port(), free_port()
    config = orthanc_config(folder, http_port=http_port, dicom_port=dicom_port)
    base = f"http://127.0.0.1:{http_port}"

    def answers(_: Started) -> bool:
        try:
            return requests.get(f"{base}/system", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    env = {**os.environ, "TCP_NODELAY": "1"}
    started = processes.start("orthanc", [ORTHANC, str(config)], env, answers)
    return started, base, dicom_port


def orthanc_searchable_at(base: str, expected: int, timeout: float) -> float:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        count = requests.get(f"{base}/statistics", timeout=10).json()["CountInstances"]
        if count >= expected:
            return time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"Orthanc counts {count} of {expected} instances")
        time.sleep(0.05)


# Reads (the same client code for both)
# ------------------------------------------------------------------------------


def retrieve_series(session: Any, url: str, headers: dict[str, str], *, runs: int, expected: int) -> dict[str, Any]:
    timings: list[float] = []
    sizes: list[int] = []
    for i in range(runs + 1):  # the first warms up
        t0 = time.perf_counter()
        size, parts, tail = 0, 0, b""
        with session.get(url, headers={**headers, "Accept": ACCEPT_DICOM}, stream=True, timeout=600) as response:
            if response.status_code != 200:
                raise BenchError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
            boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"').encode()
            for chunk in response.iter_content(chunk_size=1 << 20):
                size += len(chunk)
                parts += (tail + chunk).count(b"--" + boundary + b"\r\n")  # never split: the tail overlaps
                tail = chunk[-(len(boundary) + 3) :]
        elapsed = time.perf_counter() - t0
        if parts != expected:
            raise BenchError(f"{url}: {parts} parts, expected {expected}")
        if i:
            timings.append(elapsed)
            sizes.append(size)
    rates = [s / MB / t for s, t in zip(sizes, timings, strict=True)]
    return {
        "body_megabytes": round(sizes[0] / MB, 2),
        "megabytes_per_second_median": round(statistics.median(rates), 1),
        "megabytes_per_second": [round(r, 1) for r in rates],
        "seconds_median": round(statistics.median(timings), 3),
    }


def search_medians(session: Any, searches: dict[str, str], headers: dict[str, str], repeat: int) -> dict[str, Any]:
    out = {}
    for name, url in searches.items():
        timings = []
        for i in range(repeat + 3):
            t0 = time.perf_counter()
            response = session.get(url, headers={**headers, "Accept": "application/dicom+json"}, timeout=60)
            body = response.content
            elapsed = time.perf_counter() - t0
            if response.status_code != 200 or not json.loads(body):
                raise BenchError(f"{url}: HTTP {response.status_code}: {body[:200]!r}")
            if i >= 3:
                timings.append(elapsed * 1000)
        out[name] = round(statistics.median(timings), 1)
    return out


def searches_for(base: str, uids: dict[str, str]) -> dict[str, str]:
    study, series = uids["study"], uids["series"]
    return {
        "studies by PatientID": f"{base}/studies?PatientID={uids['patient_id']}",
        "series of a study": f"{base}/studies/{study}/series",
        "instances of a series": f"{base}/studies/{study}/series/{series}/instances",
    }


def first_series(files: list[Path]) -> tuple[dict[str, str], int]:
    import pydicom

    series: dict[str, int] = {}
    first: dict[str, str] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series[ds.SeriesInstanceUID] = series.get(ds.SeriesInstanceUID, 0) + 1
        if not first:
            first = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID, "patient_id": ds.PatientID}
    return first, series[first["series"]]


# Main
# ------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=2)
    parser.add_argument("--series", type=int, default=2, help="series per study")
    parser.add_argument("--per-series", type=int, default=30, help="instances per series")
    parser.add_argument("--full", action="store_true", help="the issue's size: 4 x 2 x 60 = 480 instances per set")
    parser.add_argument("--retrievals", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per search")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and database")
    args = parser.parse_args()
    if args.full:
        args.studies, args.series, args.per_series = 4, 2, 60
    return args


def main() -> int:
    import requests

    args = arguments()
    for needed, hint in ((ORTHANC, "apt-get install orthanc orthanc-dicomweb"), (STORESCU, "apt-get install dcmtk")):
        if not shutil.which(needed) and not Path(needed).exists():
            raise SystemExit(f"{needed} is missing ({hint})")
    tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-vs-"))
    load_before = [round(v, 2) for v in os.getloadavg()]
    log(f"load average before: {load_before}; working in {tmp}")
    base_env = bench_environment(
        db_url=f"{PG_SERVER}/{DB_NAME}", redis_url=REDIS_URL, var_dir=tmp / "var", log_level="WARNING"
    )
    base_env = stores_env(base_env, tmp / "stores", "")
    os.environ.clear()
    os.environ.update(base_env)
    processes = Processes(tmp)
    figures: dict[str, dict[str, Any]] = {"enclave": {}, "orthanc": {}}
    try:
        django_on_fresh_database(db_name=DB_NAME, redis_url=REDIS_URL)
        info = machine()
        per_set = args.studies * args.series * args.per_series
        sets = {}
        for name in ("one", "four"):
            files = generate(
                tmp / f"dicom-{name}", studies=args.studies, series=args.series, per_series=args.per_series
            )
            sets[name] = files
        megabytes = sum(p.stat().st_size for p in sets["one"]) / MB
        folders = {"one": [tmp / "dicom-one"], "four": split(sets["four"], tmp / "split-four", ASSOCIATIONS)}
        log(f"two sets of {per_set} instances, {megabytes:.1f} MB each")

        # Enclave: listener, worker and gunicorn for the whole run.
        targets = {"one": provision("vs1"), "four": provision("vs4")}
        cpu0 = machine_cpu()
        worker = worker_start(processes, base_env)
        listener = processes.start(
            "listener",
            [PYTHON, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", "0"],
            base_env,
            log_says(r"DICOM listener on 127\.0\.0\.1:\d+"),
        )
        port = int(re.findall(r"DICOM listener on 127\.0\.0\.1:(\d+)", listener.output())[0])
        for name, target in targets.items():
            t0, client = storescu(
                folders[name], calling=target.device_ae, called=target.tenant_ae, port=port, logs=tmp, tag=f"e{name}"
            )
            wait_final(target, per_set, args.timeout)
            seconds = enclave_searchable_at(target) - t0
            figures["enclave"][f"cstore_{name}"] = {
                "seconds": round(seconds, 2),
                "instances_per_second": round(per_set / seconds, 1),
                "senders_done_s": round(client, 2),
            }
            log(f"Enclave C-STORE ({name}): {per_set / seconds:.1f} inst/s")
        figures["enclave"]["machine_busy_during_cstore"] = cpu_busy_since(cpu0)
        figures["enclave"]["memory"] = {"listener": memory_of(listener), "worker": memory_of(worker)}
        processes.stop("listener")

        uids, series_size = first_series(sets["one"])
        target = targets["one"]
        token = enclave_reader(target)
        web_port = free_port()
        base = f"http://127.0.0.1:{web_port}/dicomweb/{target.tenant.slug}"
        web = gunicorn_start(processes, base_env, base, web_port, token)
        auth = {"Authorization": f"Bearer {token}"}
        with requests.Session() as session:
            for _ in range(4):  # both workers have loaded the application
                session.get(f"{base}/studies?limit=1", headers=auth, timeout=30)
            figures["enclave"]["wado_series"] = retrieve_series(
                session,
                f"{base}/studies/{uids['study']}/series/{uids['series']}",
                auth,
                runs=args.retrievals,
                expected=series_size,
            )
            figures["enclave"]["qido_median_ms"] = search_medians(session, searches_for(base, uids), auth, args.repeat)
        figures["enclave"]["memory"]["gunicorn"] = memory_of(web)
        processes.stop("gunicorn")
        processes.stop("worker")
        log(f"Enclave: {figures['enclave']['wado_series']}, {figures['enclave']['qido_median_ms']}")

        # Orthanc: the same sets, in the same order.
        cpu0 = machine_cpu()
        orthanc, obase, dicom_port = orthanc_start(processes, tmp / "orthanc")
        stored = 0
        for name in ("one", "four"):
            t0, client = storescu(folders[name], calling="BENCHCT", called="ORTHANC", port=dicom_port, logs=tmp,
                                  tag=f"o{name}")  # fmt: skip
            stored += per_set
            seconds = orthanc_searchable_at(obase, stored, args.timeout) - t0
            figures["orthanc"][f"cstore_{name}"] = {
                "seconds": round(seconds, 2),
                "instances_per_second": round(per_set / seconds, 1),
                "senders_done_s": round(client, 2),
            }
            log(f"Orthanc C-STORE ({name}): {per_set / seconds:.1f} inst/s")
        figures["orthanc"]["machine_busy_during_cstore"] = cpu_busy_since(cpu0)
        dbase = f"{obase}/dicom-web"
        with requests.Session() as session:
            figures["orthanc"]["wado_series"] = retrieve_series(
                session,
                f"{dbase}/studies/{uids['study']}/series/{uids['series']}",
                {},
                runs=args.retrievals,
                expected=series_size,
            )
            figures["orthanc"]["qido_median_ms"] = search_medians(session, searches_for(dbase, uids), {}, args.repeat)
        figures["orthanc"]["memory"] = {"orthanc": memory_of(orthanc)}
        processes.stop("orthanc")
        log(f"Orthanc: {figures['orthanc']['wado_series']}, {figures['orthanc']['qido_median_ms']}")

        rows = table(figures)
        print()
        for row in rows:
            print(row)
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        path = out / f"orthanc-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        version = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, check=False).stdout
        path.write_text(
            json.dumps(
                {
                    "date": now.isoformat(timespec="seconds"),
                    "command": " ".join([Path(PYTHON).name, "-m", "bench.orthanc", *sys.argv[1:]]),
                    "machine": info,
                    "load_average_before": load_before,
                    "load_average_after": [round(v, 2) for v in os.getloadavg()],
                    "orthanc": version.splitlines()[0] if version else "",
                    "set": {"instances": per_set, "megabytes": round(megabytes, 1), "series_retrieved": series_size},
                    "figures": figures,
                    "table": rows,
                },
                indent=2,
            )
        )
        print(f"\nWritten: {path.relative_to(ROOT)}")
        return 0
    finally:
        processes.stop_all()
        bench_cleanup(db_name=DB_NAME, redis_url=REDIS_URL, tmp=tmp, keep=args.keep)


def table(figures: dict[str, dict[str, Any]]) -> list[str]:
    e, o = figures["enclave"], figures["orthanc"]
    rows = [f"{'figure':<56} {'Orthanc':>10} {'Enclave':>10} {'ratio':>7}"]

    def row(label: str, ortho: float, encl: float, higher_is_better: bool = True) -> None:
        ratio = encl / ortho if higher_is_better else ortho / encl
        rows.append(f"{label:<56} {ortho:>10.1f} {encl:>10.1f} {ratio:>7.2f}")

    row("C-STORE, one association (inst/s)", o["cstore_one"]["instances_per_second"],
        e["cstore_one"]["instances_per_second"])  # fmt: skip
    row(f"C-STORE, {ASSOCIATIONS} associations (inst/s)", o["cstore_four"]["instances_per_second"],
        e["cstore_four"]["instances_per_second"])  # fmt: skip
    row("WADO-RS series (MB/s, median)", o["wado_series"]["megabytes_per_second_median"],
        e["wado_series"]["megabytes_per_second_median"])  # fmt: skip
    for name, value in o["qido_median_ms"].items():
        row(f"QIDO-RS {name} (ms; ratio Orthanc/Enclave)", value, e["qido_median_ms"][name], False)
    return rows


if __name__ == "__main__":
    from bench.ingest import _signals_raise

    with _signals_raise():
        sys.exit(main())
