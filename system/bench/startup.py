"""`qfleet bench startup`: how long `qfleet train` takes to its first env step and first update.

Runs a short CartPole `qfleet train` (the embedded default: Redis, Ray, shards, learner, actors
on this machine) `runs` times, one after another, each as its own process as a user starts it,
and reads each run's `startup` record (system/train/startup.py: every phase as seconds since the
process started). Reports each run's breakdown, the median of each phase, the machine's load
average before each run (start-up times on a busy machine are not those of an idle one) and the
wall time of each whole command, as JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from system.bench.children import start_child, stop_child
from system.config import ConfigError
from system.train.run_dir import RunDir
from system.train.startup import PHASE_NAMES

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "cartpole.yaml"
"""configs/cartpole.yaml of this checkout."""

RUN_TIMEOUT_S = 300.0
"""A run that takes longer is stopped (SIGTERM) and reported as failed."""

STOP_TIMEOUT_S = 60.0
"""How long a run stopped for its time may take to stop in order before it is killed."""


class StartupBenchError(RuntimeError):
    """A benchmark run failed or left no start-up record.

    Attributes:
        run_dir: the failed run's directory (its log is `train.log` there).
    """

    def __init__(self, message: str, run_dir: pathlib.Path):
        super().__init__(message)
        self.run_dir = run_dir


def read_startup(run_dir: pathlib.Path) -> dict[str, float | None]:
    """The phases of the run's latest `startup` record (seconds since its process started).

    Raises:
        StartupBenchError: the run recorded none.
    """
    records = RunDir(run_dir).records("startup")
    if not records:
        raise StartupBenchError(f"no startup record in {run_dir}/metrics.jsonl", run_dir)
    return dict(records[-1]["phases"])


def median_phases(breakdowns: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Each phase's median over the runs that reached it (None when none did), in PHASES order."""
    medians: dict[str, float | None] = {}
    for name in PHASE_NAMES:
        values = [b[name] for b in breakdowns if b.get(name) is not None]
        medians[name] = round(statistics.median(values), 3) if values else None
    return medians


def check_overrides(overrides: list[str]) -> None:
    """Refuses `redis.*` overrides: every benchmark run starts its own embedded Redis, and a
    redis.url (which may carry a password) would go on the command line and into the report.

    Raises:
        ConfigError: a redis.* override.
    """
    for setting in overrides:
        if setting.strip().startswith("redis."):
            key = setting.split("=", 1)[0].strip()
            raise ConfigError(
                f"--set {key}: qfleet bench startup runs the embedded Redis of each run; redis.* settings are not taken"
            )


def train_command(config: str, run_dir: pathlib.Path, total_env_steps: int, overrides: list[str]) -> list[str]:
    """The `qfleet train` command line of one benchmark run (no secrets: none are on it)."""
    sets = [f"train.total_env_steps={total_env_steps}", "train.eval_every_steps=0", *overrides]
    command = [sys.executable, "-m", "system.cli", "train", config, "--run-dir", str(run_dir)]
    for setting in sets:
        command += ["--set", setting]
    return command


def one_run(config: str, run_dir: pathlib.Path, total_env_steps: int, overrides: list[str]) -> dict:
    """One `qfleet train` to its end: its phases, its whole wall time and the load before it.

    Raises:
        StartupBenchError: it failed, timed out, or recorded no start-up.
    """
    load = os.getloadavg()[0]
    command = train_command(config, run_dir, total_env_steps, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    began = time.perf_counter()
    with open(log_path, "w") as log:
        proc = start_child(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_child(proc, STOP_TIMEOUT_S)  # SIGTERM: the run stops in order (Ray, Redis and its hosts go)
            raise StartupBenchError(f"qfleet train ran past {RUN_TIMEOUT_S:.0f} s; see {log_path}", run_dir) from None
        except BaseException:  # Ctrl-C: the run is in a session of its own, so it is stopped here
            stop_child(proc, STOP_TIMEOUT_S)
            raise
    wall = time.perf_counter() - began
    if code != 0:
        raise StartupBenchError(f"qfleet train exited with {code}; see {log_path}", run_dir)
    return {"phases": read_startup(run_dir), "wall_s": round(wall, 2), "load_1min": round(load, 2)}


def run_startup_bench(
    runs: int,
    config: str | None,
    total_env_steps: int,
    overrides: list[str],
    output: str | None,
    out_dir: str | None = None,
) -> int:
    """Runs the benchmark and prints its JSON; 1 when a run failed (after the others).

    Args:
        out_dir: where the runs' directories go (kept); None: a temporary folder, removed
            unless a run failed (its train.log is then there to read).

    Raises:
        ConfigError: a redis.* override (`check_overrides`).
    """
    check_overrides(overrides)
    config = config or str(DEFAULT_CONFIG)
    work = pathlib.Path(out_dir) if out_dir else pathlib.Path(tempfile.mkdtemp(prefix="qfleet-bench-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    results, failures = [], []
    for index in range(runs):
        try:
            result = one_run(config, work / f"run-{index}", total_env_steps, overrides)
        except StartupBenchError as exc:
            failures.append(str(exc))
            log_path = exc.run_dir / "train.log"
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            print(f"run {index}: {exc}\n{tail}", file=sys.stderr)
            continue
        results.append(result)
        first = result["phases"].get("first_env_step")
        print(f"run {index}: first env step at {first} s, load {result['load_1min']}", file=sys.stderr)
    if failures or out_dir:
        print(f"run directories kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "command": " ".join(["qfleet train", config, f"--set train.total_env_steps={total_env_steps}", *overrides]),
        "cpus": os.cpu_count(),
        "runs": results,
        "median": median_phases([r["phases"] for r in results]),
        "failures": failures,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        pathlib.Path(output).write_text(text + "\n")
    return 1 if failures else 0
