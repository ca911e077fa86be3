"""gunicorn's workers keep large buffers in their threads' malloc arenas (portal.web.runtime, called by
portal/gunicorn_conf.py's post_worker_init; issue 10): a request thread that reads and decrypts one instance after
another reuses its arena's memory instead of having the kernel map, fault in and zero fresh pages for each one.
Counted in page faults, in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# 60 encrypted CT-sized blobs in 60 files, each read and decrypted ten times in a thread, as a retrieval's thread
# does per instance. Without the setting this glibc faulted about 13,500 pages in (and spent about 35 ms of
# system CPU) per 60.
PROGRAM = """
import os, resource, sys, tempfile, threading
sys.path.insert(0, {root!r})
from portal.web import runtime
from studies.storage import envelope
if sys.argv[1] == "tuned":
    assert runtime.malloc_keep_large_buffers()
key = envelope.new_key()
folder = tempfile.mkdtemp()
sealed = envelope.encrypt(os.urandom(525_000), data_key=key, tenant_id=1, blob_id="b")
paths = []
for n in range(60):
    paths.append(os.path.join(folder, str(n)))
    with open(paths[-1], "wb") as handle:
        handle.write(sealed)
faults = []
def retrievals():
    for rounds in (1, 10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            for path in paths:
                with open(path, "rb") as handle:
                    data = handle.read()
                chunks = envelope.decrypt_chunks(data, data_key=key, tenant_id=1, blob_id="b")
                del data, chunks
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=retrievals)
thread.start()
thread.join()
print(faults[-1])
"""


def test_a_worker_thread_reuses_its_buffers_from_one_instance_to_the_next():
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(root=str(ROOT)), "tuned"], capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip()) < 600  # under one page per instance read (0 here), not about 22
