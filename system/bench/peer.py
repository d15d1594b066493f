"""A benchmark's peer system in its own interpreter (Reverb, Stable-Baselines3: optional, never
dependencies of qfleet), asked for one measurement at a time so that its runs interleave with
qfleet's.

The protocol is lines: the peer prints one JSON object when it is ready, then reads a number of
seconds per line from stdin and answers each with one JSON object; a closed stdin ends it. Lines
that do not start with "{" (a library's banner, warnings) are skipped; the peer's stderr is shown.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys


class PeerProcess:
    """One peer process speaking the line protocol.

    Args:
        name: the peer in errors ("the Reverb side").
        command: its command line (interpreter, script, arguments).

    Raises:
        RuntimeError: the peer ended before it was ready.
    """

    def __init__(self, name: str, command: list[str]):
        self.name = name
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready: dict = self._answer()
        """The peer's first answer (its version, set-up figures)."""

    def _answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{self.name} ended (exit {self.proc.wait()})")

    def measure(self, seconds: float) -> dict:
        """One measurement of `seconds`; the peer's answer."""
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        """Ends the peer (closed stdin; killed if it has not exited within 60 s)."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def peer_python(given: str | None, module: str, missing: str) -> tuple[str | None, str]:
    """The interpreter for a peer that needs `module`: `given`, else this one if `module` imports
    here; else None and `missing` (what to install, and how to pass the interpreter)."""
    if given is not None:
        return given, ""
    if importlib.util.find_spec(module) is not None:
        return sys.executable, ""
    return None, missing
