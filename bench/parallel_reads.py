"""Many DICOMweb reads at once against a running portal (`make run`), and what they answered.

Not a speed figure: the check that a burst of parallel reads (a viewer opening a study, a migration tool paging
through QIDO-RS) gets answers and never a 5xx, now that every read is recorded before it leaves. Usage, with a
portal from `make run` and a token from `manage.py api_token create --user north-radiologist --tenant north`:

    .venv/bin/python -m bench.parallel_reads --url http://127.0.0.1:8000 --tenant north --token TOKEN --reads 300

It searches the tenant's studies, then sends `--reads` requests at once (`--threads` at a time), mixing QIDO-RS
searches, WADO-RS metadata, rendered frames and thumbnails of the studies found, and prints the count of each status
code and the median and slowest times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tenant", default="north")
    parser.add_argument("--token", required=True)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--threads", type=int, default=300)
    args = parser.parse_args()

    base = f"{args.url.rstrip('/')}/dicomweb/{args.tenant}"
    headers = {"Authorization": f"Bearer {args.token}"}
    found = requests.get(f"{base}/instances", headers={**headers, "Accept": "application/dicom+json"}, timeout=60)
    found.raise_for_status()
    instances = [
        (i["0020000D"]["Value"][0], i["0020000E"]["Value"][0], i["00080018"]["Value"][0])
        for i in (found.json() if found.status_code == 200 else [])
    ]
    if not instances:
        raise SystemExit("No instances in this tenant: send a study first (README, storescu).")

    def target(n: int) -> tuple[str, dict[str, str]]:
        study, series, sop = instances[n % len(instances)]
        kind = n % 4
        if kind == 0:
            return f"{base}/studies?limit=50&offset={n % 7}", {"Accept": "application/dicom+json"}
        if kind == 1:
            return f"{base}/studies/{study}/series/{series}/metadata", {"Accept": "application/dicom+json"}
        if kind == 2:
            return f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered", {"Accept": "image/png"}
        return f"{base}/studies/{study}/series/{series}/thumbnail", {"Accept": "image/png"}

    def read(n: int) -> tuple[int, float]:
        url, accept = target(n)
        started = time.monotonic()
        try:
            status = requests.get(url, headers={**headers, **accept}, timeout=120).status_code
        except requests.RequestException:
            status = 0  # no answer at all (connection refused or reset, timeout)
        return status, time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        results = list(pool.map(read, range(args.reads)))
    wall = time.monotonic() - started
    codes = Counter(status for status, _ in results)
    times = sorted(seconds for _, seconds in results)
    print(f"{args.reads} parallel reads ({args.threads} at a time) over {len(instances)} instances in {wall:.1f} s")
    print("status codes: " + ", ".join(f"{code}: {count}" for code, count in sorted(codes.items())))
    print(f"median {statistics.median(times) * 1000:.0f} ms, slowest {times[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
