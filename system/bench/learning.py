"""`qfleet bench learning`: qfleet's default recipe beside Stable-Baselines3 (rl-baselines3-zoo's
hyper-parameters) and RLlib (its tuned examples) on a suite of tasks (issue #23), one run after
another (never side by side, so wall times compare), with the same evaluation schedule for all.

Per task (system.bench.learning_tasks) and seed: env steps and wall time to the first greedy
evaluation at or above the task's threshold, whether every later one stays there ("held"), and the
final evaluation; Markdown tables, JSON (written after every run: `--resume` continues a suite that
died), and one PNG per task. qfleet runs `qfleet train --env ID` with only the budget, seed and the
evaluation schedule set; the peers run in their own interpreters (separate venvs) as child
processes that stream their evaluations back as JSON lines (system/bench/sb3_learning_peer.py,
rllib_learning_peer.py); a peer that is not installed is skipped with a line saying so. "cleanrl" is
the CleanRL-style DQN baseline (system.bench.dqn_baseline, CleanRL's CartPole hyper-parameters) that
docs/benchmarks.md's CartPole table ran beside qfleet.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

from system.bench.children import start_child, stop_child
from system.bench.learning_results import summarise, task_table
from system.bench.learning_tasks import Task
from system.bench.peer import peer_python

ROOT = pathlib.Path(__file__).resolve().parents[2]
"""The checkout: `qfleet train` runs from here (configs/ paths are relative to it)."""

SYSTEMS = ("qfleet", "sb3", "rllib", "cleanrl")

PEERS = {
    "sb3": ("stable_baselines3", "sb3_learning_peer.py", "--sb3-python", "requirements-bench-sb3.txt"),
    "rllib": ("ray.rllib", "rllib_learning_peer.py", "--rllib-python", "requirements-bench-rllib.txt"),
}
"""Peer system -> (the module it needs, its script, the option naming its interpreter, its pins)."""

CLEANRL_TASKS = ("CartPole-v1", "Acrobot-v1")
"""The CleanRL-style baseline's envs (flat observations, discrete actions)."""


@dataclasses.dataclass(frozen=True)
class Suite:
    """What one `qfleet bench learning` runs."""

    tasks: tuple[Task, ...]
    """The tasks, with their budgets and thresholds as given (--steps, --threshold)."""
    systems: tuple[str, ...]
    """Among SYSTEMS, in the order they run per task."""
    seeds: tuple[int, ...]
    peer_pythons: dict[str, str | None]
    """Peer -> its interpreter as given (None: this one, if it has the peer)."""
    out_dir: pathlib.Path
    """Run directories, logs, the PNGs, results.md."""
    output: pathlib.Path
    """The JSON results (rewritten after every run)."""
    resume: bool = False
    """Keep the runs already in `output` (same task, system, seed and budget) instead of running them."""
    qfleet_config: str | None = None
    """A config file for qfleet instead of the default recipe (`--env`); None for the suite as such."""
    qfleet_overrides: tuple[str, ...] = ()
    """`--set` overrides for qfleet (none for the suite as such)."""


def run_key(run: dict) -> tuple:
    return run["task"], run["system"], run["seed"], run["env_steps"]


