"""A run directory: everything `qfleet train` leaves behind, and what `eval`, `report`,
`status` and `--resume` read back (the layout is in `RunDir`'s docstring)."""

from __future__ import annotations

import json
import os
import pathlib

from replay import create_private_file, private_dir
from system.config import RunConfig, load_config, to_yaml
from system.errors import ConfigError


class RunDir:
    """Paths and files of one run directory:

    RUN_DIR/
      config.yaml          the resolved config (every key), as the run used it
      run.json             run name, Redis URL (no password), Ray's GCS address, shard/learner
                           addresses, pids, the id of the run's private secrets file
      state.json           counters a resumed run continues from (env steps, episodes, wall time)
      metrics.jsonl        one JSON object per line: {"kind": "progress" | "eval" | "episodes" | "learner", ...}
      checkpoints/         learner checkpoints (learner-<updates>.pt)
      replay/shard-<i>/    replay shard checkpoints
      prometheus/targets.json   every component's /metrics, for Prometheus' file-based discovery
      learning_curve.png   return vs env steps and vs wall time (written at the end, and by report)
      summary.md           the summary table (idem)
      eval.json            the latest `qfleet eval`

    Owner-only: the folder and the folders and files written here are 0700 and 0600 whatever the
    umask (they hold the run's addresses; checkpoints hold its data and networks).
    """

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)

    @property
    def config_path(self) -> pathlib.Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> pathlib.Path:
        return self.path / "metrics.jsonl"

    def replay_checkpoints(self, shard_id: int) -> pathlib.Path:
        return self.path / "replay" / f"shard-{shard_id}"

    def exists(self) -> bool:
        return self.config_path.exists()

    def load_config(self, overrides: list[str] = ()) -> RunConfig:
        """The run's resolved config (with `--set` overrides on top).

        Raises:
            ConfigError: not a run directory, or an invalid override.
        """
        if not self.config_path.exists():
            raise ConfigError(f"{self.path}: not a qfleet run directory (no config.yaml)")
        return load_config(self.config_path, list(overrides))

    def write_config(self, config: RunConfig) -> None:
        """Writes config.yaml (Redis passwords shown as ***, see `to_yaml`)."""
        private_dir(self.path)
        self._write(self.config_path, to_yaml(config))

    def write_json(self, name: str, data: dict) -> None:
        self._write(self.path / name, json.dumps(data, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """Replaces RUN_DIR/`name` with `text`, atomically and owner-only."""
        self._write(self.path / name, text)

    def read_json(self, name: str) -> dict | None:
        path = self.path / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc})") from None

    def append_records(self, records: list[dict]) -> None:
        """Appends `records` to metrics.jsonl, creating it 0600 (one open: no check-then-create
        race in which a second writer could truncate it)."""
        if not records:
            return
        descriptor = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a") as handle:
            handle.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))

    def records(self, kind: str | None = None) -> list[dict]:
        """Records of metrics.jsonl (of one kind); a truncated last line (a crash) is skipped."""
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if kind is None or record.get("kind") == kind:
                out.append(record)
        return out

    @staticmethod
    def _write(path: pathlib.Path, text: str) -> None:
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        create_private_file(temporary)
        temporary.write_text(text)
        os.replace(temporary, path)
