"""`write_results`: a bench's results JSON, written atomically so that a run cut short (Ctrl-C, a
killed machine) leaves the last whole file, never half of one; `provenance`: what a results file
says about where its figures came from."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write_results(path: str | pathlib.Path, payload: dict) -> None:
    """Writes `payload` as indented JSON to a temporary file beside `path`, then renames it over `path`."""
    target = pathlib.Path(path)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(payload, indent=1) + "\n")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def provenance(argv: list[str], machine: str) -> dict:
    """The command (as `qfleet ...`), the date (UTC), the checkout's commit and whether it had
    uncommitted changes (`dirty`; both None outside a git checkout), the load average and the machine."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "command": " ".join(["qfleet", *argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
        "dirty": dirty,
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "machine": f"{machine}, {os.cpu_count()} CPUs",
    }


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