def run_qfleet(task: Task, seed: int, suite: Suite) -> dict:
    """`qfleet train --env ID` (or the suite's config) for one seed; its evaluations from metrics.jsonl."""
    name = f"{task.name}-qfleet-seed{seed}"
    run_dir = suite.out_dir / name
    settings = {
        "train.seed": seed,
        "train.total_env_steps": task.env_steps,
        "train.eval_every_steps": task.eval_every,
        "train.eval_episodes": task.eval_episodes,
        "train.log_every_s": 30,
    }
    source = [suite.qfleet_config] if suite.qfleet_config else ["--env", task.env_id]
    command = [sys.executable, "-m", "system.cli", "train", *source, "--run-dir", str(run_dir)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    for override in suite.qfleet_overrides:
        command += ["--set", override]
    print(f"[learning] {task.name} qfleet seed {seed}: qfleet {' '.join(command[3:])}", flush=True)
    started = time.perf_counter()
    with open(suite.out_dir / f"{name}.log", "w") as log:
        process = start_child(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            code = process.wait()
        finally:
            stop_child(process, timeout_s=60)
    wall = time.perf_counter() - started
    if code != 0:  # reported with the figures so far; the other runs go on
        print(f"[learning] qfleet train exited {code}; see {suite.out_dir / f'{name}.log'}", flush=True)
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    offset = clock_offset(records)
    evals = [
        {"env_steps": r["env_steps"], "wall_s": round(r["wall_s"] + offset, 2), "mean_return": r["mean_return"]}
        for r in records
        if r["kind"] == "eval"
    ]
    settings_given = [*source, *(f"{k}={v}" for k, v in settings.items()), *suite.qfleet_overrides]
    return {"evals": evals, "wall_s": round(wall, 1), "exit_code": code, "config": {"command": settings_given}}


def clock_offset(records: list[dict]) -> float:
    """Seconds from `qfleet train`'s start to its run clock's zero (metrics' wall_s), from the
    "startup" record (the command's start, epoch) and a "progress" record (epoch and wall_s): added
    to qfleet's wall_s, every system's wall time counts from its process start. 0 when either is
    missing."""
    startup = next((r for r in records if r["kind"] == "startup"), None)
    progress = next((r for r in records if r["kind"] == "progress" and "time" in r), None)
    if startup is None or progress is None:
        return 0.0
    return max(0.0, progress["time"] - progress["wall_s"] - startup["started_at"])


def run_peer(system: str, task: Task, seed: int, suite: Suite) -> dict:
    """One peer run in its interpreter, reading its evaluations as they come; or {"skipped": why}."""
    module, script, option, pins = PEERS[system]
    python, missing = peer_python(
        suite.peer_pythons.get(system),
        module,
        f"{module} does not import here and {option} was not given (a venv with {pins})",
    )
    if python is None:
        return {"skipped": missing}
    if not os.access(python, os.X_OK):
        return {"skipped": f"{option} {python}: no such interpreter"}
    request = {
        "env_id": task.env_id,
        "env_steps": task.env_steps,
        "seed": seed,
        "eval_every": task.eval_every,
        "eval_episodes": task.eval_episodes,
    }
    name = f"{task.name}-{system}-seed{seed}"
    command = [python, str(pathlib.Path(__file__).with_name(script)), json.dumps(request)]
    print(f"[learning] {task.name} {system} seed {seed}: {python} {script}", flush=True)
    run: dict = {"evals": [], "config": None}
    started = time.perf_counter()
    with open(suite.out_dir / f"{name}.log", "w") as log:
        process = start_child(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        try:
            for line in process.stdout:
                if not line.startswith("{"):
                    continue
                record = json.loads(line)
                if "skipped" in record:
                    run["skipped"] = record["skipped"]
                elif "ready" in record:
                    run["config"] = record
                elif "mean_return" in record:
                    run["evals"].append(record)
                    print(
                        f"[learning]   {system} eval at {record['env_steps']:,}: {record['mean_return']:.1f}",
                        flush=True,
                    )
            code = process.wait()
        finally:
            stop_child(process, timeout_s=60)
    run["wall_s"], run["exit_code"] = round(time.perf_counter() - started, 1), code
    if code != 0:
        print(f"[learning] {system} exited {code}; see {suite.out_dir / f'{name}.log'}", flush=True)
    return run


def run_cleanrl(task: Task, seed: int, suite: Suite) -> dict:
    """The CleanRL-style DQN in this process (its wall_s counts training only, not evaluations)."""
    if task.env_id not in CLEANRL_TASKS:
        return {"skipped": f"the CleanRL-style baseline runs {', '.join(CLEANRL_TASKS)} only"}
    from system.bench.dqn_baseline import train

    print(f"[learning] {task.name} cleanrl seed {seed}", flush=True)
    result = train(seed, task.env_id, task.env_steps, task.eval_every, task.eval_episodes, task.threshold)
    return {"evals": result["evals"], "wall_s": result["train_seconds"], "exit_code": 0, "config": None}


RUNNERS = {"qfleet": run_qfleet, "cleanrl": run_cleanrl}


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None


def load_previous(suite: Suite) -> list[dict]:
    """The finished runs of an earlier --output (with --resume): runs that were not skipped and
    exited 0."""
    if not suite.resume or not suite.output.exists():
        return []
    runs = json.loads(suite.output.read_text()).get("runs", [])
    return [r for r in runs if "skipped" not in r and r.get("exit_code") == 0]


def report(suite: Suite, runs: list[dict], draw: bool) -> str:
    """The Markdown tables of every task with runs (and, with `draw`, their PNGs)."""
    from system.bench.learning_plot import plot_task

    parts = []
    for task in suite.tasks:
        rows, curves = {}, {}
        for system in suite.systems:
            mine = [r for r in runs if r["task"] == task.name and r["system"] == system and "skipped" not in r]
            mine = [r for r in mine if r["env_steps"] == task.env_steps]
            if mine:
                rows[system] = [summarise(r["seed"], r["evals"], task.threshold, r["wall_s"]) for r in mine]
                curves[system] = [r["evals"] for r in mine]
        if not rows:
            continue
        head = (
            f"### {task.name}: {task.env_id}, {task.env_steps:,} env steps, threshold {task.threshold:g} "
            f"({task.threshold_source}); {task.eval_episodes} greedy episodes every {task.eval_every:,} env steps\n\n"
        )
        skipped = sorted({f"{r['system']}: {r['skipped']}" for r in runs if r["task"] == task.name and "skipped" in r})
        notes = "".join(f"\nskipped: {line}" for line in skipped)
        parts.append(head + task_table(task.name, task.threshold, rows) + notes)
        if draw:
            png = suite.out_dir / f"{task.name}.png"
            plot_task(png, f"{task.env_id} ({task.env_steps:,} env steps)", task.threshold, curves)
            parts[-1] += f"\n\ncurves: {png}"
    return "\n\n".join(parts) + "\n"


def run_learning_bench(suite: Suite) -> int:
    """Runs the suite; prints and writes the tables, the JSON and the PNGs. 0 when every run that was
    not skipped exited 0, else 1."""
    suite.out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join(["qfleet", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": _commit(),
        "tasks": {t.name: dataclasses.asdict(t) for t in suite.tasks},
        "runs": load_previous(suite),
    }
    done = {run_key(r) for r in results["runs"]}
    failed = False
    for task in suite.tasks:
        for system in suite.systems:
            for seed in suite.seeds:
                key = (task.name, system, seed, task.env_steps)
                if key in done:
                    print(f"[learning] {task.name} {system} seed {seed}: kept from {suite.output}", flush=True)
                    continue
                runner = RUNNERS.get(system)
                run = runner(task, seed, suite) if runner else run_peer(system, task, seed, suite)
                run = {"task": task.name, "system": system, "seed": seed, "env_steps": task.env_steps} | run
                results["runs"].append(run)
                suite.output.parent.mkdir(parents=True, exist_ok=True)
                suite.output.write_text(json.dumps(results, indent=1) + "\n")
                if "skipped" in run:
                    print(f"[learning] {task.name} {system}: skipped: {run['skipped']}", flush=True)
                    break  # the other seeds would be skipped for the same reason
                failed = failed or run.get("exit_code") != 0
        print(report(dataclasses.replace(suite, tasks=(task,)), results["runs"], draw=False), flush=True)
    tables = report(suite, results["runs"], draw=True)
    (suite.out_dir / "results.md").write_text(
        f"`{results['command']}` ({results['date']}, commit {results['commit']})\n\n" + tables
    )
    print(tables, flush=True)
    print(f"[learning] JSON: {suite.output}; tables: {suite.out_dir / 'results.md'}", flush=True)
    return 1 if failed else 0
