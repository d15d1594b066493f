"""End-to-end benchmark: the whole system as `qfleet train` runs it, beside the single-process loop
and RLlib's DQN on the same env, network, batch size and UTD, one system after another.

Each case (an env at a UTD) runs `qfleet train` (embedded: Redis, Ray, shards, learner, actors as
Ray actors) as a subprocess on a fixed config: the env's config file with the learner set to
double DQN on a `hidden_size` x `num_layers` MLP, batch `batch_size`, the case's UTD, and no
evaluations. It stops the run with SIGTERM (the orderly stop) once it has trained for `seconds`
(or reached `env_steps`) and reads the window from the first update to the last progress record
of metrics.jsonl: env steps/s, updates/s, achieved UTD (updates / env steps in the window), policy
staleness (the learner's weights version minus the actors', mean over the records) and sample age
(seconds since the weights that produced the learner's batch were published, mean over its
samples of versions above 0: null when every sample was made by the initial weights). A qfleet row
whose actors never left v0 while the learner published (in 2 records or more after its first publish) is
flagged `invalid` (`never_left_v0`). qfleet runs with uniform replay of 1-step transitions (`SAME_REPLAY`), as the others
sample, and `Budget.overrides` (`--set`) after. Then the
single-process loop (`dqn_baseline.throughput`) in this process, and RLlib's DQN as a subprocess
of `peer_python` (`rllib_peer.py`; "RLlib not installed: skipped" when it does not import).

    qfleet bench e2e --envs cartpole --utd 1 --seconds 20
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from system.bench.children import interrupt_on_sigterm, start_child, stop_child
from system.bench.learning import ROOT

PEER = pathlib.Path(__file__).with_name("rllib_peer.py")
"""RLlib's side: a standalone script (standard library at import), run by the peer interpreter."""


@dataclasses.dataclass(frozen=True)
class EnvCase:
    """An env of the benchmark: its qfleet config and the settings every system shares."""

    name: str
    config: str
    """The `qfleet train` config (relative to the checkout)."""
    env_id: str
    max_episode_steps: int | None = None


ENVS = {
    "cartpole": EnvCase("cartpole", "configs/cartpole.yaml", "CartPole-v1"),
    "breakout": EnvCase("breakout", "configs/minatar_breakout.yaml", "MinAtar/Breakout-v0", 10_000),
}


@dataclasses.dataclass(frozen=True)
class Budget:
    """What every system of every case gets: the same network, batch and warm-up; `seconds` of
    training from the first update, or `env_steps` in all when set."""

    seconds: float = 20.0
    env_steps: int | None = None
    hidden_size: int = 256
    num_layers: int = 2
    batch_size: int = 128
    learning_starts: int = 1000
    stop_timeout_s: float = 120.0
    """How long a stopped `qfleet train` may take to finish its orderly stop before it is killed."""
    peer_timeout_s: float = 1200.0
    """How long a peer's whole run (start-up included) may take before it is killed."""
    overrides: tuple[str, ...] = ()
    """Extra `--set SECTION.KEY=VALUE` for the qfleet runs, after the benchmark's own (they win)."""


SAME_REPLAY = {"replay.selector": "uniform", "actors.n_step": 1}
"""What qfleet runs with so that every system samples alike: uniform replay of 1-step transitions
(the single-process loop has no other; RLlib is configured to match)."""


def actor_layout(case: EnvCase, budget: Budget) -> tuple[int, int]:
    """(actors, envs per actor) of the case's qfleet run (its config, then `--set`): RLlib gets as
    many env runners of as many envs each."""
    from system.config import load_config

    config = load_config(str(ROOT / case.config), list(budget.overrides))
    return config.actors.num_actors, config.env.num_envs


