"""`qfleet report RUN_DIR`: the learning curve (PNG) and a summary table (Markdown) of a run.

`qfleet train` writes both at its end; `report` rebuilds them from metrics.jsonl at any time,
also for a run that is still going.
"""

from __future__ import annotations

import pathlib

import numpy as np

from replay import create_private_file
from system.train.run_dir import RunDir
from system.train.startup import PHASE_NAMES

SMOOTH_EPISODES = 100
"""Training returns are shown as the mean over this many consecutive episodes."""


def _episode_curve(run: RunDir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(env steps, wall seconds, smoothed return) per episode."""
    steps, walls, returns = [], [], []
    for record in run.records("episodes"):
        n = len(record["returns"])
        steps += [record["env_steps"]] * n
        walls += [record["wall_s"]] * n
        returns += record["returns"]
    if not returns:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    values = np.asarray(returns, dtype=float)
    window = min(SMOOTH_EPISODES, len(values))
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    smoothed = (cumulative[1:] - cumulative[np.arange(1, len(values) + 1) - counts]) / counts
    return np.asarray(steps, float), np.asarray(walls, float), smoothed


def plot_learning_curve(run: RunDir, path=None):
    """Writes learning_curve.png: return vs env steps and vs wall time. Returns the path."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = path or run.path / "learning_curve.png"
    config = run.load_config()
    steps, walls, smoothed = _episode_curve(run)
    evals = run.records("eval")
    offline_evals = [e for e in evals if e.get("phase") == "offline"]
    evals = [e for e in evals if e.get("phase") != "offline"]
    online = (run.read_json("state.json") or {}).get("online_from")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for ax, x_train, key, axis_label in (
        (axes[0], steps, "env_steps", "env steps"),
        (axes[1], walls / 60.0, "wall_s", "wall time (minutes)"),
    ):
        if len(smoothed):
            train_label = f"training episodes (mean of {SMOOTH_EPISODES}, with exploration)"
            ax.plot(x_train, smoothed, color="tab:blue", alpha=0.6, lw=1, label=train_label)
        if evals:
            x = np.array([e[key] for e in evals], float) / (60.0 if key == "wall_s" else 1.0)
            mean = np.array([e["mean_return"] for e in evals])
            std = np.array([e["std_return"] for e in evals])
            eval_label = f"evaluation (mean +- std of {len(evals[-1]['returns'])} episodes)"
            ax.errorbar(x, mean, yerr=std, color="tab:red", marker="o", ms=3, lw=1.5, capsize=2, label=eval_label)
        if offline_evals:
            x = np.array([e[key] for e in offline_evals], float) / (60.0 if key == "wall_s" else 1.0)
            mean = np.array([e["mean_return"] for e in offline_evals])
            std = np.array([e["std_return"] for e in offline_evals])
            label = "evaluation, offline phase (dataset only)"
            ax.errorbar(x, mean, yerr=std, color="tab:purple", marker="s", ms=3, lw=1, capsize=2, ls=":", label=label)
        if online:
            at = online[key] / (60.0 if key == "wall_s" else 1.0)
            ax.axvline(at, color="black", ls="--", lw=1, label=f"online starts (update {online['updates']:,})")
        ax.set_xlabel(axis_label)
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
    if len(smoothed) or evals or offline_evals:
        axes[0 if not offline_evals else 1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{config.env.id}: run {config.train.run_name or run.path.name}")
    create_private_file(pathlib.Path(path))  # owner-only before the first byte, like the rest of the run
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_table(run: RunDir) -> str:
    """The run's summary as Markdown."""
    config = run.load_config()
    progress = run.records("progress")
    evals = run.records("eval")
    state = run.read_json("state.json") or {}
    last = progress[-1] if progress else {}
    lines = [
        f"# {config.env.id}: run `{config.train.run_name or run.path.name}`",
        "",
        "| | |",
        "|---|---:|",
        f"| env steps | {state.get('env_steps', last.get('env_steps', 0)):,} of {config.train.total_env_steps:,} |",
        f"| episodes | {state.get('episodes', last.get('episodes', 0)):,} |",
        f"| wall time | {state.get('wall_s', last.get('wall_s', 0.0)) / 60:.1f} min |",
        f"| learner updates | {last.get('updates', 0):,} |",
        f"| achieved / target UTD | {last.get('achieved_utd', 0.0):.3f} / {config.learner.updates_per_env_step:g} |",
        f"| weights version | {last.get('weights_version', 0)} |",
    ]
    if state.get("learner_restarts") or state.get("learner_updates_lost"):
        lost = state.get("learner_updates_lost", 0)
        lines.append(f"| learner restarts (updates lost) | {state.get('learner_restarts', 0)} ({lost:,}) |")
    for at in state.get("fresh_learners", []):
        lines.append(f"| fresh learner (no good checkpoint) | at {at:,} env steps |")
    if "faults" in state:
        from system.train.faults import FaultCounts

        lines.append(f"| faults ridden out | {FaultCounts.from_json(state['faults']).describe() or 'none'} |")
        lines.append(f"| transitions lost | {int(state.get('transitions_lost', 0)):,} |")
        if "transitions_inserted" in state:
            lines.append(f"| transitions stored for the actors | {int(state['transitions_inserted']):,} |")
            lines.append(f"| transitions stored twice (failover) | {int(state.get('transitions_stored_twice', 0)):,} |")
            lines.append(f"| transitions given back (failover) | {int(state.get('transitions_given_back', 0)):,} |")
            for key, label in (
                ("transitions_unattributed", "transitions unattributed"),
                ("transitions_untracked", "transitions of untracked streams"),
                ("receipts_unresolved", "failover receipts unresolved"),
                ("receipts_dropped", "failover receipts dropped"),
            ):
                if int(state.get(key, 0)):
                    lines.append(f"| {label} | {int(state[key]):,} |")
    random_steps = max((int(record.get("random_steps", 0)) for record in progress), default=0)
    if random_steps:  # a fresh run's first steps (`actors.random_before_policy`): the session that started
        lines.append(f"| env steps at random before the actors' policies | {random_steps:,} |")
    lines += _phase_rows(config, state, evals)
    lines += _startup_rows(run)
    if last.get("recent_return") is not None:
        lines.append(f"| training return (last {SMOOTH_EPISODES} episodes) | {last['recent_return']:.1f} |")
    if evals:
        best = max(evals, key=lambda e: e["mean_return"])
        lines += [
            f"| final evaluation | {evals[-1]['mean_return']:.1f} +- {evals[-1]['std_return']:.1f} at {evals[-1]['env_steps']:,} env steps |",
            f"| best evaluation | {best['mean_return']:.1f} at {best['env_steps']:,} env steps |",
            "",
        ]
        phases = any("phase" in e for e in evals)  # a run with an offline dataset: each row's phase
        lines += [
            "| env steps | wall time (min) | weights |"
            + (" phase |" if phases else "")
            + " eval return (mean +- std) |",
            "|---:|---:|---:|" + ("---|" if phases else "") + "---:|",
        ]
        lines += [
            f"| {e['env_steps']:,} | {e['wall_s'] / 60:.1f} | v{e['weights_version']} |"
            + (f" {_eval_phase(e)} |" if phases else "")
            + f" {e['mean_return']:.1f} +- {e['std_return']:.1f} |"
            for e in evals
        ]
    return "\n".join(lines) + "\n"


def _startup_rows(run: RunDir) -> list[str]:
    """The latest session's start-up (system/train/startup.py), when recorded."""
    recorded = run.records("startup")
    if not recorded:
        return []
    phases = recorded[-1]["phases"]

    def at(name: str) -> str:
        return "-" if phases.get(name) is None else f"{phases[name]:.1f} s"

    breakdown = ", ".join(f"{name.replace('_', ' ')} {at(name)}" for name in PHASE_NAMES)
    return [
        f"| start-up: first env step / first update | {at('first_env_step')} / {at('first_update')} |",
        f"| start-up phases (since the command began) | {breakdown} |",
    ]


def _eval_phase(evaluation: dict) -> str:
    """An evaluation's phase cell: "offline, update N", "online", or "" (a record without one)."""
    if "phase" not in evaluation:
        return ""
    if evaluation["phase"] == "offline":
        return f"offline, update {evaluation['updates']:,}"
    return str(evaluation["phase"])


def _phase_rows(config, state: dict, evals: list[dict]) -> list[str]:
    """Rows of a run with an offline dataset: its phase now, the offline result, where online began."""
    if state.get("phase") is None:
        return []
    offline = config.offline
    phase = state["phase"]
    if config.train.total_env_steps == 0:
        phase = f"{phase} (offline only: no actors)"
    rows = [f"| phase | {phase} |", f"| offline dataset | {offline.dataset} |"]
    done = [e for e in evals if e.get("phase") == "offline"]
    if done:
        last = done[-1]
        rows.append(
            f"| offline phase result (update {last['updates']:,}) | {last['mean_return']:.1f} +- {last['std_return']:.1f} |"
        )
    online = state.get("online_from")
    if online:
        rows.append(
            f"| online phase from | update {online['updates']:,}, {online['env_steps']:,} env steps, "
            f"{online['wall_s'] / 60:.1f} min |"
        )
    return rows


def write_report(run: RunDir) -> str:
    """Writes learning_curve.png and summary.md into the run directory; returns the summary."""
    text = summary_table(run)
    run.write_text("summary.md", text)
    plot_learning_curve(run)
    return text


def main_report(run_dir: str) -> int:
    run = RunDir(run_dir)
    run.load_config()  # a ConfigError when it is not a run directory
    text = write_report(run)
    print(text, end="")
    print(f"written: {run.path / 'summary.md'}, {run.path / 'learning_curve.png'}")
    return 0
