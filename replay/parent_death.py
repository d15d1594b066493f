"""Whether util-linux's `setpriv --pdeathsig` works here: the way qfleet starts children that die
with their parent (redis-server, chromedriver and Chromium, benchmark runs) without running Python
between fork and exec, which is unsafe beside gRPC's and Ray's threads.

`setpriv` may be missing, or too old: `--pdeathsig` came with util-linux 2.33 (RHEL 8 ships 2.32,
Ubuntu 18.04 2.31, where it fails with "unrecognized option"). So it is run once, and the answer
kept for the process's life; callers fall back to a prctl `preexec_fn` (or nothing) when it is no.
"""

from __future__ import annotations

import functools
import shutil
import subprocess


@functools.cache
def pdeathsig_setpriv() -> str | None:
    """The absolute path of a `setpriv` that accepts `--pdeathsig`, or None (missing, too old, or
    failing). Probed once per process: `setpriv --pdeathsig TERM -- true` must exit 0."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    try:
        probe = subprocess.run(
            [setpriv, "--pdeathsig", "TERM", "--", "true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return setpriv if probe.returncode == 0 else None
