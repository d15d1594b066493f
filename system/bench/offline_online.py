"""`qfleet bench offline --online`: does an offline phase save env steps? `qfleet train` runs, per
seed, two ways:

- **offline -> online** (`--config`, default configs/cartpole_offline_online.yaml: IQL + AWR;
  MinAtar: configs/minatar_breakout_offline_online.yaml, the tuned hl_gauss DQN): the offline phase
  on the recorded dataset (`offline.updates` updates on it alone), then online with actors, every
  batch mixing dataset and actors' data (`replay.mix`);
- **from scratch**: the project's best from-scratch recipe by default (configs/cartpole.yaml, the
  tuned DQN), with no dataset; `--scratch-config configs/cartpole_offline_online.yaml` compares
  against the same IQL + AWR recipe instead (a weaker online learner); `--no-scratch` skips this arm
  (its figures known from earlier runs, e.g. MinAtar's 250k-step runs).

Each run goes until an evaluation reaches the threshold (CartPole: 475) or train.total_env_steps;
the figure is the env steps of that first evaluation. The offline phase moves no env steps, so an
offline -> online run whose offline result already reaches the threshold counts 0. Runs one after
another (never side by side), each stopped in order (SIGTERM) once it has its figure.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from system.bench.children import interrupt_on_sigterm, start_child, stop_child
from system.bench.results import write_results

ROOT = pathlib.Path(__file__).resolve().parents[2]
"""The checkout: `qfleet train` runs from here (configs/ paths are relative to it)."""

CONFIG = "configs/cartpole_offline_online.yaml"
"""The offline -> online arm's recipe."""

SCRATCH_CONFIG = "configs/cartpole.yaml"
"""The from-scratch arm's recipe by default: the tuned DQN (docs/training.md)."""

ARMS = ("offline -> online", "from scratch")

STOP_TIMEOUT_S = 300.0
"""How long a stopped run may take to stop in order (checkpoints, final evaluation)."""


@dataclass(frozen=True)
class Budget:
    """What each run may spend, and what it is evaluated on."""

    total_env_steps: int
    eval_every_steps: int
    eval_episodes: int
    offline_updates: int
    threshold: float
    overrides: tuple[str, ...] = ()
    """Extra `--set KEY=VALUE` for both arms (e.g. actors.num_actors=2)."""
    scratch_config: str | None = SCRATCH_CONFIG
    """The from-scratch arm's config file; None: no from-scratch arm (its figures are known from
    earlier runs, e.g. MinAtar's 250k-step runs in docs/benchmarks.md)."""
    config: str = CONFIG
    """The offline -> online arm's config file (its env, learner, replay.mix and offline.dataset's
    settings; the dataset itself is the bench's)."""


@dataclass(frozen=True)
class ArmResult:
    """One run's figures."""

    arm: str
    seed: int
    reached_env_steps: int | None
    """Env steps of the first evaluation >= the threshold (None: not within the budget)."""
    offline_result: float | None
    """The evaluation at the end of the offline phase (None from scratch)."""
    best_return: float | None
    """The best evaluation of the run."""
    env_steps: int
    """Env steps the run made (up to its stop)."""
    wall_s: float
    exit_code: int
    log: str


def settings(arm: str, seed: int, budget: Budget, dataset: str, datasets_dir: str) -> dict[str, object]:
    """The `--set`s of one run: the arm's, then the budget's."""
    common = {
        "train.seed": seed,
        "train.total_env_steps": budget.total_env_steps,
        "train.eval_every_steps": budget.eval_every_steps,
        "train.eval_episodes": budget.eval_episodes,
        "train.log_every_s": 30,
    }
    if arm == ARMS[0]:
        return {
            "offline.dataset": dataset,
            "offline.datasets_dir": datasets_dir,
            "offline.updates": budget.offline_updates,
            "offline.eval_every_updates": 0,  # only the offline phase's result: its end
        } | common
    return {"offline.dataset": "null", "replay.mix": "null"} | common


def reached(evals: list[dict], threshold: float) -> int | None:
    """Env steps of the first evaluation at or above `threshold` in metrics.jsonl's eval records
    (offline-phase ones are at env step 0); None when none is."""
    return next((int(e["env_steps"]) for e in evals if e["mean_return"] >= threshold), None)


def offline_result(evals: list[dict]) -> float | None:
    """The latest offline-phase evaluation's mean return (the offline phase's result)."""
    offline = [e["mean_return"] for e in evals if e.get("phase") == "offline"]
    return offline[-1] if offline else None


def _records(metrics: pathlib.Path, kind: str) -> list[dict]:
    if not metrics.exists():
        return []
    lines = metrics.read_text().splitlines()
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if record.get("kind") == kind:
            records.append(record)
    return records


def train_command(
    arm: str, seed: int, budget: Budget, dataset: str, datasets_dir: str, run_dir: pathlib.Path
) -> list[str]:
    """The `qfleet train` command of one run."""
    config = budget.config if arm == ARMS[0] else budget.scratch_config
    command = [sys.executable, "-m", "system.cli", "train", config, "--run-dir", str(run_dir)]
    for key, value in settings(arm, seed, budget, dataset, datasets_dir).items():
        command += ["--set", f"{key}={value}"]
    for override in budget.overrides:
        command += ["--set", override]
    return command


