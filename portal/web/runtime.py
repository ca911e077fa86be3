"""Settling a long-running server process once its code is loaded: the DICOM listener and the Celery workers
and the gunicorn workers (portal/gunicorn_conf.py's post_worker_init).

Two costs that grow with what a process holds rather than with what it does, measured on the C-STORE path
(docs/BENCHMARKS.md, "C-STORE CPU per instance: the cycle collector, ...", h3 branch, session 4):

- CPython's cycle collector. A loaded Django process holds well over 100,000 container objects (154,508 after
  `django.setup()` alone here; modules, classes, the models' metadata, the URL patterns, pydicom's dictionaries)
  that never become garbage; every collection of the oldest generation walked all of them, and the youngest
  generation was collected every 700 allocations. `gc.freeze()` moves what exists at start out of the
  collector's reach (it is never freed, as it never would be), and the youngest generation is collected every
  GC_GEN0_THRESHOLD allocations. Cycles made later are still collected.
- glibc's malloc returning large buffers to the kernel. Each 0.5 MB instance passes through several buffers of its
  size (the received data set, its ciphertext, the decrypted copy); above the mmap threshold (128 KiB at first)
  each is a fresh mmap, and each of its pages is faulted in and zeroed by the kernel. Keeping them in the arenas
  (thresholds raised to glibc's maximum) lets the next instance reuse the memory. Other C libraries have no
  mallopt: nothing changes there.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)

__all__ = [
    "GC_GEN0_THRESHOLD",
    "MALLOC_MMAP_THRESHOLD",
    "MALLOC_TRIM_THRESHOLD",
    "malloc_keep_large_buffers",
    "process_settle",
]

GC_GEN0_THRESHOLD = 50_000
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 64 << 20


def malloc_keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module's docstring); False where there is no mallopt."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)) and bool(
        mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
    )


def process_settle(*, what: str) -> None:
    """Call once the process has loaded what it serves with, before it serves: collect what start-up left, freeze
    the rest out of the collector's reach, collect the youngest generation less often, keep large buffers. `what`
    names the process in the log line."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    kept = malloc_keep_large_buffers()
    logger.info(
        "%s settled: %d start-up objects out of the cycle collector's reach, youngest generation every %d "
        "allocations, large buffers %s",
        what, gc.get_freeze_count(), GC_GEN0_THRESHOLD, "kept" if kept else "as the C library decides",
    )  # fmt: skip
