"""The test settings' throw-away folders (static files, stored files, blobs) are removed when the process that made
them exits, and only by it: a child forked from it (a listener's process, a pool's) that exits leaves them to its
parent (portal/settings/test.py, `_scratch`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import json, os, sys
sys.path.insert(0, {root!r})
import django
django.setup()
from django.conf import settings
folders = [str(settings.STATIC_ROOT), str(settings.STORAGES["default"]["OPTIONS"]["location"]),
           str(settings.STORAGES["blobs"]["OPTIONS"]["location"].parent)]
for folder in folders:
    with open(os.path.join(folder, "kept-until-exit"), "w") as handle:
        handle.write("x")
child = os.fork()
if child == 0:
    sys.exit(0)  # a normal exit: the exit handlers inherited from the parent run here
os.waitpid(child, 0)
print(json.dumps({{"folders": folders, "after_child": [os.path.isdir(f) for f in folders]}}))
"""


def _run(**environ: str) -> dict[str, list]:
    """PROGRAM in a process of its own under the test settings (and `environ`); what it saw."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test", **environ}
    if "ENCLAVE_TEST_STORE_ROOT" not in environ:
        env.pop("ENCLAVE_TEST_STORE_ROOT", None)
    command = [sys.executable, "-c", PROGRAM.format(root=str(ROOT))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_folders_outlive_a_forked_child_and_go_with_their_maker():
    seen = _run()
    assert seen["after_child"] == [True, True, True]
    assert [Path(folder).exists() for folder in seen["folders"]] == [False, False, False]


def test_a_store_handed_down_by_the_environment_is_left_to_the_process_that_made_it(tmp_path):
    handed = tmp_path / "stores"
    handed.mkdir()
    seen = _run(ENCLAVE_TEST_STORE_ROOT=str(handed))
    assert seen["folders"][2] == str(handed)
    assert handed.is_dir()
    assert (handed / "kept-until-exit").exists()
