"""Keeps freed batch buffers inside the process instead of handing them back to the kernel.

glibc serves multi-MB blocks with mmap and unmaps them once freed, so every new batch buffer
page-faults zeroed memory back in: 35-40% of a shard's CPU on Atari samples (docs/benchmarks.md).
`keep_freed_memory()` raises the mmap and trim thresholds so such buffers stay on the heap.
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
    """Applies the settings above once per process; returns whether they are in effect.

    The cost is resident memory: up to TRIM_THRESHOLD of freed memory per arena stays mapped. Does
    nothing on other C libraries, nor when the user chose malloc settings through the environment
    (`GLIBC_TUNABLES` with glibc.malloc.*, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`);
    `QFLEET_KEEP_FREED_MEMORY=0` turns it off.
    """
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
