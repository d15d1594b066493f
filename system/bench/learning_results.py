"""The figures of `qfleet bench learning` from each run's evaluations, and its Markdown tables.

A run's evaluations are records {"env_steps", "wall_s", "mean_return"} in order (wall_s: seconds
since the run's process started, start-up included). Pure functions: tested by hand-made lists.
"""

from __future__ import annotations

import math
import statistics


def summarise(seed: int, evals: list[dict], threshold: float, wall_s: float | None) -> dict:
    """One run's figures.

    Args:
        seed: the run's seed.
        evals: its evaluations in order (may be empty: a run that died before its first).
        threshold: the return to reach.
        wall_s: the run's whole wall time (None when unknown).

    Returns:
        seed; reached_env_steps / reached_wall_s: the first evaluation >= threshold (None: never);
        min_after: the lowest evaluation from then on; held: reached and every later evaluation
        >= threshold (False when never reached); held_from_env_steps: from which evaluation on every
        evaluation stays >= threshold (None: the last one is below); final: the last evaluation's
        return (None: no evaluation); evaluations: how many; wall_s.
    """
    hit = next((i for i, e in enumerate(evals) if e["mean_return"] >= threshold), None)
    stable = len(evals)
    while stable > 0 and evals[stable - 1]["mean_return"] >= threshold:
        stable -= 1
    min_after = min(e["mean_return"] for e in evals[hit:]) if hit is not None else None
    return {
        "seed": seed,
        "reached_env_steps": evals[hit]["env_steps"] if hit is not None else None,
        "reached_wall_s": evals[hit]["wall_s"] if hit is not None else None,
        "min_after": min_after,
        "held": hit is not None and min_after >= threshold,
        "held_from_env_steps": evals[stable]["env_steps"] if stable < len(evals) else None,
        "final": evals[-1]["mean_return"] if evals else None,
        "evaluations": len(evals),
        "wall_s": wall_s,
    }


def median_or_never(values: list[float | None]) -> float | None:
    """The median with "never" (None) counted as larger than any number; None when that median is
    a "never" (more than half the runs did not get there) or there are no values."""
    if not values:
        return None
    median = statistics.median([math.inf if v is None else v for v in values])
    return None if median == math.inf else median


def _fmt(value, spec: str) -> str:
    return "never" if value is None else format(value, spec)


def task_table(task_name: str, threshold: float, rows: dict[str, list[dict]]) -> str:
    """A task's Markdown table: per system and seed (the `summarise` figures), then each system's
    median (steps and wall time to the threshold: "never" counts as more than any figure)."""
    t = f"{threshold:g}"
    lines = [
        f"| {task_name}: system | seed | first eval >= {t} (env steps) | wall time to it (s) | held to the end "
        f"| lowest eval after | final eval | evals | run wall time (s) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for system, runs in rows.items():
        for r in runs:
            lines.append(
                f"| {system} | {r['seed']} | {_fmt(r['reached_env_steps'], ',')} | {_fmt(r['reached_wall_s'], '.0f')} "
                f"| {'yes' if r['held'] else 'no'} | {_fmt(r['min_after'], '.1f')} | {_fmt(r['final'], '.1f')} "
                f"| {r['evaluations']} | {_fmt(r['wall_s'], '.0f')} |"
            )
        if len(runs) > 1:
            finals = [r["final"] for r in runs if r["final"] is not None]
            lines.append(
                f"| {system} | median | {_fmt(median_or_never([r['reached_env_steps'] for r in runs]), ',.0f')} "
                f"| {_fmt(median_or_never([r['reached_wall_s'] for r in runs]), '.0f')} "
                f"| {sum(r['held'] for r in runs)} of {len(runs)} | "
                f"| {_fmt(statistics.median(finals) if finals else None, '.1f')} | | |"
            )
    return "\n".join(lines) + "\n"