def run_arm(
    arm: str,
    seed: int,
    budget: Budget,
    dataset: str,
    datasets_dir: str,
    out_dir: pathlib.Path,
    command: list[str] | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> ArmResult:
    """One `qfleet train` run until its first evaluation >= the threshold or its budget.

    Args:
        command: run this instead of `train_command` (tests: a stand-in writing RUN_DIR/metrics.jsonl,
            which is `out_dir`/NAME with NAME "offline-online-seedN" or "scratch-seedN").
        stop_timeout_s: how long the run may take to stop in order before its process group is killed.
    """
    name = f"{'offline-online' if arm == ARMS[0] else 'scratch'}-seed{seed}"
    run_dir, log_path = out_dir / name, out_dir / f"{name}.log"
    if command is None:
        command = train_command(arm, seed, budget, dataset, datasets_dir, run_dir)
    print(f"[offline-online] {arm}, seed {seed}: {' '.join(command[3:])}", flush=True)
    metrics = run_dir / "metrics.jsonl"
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = start_child(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            while process.poll() is None and reached(_records(metrics, "eval"), budget.threshold) is None:
                time.sleep(1.0)
        finally:  # also on Ctrl-C: stop_child kills the group if a second one interrupts its wait
            code = stop_child(process, stop_timeout_s)
    evals = _records(metrics, "eval")
    progress = _records(metrics, "progress")
    result = ArmResult(
        arm,
        seed,
        reached(evals, budget.threshold),
        offline_result(evals) if arm == ARMS[0] else None,
        max((e["mean_return"] for e in evals), default=None),
        int(progress[-1]["env_steps"]) if progress else 0,
        round(time.monotonic() - started, 1),
        code,
        str(log_path),
    )
    if code != 0:
        print(f"[offline-online] {arm}, seed {seed}: qfleet train exited {code}; see {log_path}", flush=True)
    return result


def table(results: list[ArmResult], budget: Budget, dataset: str, dataset_mean: float) -> str:
    """Per seed: env steps to the threshold both ways, and their ratio; the medians."""
    t = f"{budget.threshold:g}"
    lines = [
        f"Dataset `{dataset}` (mean return {dataset_mean:.1f}); offline -> online: {budget.config}, from scratch: "
        f"{budget.scratch_config or 'not run'}; offline phase {budget.offline_updates:,} "
        f"updates; evaluations every {budget.eval_every_steps:,} env steps, {budget.eval_episodes} episodes; "
        f"budget {budget.total_env_steps:,} env steps per run.",
        "",
        f"| seed | offline -> online: env steps to eval >= {t} | offline result | from scratch: env steps to eval >= {t} "
        "| offline -> online / from scratch |",
        "|---:|---:|---:|---:|---:|",
    ]
    by_seed: dict[int, dict[str, ArmResult]] = {}
    for result in results:
        by_seed.setdefault(result.seed, {})[result.arm] = result
    ratios = []
    for seed, arms in by_seed.items():
        offon, scratch = arms.get(ARMS[0]), arms.get(ARMS[1])
        ratio = _ratio(offon, scratch)
        if ratio is not None:
            ratios.append(ratio)
        lines.append(
            f"| {seed} | {_steps(offon, budget)} | {_number(offon.offline_result if offon else None)} | "
            f"{_steps(scratch, budget)} | {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    medians = [_median([r for r in results if r.arm == arm], budget) for arm in ARMS]
    lines.append(
        f"| median | {medians[0]} | | {medians[1]} | {f'{statistics.median(ratios):.2f}' if ratios else '-'} |"
    )
    return "\n".join(lines)


def _ratio(offon: ArmResult | None, scratch: ArmResult | None) -> float | None:
    if offon is None or scratch is None or offon.reached_env_steps is None or not scratch.reached_env_steps:
        return None
    return offon.reached_env_steps / scratch.reached_env_steps


def _steps(result: ArmResult | None, budget: Budget) -> str:
    if result is None:
        return "-"
    if result.reached_env_steps is None:
        return f"not within {budget.total_env_steps:,} (best {_number(result.best_return)})"
    return f"{result.reached_env_steps:,}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _median(results: list[ArmResult], budget: Budget) -> str:
    """The median env steps over seeds, a run that never reached the threshold counted as beyond
    every budget (so the median says "not within" when half of them did not reach it)."""
    if not results:
        return "-"
    steps = sorted(r.reached_env_steps if r.reached_env_steps is not None else float("inf") for r in results)
    value = statistics.median(steps)
    return f"not within {budget.total_env_steps:,}" if value == float("inf") else f"{value:,.0f}"


def arms_to_run(budget: Budget) -> tuple[str, ...]:
    """The arms each seed runs: both, or only offline -> online without a from-scratch recipe."""
    return ARMS if budget.scratch_config is not None else ARMS[:1]


def run_offline_online_bench(
    seeds: list[int],
    budget: Budget,
    dataset: str,
    datasets_dir: str,
    dataset_mean: float,
    out_dir: str,
    output: str | None,
) -> int:
    """Runs both arms for every seed (one run at a time), prints the table; JSON to `output`."""
    interrupt_on_sigterm()
    folder = pathlib.Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    results: list[ArmResult] = []
    payload = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "config": budget.config,
        "scratch_config": budget.scratch_config,
        "dataset": dataset,
        "dataset_mean_return": dataset_mean,
        "budget": asdict(budget),
        "results": [],
    }
    for seed in seeds:
        for arm in arms_to_run(budget):
            result = run_arm(arm, seed, budget, dataset, datasets_dir, folder)
            results.append(result)
            print(
                f"[offline-online] {arm}, seed {seed}: {_steps(result, budget)} env steps to >= {budget.threshold:g} "
                f"({result.env_steps:,} env steps, {result.wall_s:.0f} s)",
                flush=True,
            )
            if output:  # after every run, so an interrupted multi-seed bench keeps what it measured
                write_results(output, payload | {"results": [asdict(r) for r in results]})
    print()
    print(table(results, budget, dataset, dataset_mean))
    return 1 if any(r.exit_code != 0 for r in results) else 0