def qfleet_command(case: EnvCase, utd: float, budget: Budget, run_dir: pathlib.Path) -> list[str]:
    """The `qfleet train` command line of one case."""
    settings = {
        "learner.loss": "dqn",
        "learner.hidden_size": budget.hidden_size,
        "learner.num_layers": budget.num_layers,
        "learner.layer_norm": "false",
        "learner.batch_size": budget.batch_size,
        "learner.updates_per_env_step": utd,
        "learner.learning_starts": budget.learning_starts,
        "train.eval_every_steps": 0,
        "train.eval_episodes": 1,
        "train.total_env_steps": budget.env_steps or 10**9,
    } | SAME_REPLAY
    command = [sys.executable, "-m", "system.cli", "train", case.config, "--run-dir", str(run_dir)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    for override in budget.overrides:
        command += ["--set", override]
    return command


def run_qfleet(case: EnvCase, utd: float, budget: Budget, out_dir: pathlib.Path) -> dict:
    """Runs `qfleet train` on the case until the budget is spent; its figures (see `window`)."""
    run_dir = out_dir / f"qfleet-{case.name}-utd{utd:g}"
    log_path = out_dir / f"qfleet-{case.name}-utd{utd:g}.log"
    metrics = run_dir / "metrics.jsonl"
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = start_child(
            qfleet_command(case, utd, budget, run_dir), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            while process.poll() is None and not _spent(_progress(metrics), budget):
                time.sleep(0.5)
            code = stop_child(process, budget.stop_timeout_s)
        except BaseException:
            stop_child(process, budget.stop_timeout_s)
            raise
    result = {
        "system": "qfleet",
        "log": str(log_path),
        "exit_code": code,
        "run_s": round(time.monotonic() - started, 1),
    }
    records = _progress(metrics)
    if not records:
        return result | {"error": f"no progress recorded (exit {code}); see {log_path}"}
    result["first_env_step_s"] = first_env_step_s(records)
    return result | {"torch_threads": _learner_threads(run_dir)} | window(records)


def first_env_step_s(records: list[dict]) -> float | None:
    """When the first transition reached the replay (the first record with `replay_inserts` > 0;
    the driver's `env_steps` waits on the actors' first chunk, which can be much later)."""
    key = "replay_inserts" if all("replay_inserts" in r for r in records) else "env_steps"
    return next((r["wall_s"] for r in records if r[key] > 0), None)


def _learner_threads(run_dir: pathlib.Path) -> int | None:
    """The qfleet learner's torch threads (`train.learner_num_cpus`, as the run resolved it; its
    actors run one each)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        return max(1, int(config["train"]["learner_num_cpus"]))
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _progress(metrics: pathlib.Path) -> list[dict]:
    """The progress records of metrics.jsonl so far (a line being written is left for later)."""
    if not metrics.exists():
        return []
    records = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "progress":
            records.append(record)
    return records


def _spent(records: list[dict], budget: Budget) -> bool:
    """Whether to stop the run now: never with an env-step budget (train.total_env_steps stops
    it), else once it has trained `budget.seconds`."""
    if not records or budget.env_steps is not None:
        return False
    training = [r for r in records if r["updates"] > 0]
    return bool(training) and training[-1]["wall_s"] - training[0]["wall_s"] >= budget.seconds


def window(records: list[dict]) -> dict:
    """Rates over the progress records from the first with an update to the last before the stop
    (the final record, written after the actors stopped, is left out), and the mean staleness.

    Before the first update only actors run (replay fills to learning_starts): counting it would
    mix two regimes. With fewer than two records after it, the window starts at the first env step
    and the figures say so (`"window": "fill"`: they measure the fill, not training).

    Env steps are counted as the transitions the shards took (`replay_inserts`: one per env step,
    what the learner's UTD is held against): the driver's own `env_steps` moves only when the
    actors' `run` chunks return, which on a loaded machine can be tens of seconds apart.
    """
    steps_key = "replay_inserts" if all("replay_inserts" in r for r in records) else "env_steps"
    live = [r for r in records if not r.get("final")] or records
    training, phase = [r for r in live if r["updates"] > 0], "training"
    if len(training) < 2:
        training, phase = [r for r in live if r[steps_key] > 0], "fill"
    if len(training) < 2:
        return {"error": "fewer than two progress records with env steps: budget too short"}
    first, last = training[0], training[-1]
    seconds = last["wall_s"] - first["wall_s"]
    steps, updates = last[steps_key] - first[steps_key], last["updates"] - first["updates"]
    invalid = {"invalid": reason} if (reason := never_left_v0(training)) else {}
    return invalid | {
        "window": phase,
        "window_s": round(seconds, 1),
        "env_steps": max(last["env_steps"], last[steps_key]),
        "updates": last["updates"],
        "env_steps_per_s": round(steps / seconds, 1),
        "updates_per_s": round(updates / seconds, 1),
        "achieved_utd": round(updates / steps, 4) if steps else None,
        "policy_staleness": _mean(training, "policy_staleness", 2),
        "sample_staleness": _mean(training, "sample_staleness", 2),
        "sample_age_s": _mean(training, "sample_age_s", 2),
    }


NEVER_LEFT_V0_RECORDS = 2
"""Records after the first publish that never_left_v0 needs before it flags a window: the one
written just after it may come before any actor pulled the weights or inserted with them."""


def never_left_v0(records: list[dict]) -> str | None:
    """Why the window does not measure the system as it runs, or None: the learner published
    weights, yet the actors acted with the initial ones (v0) in every record (policy staleness equal
    to the learner's version), or every sample the learner drew was made by v0 (`sample_age_s`,
    which leaves version 0 out, null in every record that has a sample staleness); each seen in at
    least NEVER_LEFT_V0_RECORDS records after the first publish."""
    published = [r for r in records if r.get("weights_version", 0) > 0]
    acting = [r for r in published if r.get("policy_staleness") is not None]
    if len(acting) >= NEVER_LEFT_V0_RECORDS and all(r["policy_staleness"] >= r["weights_version"] for r in acting):
        return "the actors acted with the initial weights (v0) through the whole window"
    sampled = [r for r in published if r.get("sample_staleness") is not None]
    if len(sampled) >= NEVER_LEFT_V0_RECORDS and all(r.get("sample_age_s") is None for r in sampled):
        return "every sample the learner drew was made with the initial weights (v0)"
    return None


def _mean(records: list[dict], key: str, digits: int) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return round(sum(values) / len(values), digits) if values else None


def run_single_process(case: EnvCase, utd: float, budget: Budget) -> dict:
    """The CleanRL-style loop (`dqn_baseline.throughput`) on the same settings, in this process."""
    from system.bench.dqn_baseline import throughput

    figures = throughput(
        case.env_id,
        utd,
        hidden_size=budget.hidden_size,
        num_layers=budget.num_layers,
        batch_size=budget.batch_size,
        learning_starts=budget.learning_starts,
        seconds=budget.seconds,
        env_steps=budget.env_steps,
        max_episode_steps=case.max_episode_steps,
    )
    return {"system": "single-process"} | figures


def run_rllib(case: EnvCase, utd: float, budget: Budget, peer_python: str, out_dir: pathlib.Path) -> dict:
    """RLlib's DQN on the same settings, as a subprocess of `peer_python` (its own venv may pin what
    qfleet does not); {"skipped": ...} when RLlib does not import there."""
    num_env_runners, envs_per_runner = actor_layout(case, budget)
    request = {
        "env_id": case.env_id,
        "max_episode_steps": case.max_episode_steps,
        "updates_per_env_step": utd,
        "hidden_size": budget.hidden_size,
        "num_layers": budget.num_layers,
        "batch_size": budget.batch_size,
        "learning_starts": budget.learning_starts,
        "seconds": budget.seconds,
        "env_steps": budget.env_steps,
        "num_env_runners": num_env_runners,
        "num_envs_per_env_runner": envs_per_runner,
    }
    log_path = out_dir / f"rllib-{case.name}-utd{utd:g}.log"
    with open(log_path, "w") as log:
        process = start_child(
            [peer_python, str(PEER), json.dumps(request)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=out_dir,
            env=os.environ | {"OMP_NUM_THREADS": "1"},  # one torch thread per process, as qfleet's actors
        )
        try:
            stdout, _ = process.communicate(timeout=budget.peer_timeout_s)
        except subprocess.TimeoutExpired:
            stop_child(process, 30.0)
            return {"system": "rllib", "error": f"no result within {budget.peer_timeout_s:.0f} s; see {log_path}"}
        except BaseException:
            stop_child(process, 30.0)
            raise
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"system": "rllib", "error": f"no result (exit {done.returncode}); see {log_path}"}
    return {"system": "rllib", "log": str(log_path)} | json.loads(lines[-1])


COLUMNS = (
    ("env steps/s", "env_steps_per_s", ",.0f"),
    ("updates/s", "updates_per_s", ",.1f"),
    ("achieved UTD", "achieved_utd", ".3f"),
    ("staleness (versions)", "policy_staleness", ".2f"),
    ("sample age (s)", "sample_age_s", ".2f"),
)


def table(rows: list[dict]) -> str:
    """The Markdown table of every row (a skipped or failed system says why across its figures)."""
    head = "| system | env | UTD | " + " | ".join(name for name, _, _ in COLUMNS) + " |\n"
    head += "|---|---|---:|" + "---:|" * len(COLUMNS) + "\n"
    body, notes = "", ""
    for row in rows:
        system = row["system"]
        if row.get("invalid"):
            system += " (invalid)"
            notes += f"\n(invalid) {row['system']} {row['env']} UTD {row['utd']:g}: {row['invalid']}"
        cells = f"| {system} | {row['env']} | {row['utd']:g} | "
        note = row.get("skipped") or row.get("error")
        if note:
            body += cells + note + " |" + " |" * (len(COLUMNS) - 1) + "\n"
            continue
        values = [format(row[key], spec) if row.get(key) is not None else "-" for _, key, spec in COLUMNS]
        body += cells + " | ".join(values) + " |\n"
    return head + body + notes


def ratios(rows: list[dict]) -> list[str]:
    """The issue's targets, per case: qfleet env steps/s vs RLlib's (>= 5x) and qfleet updates/s
    vs the single-process loop's (>= 0.9 at UTD 4)."""
    lines = []
    for env, utd in dict.fromkeys((r["env"], r["utd"]) for r in rows):
        case = {r["system"]: r for r in rows if (r["env"], r["utd"]) == (env, utd) and r.get("env_steps_per_s")}
        qfleet = case.get("qfleet")
        if qfleet is None:
            continue
        if qfleet.get("invalid"):
            lines.append(f"{env} UTD {utd:g}: no ratio, the qfleet row is invalid ({qfleet['invalid']})")
            continue
        if "rllib" in case:
            lines.append(
                f"{env} UTD {utd:g}: qfleet env steps/s = "
                f"{qfleet['env_steps_per_s'] / case['rllib']['env_steps_per_s']:.2f}x RLlib's (target >= 5)"
            )
        single = case.get("single-process")
        if single is not None and single["updates_per_s"]:
            lines.append(
                f"{env} UTD {utd:g}: qfleet updates/s = "
                f"{qfleet['updates_per_s'] / single['updates_per_s']:.2f}x the single-process loop's"
                + (" (target >= 0.9)" if utd == 4 else "")
            )
    return lines


def run_e2e_bench(
    envs: list[str],
    utds: list[float],
    budget: Budget,
    systems: list[str],
    peer_python: str,
    out_dir: str | None,
    output: str | None,
) -> int:
    """Every case, each system after the other; prints JSON lines as they come, then the table."""
    folder = pathlib.Path(out_dir) if out_dir else pathlib.Path(tempfile.mkdtemp(prefix="qfleet-bench-e2e-"))
    folder.mkdir(parents=True, exist_ok=True)
    interrupt_on_sigterm()  # so that the running case's cleanup stops its children
    rows = []
    for name in envs:
        case = ENVS[name]
        for utd in utds:
            for system in systems:
                if system == "qfleet":
                    row = run_qfleet(case, utd, budget, folder)
                elif system == "single-process":
                    row = run_single_process(case, utd, budget)
                else:
                    row = run_rllib(case, utd, budget, peer_python, folder)
                row = {"system": row.pop("system"), "env": name, "utd": utd} | row
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(table(rows))
    for line in ratios(rows):
        print(line)
    print(f"\nlogs and run directories: {folder}")
    if output:
        command = " ".join(["qfleet", *sys.argv[1:]]) if sys.argv else ""
        document = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
        pathlib.Path(output).write_text(json.dumps(document, indent=1) + "\n")
    failed = [r for r in rows if r.get("error") or (r["system"] == "qfleet" and r.get("exit_code"))]
    return 1 if failed else 0
