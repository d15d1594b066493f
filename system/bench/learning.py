"""`qfleet bench learning`: qfleet's default recipe beside Stable-Baselines3 (rl-baselines3-zoo's
hyper-parameters) and RLlib (its tuned examples) on a suite of tasks (issue #23), one run after
another (never side by side, so wall times compare), with the same evaluation schedule for all.

Per task (system.bench.learning_tasks) and seed: env steps and wall time to the first greedy
evaluation at or above the task's threshold, whether every later one stays there ("held"), and the
final evaluation; Markdown tables, JSON (written after every run: `--resume` continues a suite that
died), and one PNG per task. qfleet runs `qfleet train --env ID` with only the budget, seed and the
evaluation schedule set (and train.eval_skip_when_busy=false: every scheduled evaluation made); the
peers run in their own interpreters (separate venvs) as child processes that stream their evaluations back as JSON lines (system/bench/sb3_learning_peer.py,
rllib_learning_peer.py); a peer whose interpreter option is not given, or which lacks the package,
is skipped with a line saying so. Every run has a deadline (`run_timeout`: exit "timeout"); a qfleet
run folder left by an earlier suite is moved aside first (a rerun never reads its metrics); "held" is
"unverified" where qfleet skipped scheduled evaluations. "cleanrl" is
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
import threading
import time

from system.bench.children import kill_group, start_child, stop_child
from system.bench.learning_results import summarise, task_table
from system.bench.learning_tasks import Task
from system.bench.results import write_results

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
    """Peer -> its interpreter as given (None: the peer is skipped; qfleet's venv never has its pins)."""
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
    run_timeout_s: float | None = None
    """Seconds one run may take (None: `run_timeout`'s budget-derived default)."""


def run_key(run: dict) -> tuple:
    return run["task"], run["system"], run["seed"], run["env_steps"]


def identity(system: str, task: Task, suite: Suite) -> dict:
    """What else a run depends on, stored with it: --resume keeps a run only when this still matches
    (the evaluation schedule; qfleet's --config and --set; a peer's interpreter)."""
    same = {"eval_every": task.eval_every, "eval_episodes": task.eval_episodes}
    if system == "qfleet":
        return same | {"config": suite.qfleet_config, "overrides": list(suite.qfleet_overrides)}
    if system in PEERS:
        return same | {"python": suite.peer_pythons.get(system)}
    return same


def run_qfleet(task: Task, seed: int, suite: Suite) -> dict:
    """`qfleet train --env ID` (or the suite's config) for one seed; its evaluations from metrics.jsonl."""
    name = f"{task.name}-qfleet-seed{seed}"
    run_dir = suite.out_dir / name
    moved = move_aside(run_dir)
    if moved is not None:  # `qfleet train` refuses a folder holding a run; never read an old run's metrics
        print(f"[learning] an earlier run's {run_dir} moved to {moved}", flush=True)
    settings = {
        "train.seed": seed,
        "train.total_env_steps": task.env_steps,
        "train.eval_every_steps": task.eval_every,
        "train.eval_episodes": task.eval_episodes,
        "train.log_every_s": 30,
        "train.eval_skip_when_busy": "false",  # every scheduled evaluation, so "held" sees them all
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
        code: int | str
        try:
            code = process.wait(timeout=run_timeout(task, suite))
        except subprocess.TimeoutExpired:
            code = "timeout"
        finally:
            stop_child(process, timeout_s=60)
    wall = time.perf_counter() - started
    if code != 0:  # reported with the figures so far; the other runs go on
        print(f"[learning] qfleet train exited {code}; see {suite.out_dir / f'{name}.log'}", flush=True)
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    evals = qfleet_evals(records)
    settings_given = [*source, *(f"{k}={v}" for k, v in settings.items()), *suite.qfleet_overrides]
    return {
        "evals": evals,
        "wall_s": round(wall, 1),
        "exit_code": code,
        "config": {"command": settings_given},
        "skipped_evals": skipped_evals(evals, task.eval_every, task.env_steps),
    }


def move_aside(run_dir: pathlib.Path) -> pathlib.Path | None:
    """Renames an existing `run_dir` to `NAME.old-<UTC time>` (a rerun or --resume then starts a
    fresh run there); the new name, or None when there was nothing."""
    if not run_dir.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        target, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}"), n + 1
    run_dir.rename(target)
    return target


def qfleet_evals(records: list[dict]) -> list[dict]:
    """qfleet's evaluations from metrics.jsonl records: wall_s is when the result was known (the
    weights' time plus the evaluation's own seconds: qfleet evaluates beside training, the peers
    in turn), counted from the process start; scheduled_env_steps kept when written."""
    offset = clock_offset(records)
    evals = []
    for r in records:
        if r["kind"] != "eval":
            continue
        known = r["wall_s"] + r.get("seconds", 0.0) + offset
        record = {"env_steps": r["env_steps"], "wall_s": round(known, 2), "mean_return": r["mean_return"]}
        if r.get("scheduled_env_steps") is not None:
            record["scheduled_env_steps"] = r["scheduled_env_steps"]
        evals.append(record)
    return evals


def skipped_evals(evals: list[dict], eval_every: int, env_steps: int) -> int:
    """Scheduled evaluations (each multiple of `eval_every` below `env_steps`; the one at the
    budget is the final one) with no record: qfleet's background evaluator skips one requested
    while the previous still runs."""
    scheduled = set(range(eval_every, env_steps, eval_every))
    return len(scheduled - {e["scheduled_env_steps"] for e in evals if "scheduled_env_steps" in e})


def run_timeout(task: Task, suite: Suite) -> float:
    """Seconds a run may take before it is stopped and recorded as exit "timeout": --run-timeout,
    else an hour per 100k env steps of budget (at least an hour)."""
    if suite.run_timeout_s is not None:
        return suite.run_timeout_s
    return max(3600.0, 3600.0 * task.env_steps / 100_000)


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
    """One peer run in its interpreter, reading its evaluations as they come; or {"skipped": why}.
    The interpreter must be given (its option): qfleet's own venv has ray/rllib (the ray wheel ships
    it) but not the peer's pins."""
    module, script, option, pins = PEERS[system]
    python = suite.peer_pythons.get(system)
    if python is None:
        return {"skipped": f"pass {option} (the interpreter of a venv with {pins})"}
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
    command = [python, str(pathlib.Path(__file__).parent / script), json.dumps(request)]
    print(f"[learning] {task.name} {system} seed {seed}: {python} {script}", flush=True)
    run: dict = {"evals": [], "config": None, "python": python}
    started = time.perf_counter()
    timed_out = threading.Event()
    with open(suite.out_dir / f"{name}.log", "w") as log:
        process = start_child(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)

        def expire() -> None:  # ends the child: its stdout closes and the loop below ends
            timed_out.set()
            kill_group(process)

        deadline = threading.Timer(run_timeout(task, suite), expire)
        deadline.daemon = True
        deadline.start()
        try:
            for line in process.stdout:
                record = peer_record(line)
                if record is None:
                    if line.strip():
                        log.write(f"[stdout] {line.rstrip()}\n")
                    continue
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
            deadline.cancel()
            stop_child(process, timeout_s=60)
    run["wall_s"], run["exit_code"] = round(time.perf_counter() - started, 1), "timeout" if timed_out.is_set() else code
    if run["exit_code"] != 0:
        print(f"[learning] {system} exited {run['exit_code']}; see {suite.out_dir / f'{name}.log'}", flush=True)
    return run


def peer_record(line: str) -> dict | None:
    """A peer's stdout line as its JSON object; None for anything else (a library's banner, a line
    that starts with "{" but is no JSON object): those go to the run's log, never abort the suite."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


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


def load_previous(suite: Suite) -> tuple[list[dict], dict]:
    """The finished runs of an earlier --output (with --resume): runs that were not skipped, exited
    0, and of the same `identity` where this suite has their task; and its tasks (name -> fields)."""
    if not suite.resume or not suite.output.exists():
        return [], {}
    previous = json.loads(suite.output.read_text())
    tasks = {t.name: t for t in suite.tasks}
    kept = []
    for r in previous.get("runs", []):
        if "skipped" in r or r.get("exit_code") != 0:
            continue
        task = tasks.get(r["task"])
        if task is not None and r.get("identity") != identity(r["system"], task, suite):
            continue  # run with other settings: run again
        kept.append(r)
    return kept, previous.get("tasks", {})


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
                rows[system] = [
                    summarise(
                        r["seed"],
                        r["evals"],
                        task.threshold,
                        r["wall_s"],
                        r.get("exit_code", 0),
                        r.get("skipped_evals", 0),
                        len(range(task.eval_every, task.env_steps, task.eval_every)),
                    )
                    for r in mine
                ]
                curves[system] = [r["evals"] for r in mine]
        if not rows:
            continue
        head = (
            f"### {task.name}: {task.env_id}, {task.env_steps:,} env steps, threshold {task.threshold:g} "
            f"({task.threshold_source}); {task.eval_episodes} greedy episodes every {task.eval_every:,} env steps\n\n"
        )
        skipped = sorted({f"{r['system']}: {r['skipped']}" for r in runs if r["task"] == task.name and "skipped" in r})
        notes = "".join(f"\nskipped: {line}" for line in skipped)
        if "cleanrl" in rows:
            notes += "\ncleanrl's wall times count training only (no start-up, no evaluations)."
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
    kept, earlier_tasks = load_previous(suite)
    results = {
        "command": " ".join(["qfleet", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": _commit(),
        "tasks": earlier_tasks | {t.name: dataclasses.asdict(t) for t in suite.tasks},
        "runs": kept,
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
                run["identity"] = identity(system, task, suite)
                results["runs"].append(run)
                suite.output.parent.mkdir(parents=True, exist_ok=True)
                write_results(suite.output, results)
                if "skipped" in run:
                    print(f"[learning] {task.name} {system}: skipped: {run['skipped']}", flush=True)
                    break  # the other seeds would be skipped for the same reason
                failed = failed or run.get("exit_code") != 0
        print(report(dataclasses.replace(suite, tasks=(task,)), results["runs"], draw=False), flush=True)
    every_task = tuple(Task(**fields) for fields in results["tasks"].values())  # earlier tasks too
    every_system = tuple(s for s in SYSTEMS if s in suite.systems or any(r["system"] == s for r in results["runs"]))
    tables = report(dataclasses.replace(suite, tasks=every_task, systems=every_system), results["runs"], draw=True)
    (suite.out_dir / "results.md").write_text(
        f"`{results['command']}` ({results['date']}, commit {results['commit']})\n\n" + tables
    )
    print(tables, flush=True)
    print(f"[learning] JSON: {suite.output}; tables: {suite.out_dir / 'results.md'}", flush=True)
    return 1 if failed else 0
