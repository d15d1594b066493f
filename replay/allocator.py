"""Keeps freed batch buffers inside the process instead of handing them back to the kernel.

Shards, learners and pixel-env actors allocate and free buffers of megabytes many times a second
(an Atari sample of 256 items is 14 MB, copied into a new buffer at every hop). glibc's malloc
serves blocks this large with mmap and returns them with munmap, or trims them off the heap's top
once freed, so every new buffer page-faults its memory back in, zeroed by the kernel. On the
project VM that was 35-40% of a shard's CPU for Atari samples (perf: clear_page_erms and the
page-fault path), CPU that the learner beside it then lacked; see docs/benchmarks.md.

`keep_freed_memory()` sets glibc's mmap threshold to its maximum (32 MiB) and the trim threshold
to 256 MiB, so such buffers come from and go back to the heap. The cost is resident memory: up
to the trim threshold of freed memory per arena can stay mapped. It does nothing on other C
libraries, nor when the user already chose malloc settings through the environment
(`GLIBC_TUNABLES` with glibc.malloc.*, or `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`), and
`QFLEET_KEEP_FREED_MEMORY=0` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 << 20
"""glibc's largest allowed mmap threshold on 64-bit: smaller blocks come from the heap."""
TRIM_THRESHOLD = 256 << 20
"""Free memory at the heap's top is given back to the kernel only beyond this."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_applied: bool | None = None


def _user_chose() -> str | None:
    if os.environ.get("QFLEET_KEEP_FREED_MEMORY", "1") == "0":
        return "QFLEET_KEEP_FREED_MEMORY=0"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in os.environ:
            return name
    return None


def keep_freed_memory() -> bool:
    """Applies the settings above once per process; returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    reason = _user_chose()
    if reason is not None:
        log.debug("malloc settings left alone: %s is set", reason)
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        )
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable: %s", exc)
        return False
    _applied = ok
    return ok
