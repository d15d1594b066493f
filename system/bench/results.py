"""`write_results`: a bench's results JSON, written atomically so that a run cut short (Ctrl-C, a
killed machine) leaves the last whole file, never half of one."""

from __future__ import annotations

import json
import os
import pathlib


def write_results(path: str | pathlib.Path, payload: dict) -> None:
    """Writes `payload` as indented JSON to a temporary file beside `path`, then renames it over `path`."""
    target = pathlib.Path(path)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(payload, indent=1) + "\n")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
