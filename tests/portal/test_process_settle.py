"""Long-running processes settle once loaded (portal.web.runtime): their start-up objects out of the cycle
collector's reach, the youngest generation collected less often, large buffers kept. In a process of its own,
since it changes the interpreter's collector for good."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import gc, json, sys, weakref
sys.path.insert(0, {root!r})
import django, os
os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings.test"
django.setup()
from portal.web.runtime import GC_GEN0_THRESHOLD, process_settle

class Node:
    pass

loaded = [Node() for _ in range(1000)]  # objects of start-up, alive when the process settles
before = gc.get_freeze_count()
process_settle(what="test process")
frozen = gc.get_freeze_count()
# A cycle made after settling is still found and freed by the collector.
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps({{"before": before, "frozen": frozen, "gen0": gc.get_threshold()[0],
                  "expected_gen0": GC_GEN0_THRESHOLD, "cycle_freed": gone() is None, "loaded_kept": len(loaded)}}))
"""


def test_settling_freezes_what_is_loaded_and_still_collects_later_cycles():
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(root=str(ROOT))], capture_output=True, text=True, check=True, cwd=ROOT
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] == 0
    assert result["frozen"] > 100_000  # Django and the apps: no longer walked by every full collection
    assert result["gen0"] == result["expected_gen0"]
    assert result["cycle_freed"] is True
    assert result["loaded_kept"] == 1000
    assert "test process settled" in out.stderr + out.stdout
