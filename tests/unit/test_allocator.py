"""keep_freed_memory(): large buffers freed and allocated again do not page-fault back in."""

import os
import subprocess
import sys

import pytest

_SCRIPT = """
import resource
from replay.allocator import keep_freed_memory
applied = keep_freed_memory()
held = [bytearray(14 << 20) for _ in range(3)]  # a few batches alive at once, then freed
held.clear()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # an Atari sample's worth of bytes, written and freed, 20 times
    buffer = bytearray(14 << 20)
    buffer[::4096] = bytes(len(range(0, 14 << 20, 4096)))
    del buffer
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_buffer(**env) -> tuple[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    applied, faults = result.stdout.split()
    return applied, float(faults)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings")
def test_freed_buffers_are_reused_without_page_faults():
    applied, faults = _faults_per_buffer()
    assert applied == "True" and faults < 1.0
    # Turned off (or left to the user's own malloc settings): the same loop faults every time.
    applied, faults = _faults_per_buffer(QFLEET_KEEP_FREED_MEMORY="0")
    assert applied == "False" and faults > 10
    assert _faults_per_buffer(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")[0] == "False"
