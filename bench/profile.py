"""Where the CPU of one instance goes: CPU time per process from /proc, and py-spy's samples per function.

`CpuMeter` counts the CPU time (user + system, from /proc/<pid>/stat) that groups of processes use during a set
of instances: the benchmark's listener and Celery worker (each with its children), the PostgreSQL backends of
the benchmark's database (found by their process titles, `postgres: ... <user> <database> ...`, less the
benchmark's own connection), clamd, Orthanc and the machine's redis-server. A thread samples every process
every `interval` seconds, so a backend that exits during the set still counts up to its last sample. The Redis
server is shared by every engineer on the machine: its figure is every client's, an upper bound.

`PySpy` runs `py-spy record` (the .venv's, a profiling tool and not a project requirement) on a process and its
subprocesses while a set is sent, writes the collapsed stacks (`-f raw`, what flamegraph.pl and speedscope
read) to var/bench/, and `top_functions` reads them back: samples per function, its own and with what it calls,
as milliseconds per instance.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.ingest import PYTHON, children, cpu_seconds

PY_SPY = str(Path(PYTHON).with_name("py-spy"))
PROJECT_PACKAGES = ("studies/", "audit/", "tenants/", "devices/", "portal/", "training/")


def descendants(pid: int) -> list[int]:
    """A process and every process below it."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children(current)
    return out


def _processes() -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append((int(entry.name), cmdline))
    return found


def postgres_backends(database: str, exclude: set[int]) -> list[int]:
    """PostgreSQL backends connected to `database`, by their process titles (`update_process_title`, on by
    default on Linux): `postgres: 15/main: enclave_app <database> 127.0.0.1(40000) idle`."""
    title = re.compile(rf"^postgres: (?:[^:]+: )?\S+ {re.escape(database)} ")
    return [pid for pid, cmdline in _processes() if title.match(cmdline) and pid not in exclude]


def named(program: str) -> list[int]:
    """Processes whose command is `program` (redis-server, clamd)."""
    return [pid for pid, cmdline in _processes() if cmdline.split(" ", 1)[0].rsplit("/", 1)[-1] == program]


class CpuMeter:
    """CPU seconds each group of processes uses between `start()` and `stop()`."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]], interval: float = 0.5) -> None:
        self.groups = groups
        self.interval = interval
        self.base: dict[int, float] = {}
        self.last: dict[str, dict[int, float]] = {name: {} for name in groups}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        for name, pids in self.groups.items():
            for pid in pids():
                value = cpu_seconds(pid)
                if value or pid not in self.last[name]:
                    self.last[name][pid] = value

    def start(self) -> CpuMeter:
        for pids in self.groups.values():
            for pid in pids():
                self.base[pid] = cpu_seconds(pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        return {
            name: round(sum(max(0.0, value - self.base.get(pid, 0.0)) for pid, value in seen.items()), 3)
            for name, seen in self.last.items()
        }


def per_instance_ms(cpu: dict[str, float], instances: int) -> dict[str, float]:
    out = {name: round(seconds * 1000 / instances, 2) for name, seconds in cpu.items()}
    out["total"] = round(sum(v for k, v in out.items() if k != "redis-server (shared)"), 2)
    return out


class PySpy:
    """`py-spy record --subprocesses -f raw` on a running process; `stop()` ends it (SIGINT) and it writes."""

    def __init__(self, pid: int, out: Path, rate: int) -> None:
        self.out = out
        self.rate = rate
        self.log = out.with_suffix(".log")
        argv = [PY_SPY, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "-r", str(rate),
                "-f", "raw", "-o", str(out)]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _frame(frame: str) -> str:
    """'function (path/to/module.py:123)' -> 'function (path/to/module.py)': one entry per function."""
    return re.sub(r":\d+\)$", ")", frame)


def top_functions(raw: Path, *, instances: int, cpu_ms: float, limit: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the functions with the most samples, their own ("self") and with their
    callees ("total"); "steps" is the same for the project's own functions only (studies/, audit/, tenants/ ...):
    the pipeline step by step. Each as ms of CPU per instance: its share of the samples times `cpu_ms`, the CPU
    per instance /proc counted for the process and its children. (py-spy counts a thread that is runnable but
    waiting for a core as active: on a loaded machine samples overstate CPU, their shares still hold.)"""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    samples = 0
    if not raw.exists():
        return {"samples": 0, "error": f"{raw.name} was not written (see {raw.with_suffix('.log').name})"}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
            if "site-packages" not in frame and any(
                f"({package}" in frame or f"/{package}" in frame for package in PROJECT_PACKAGES
            ):
                steps[frame] += count

    def ms(count: int) -> float:
        return round(count / max(samples, 1) * cpu_ms, 2)

    return {
        "samples": samples,
        "samples_per_instance": round(samples / instances, 1),
        "ms_per_instance": cpu_ms,
        "self": [(name, ms(count)) for name, count in own.most_common(limit)],
        "total": [(name, ms(count)) for name, count in total.most_common(limit)],
        "steps": [(name, ms(count)) for name, count in steps.most_common(limit)],
    }


def write_top(path: Path, title: str, summary: dict[str, Any]) -> None:
    lines = [f"# {title}", f"samples: {summary.get('samples')} ({summary.get('samples_per_instance')} per instance); "
             f"CPU ms per instance (/proc): {summary.get('ms_per_instance')}, shared out by the samples"]  # fmt: skip
    if "error" in summary:
        lines.append(summary["error"])
    headings = {"steps": "the project's functions, with their callees (ms per instance)",
                "total": "every function, with its callees", "self": "every function, its own"}  # fmt: skip
    for key, heading in headings.items():
        lines += ["", f"## {heading}"]
        lines += [f"{value:>9.2f}  {name}" for name, value in summary.get(key, [])]
    path.write_text("\n".join(lines) + "\n")


def wait_idle(pids: Callable[[], list[int]], *, below: float = 0.05, timeout: float = 120) -> float:
    """Wait until the processes use less than `below` of a core over a second (a worker's queue drained: the
    thumbnails of the sets before); the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = {pid: cpu_seconds(pid) for pid in pids()}
        time.sleep(1)
        if sum(cpu_seconds(pid) - value for pid, value in before.items()) < below:
            break
    return round(time.monotonic() - t0, 1)


def pids_of(started: Any) -> Callable[[], list[int]]:
    return lambda: descendants(started.process.pid) if started.process.poll() is None else []
