"""The figures of `qfleet bench learning` from each run's evaluations, and its Markdown tables.

A run's evaluations are records {"env_steps", "wall_s", "mean_return"} in order (wall_s: seconds
since the run's process started, start-up included). Pure functions: tested by hand-made lists.
"""

from __future__ import annotations

import math
import statistics


def summarise(
    seed: int,
    evals: list[dict],
    threshold: float,
    wall_s: float | None,
    exit_code: int | str = 0,
    skipped_evals: int = 0,
    scheduled_evals: int | None = None,
) -> dict:
    """One run's figures.

    Args:
        seed: the run's seed.
        evals: its evaluations in order (may be empty: a run that died before its first).
        threshold: the return to reach.
        wall_s: the run's whole wall time (None when unknown).
        exit_code: the run's exit (0, a code, or "timeout"), shown in the table.
        skipped_evals: scheduled evaluations the run did not make (qfleet's evaluator skips one
            requested while the previous still runs): "held" is then "unverified".
        scheduled_evals: how many were scheduled (shown with skipped_evals).

    Returns:
        seed; reached_env_steps / reached_wall_s: the first evaluation >= threshold (None: never);
        min_after: the lowest evaluation from then on; held: reached and every later evaluation
        >= threshold (False when never reached; "unverified" when it would be True but scheduled
        evaluations are missing); held_from_env_steps: from which evaluation on every
        evaluation stays >= threshold (None: the last one is below); final: the last evaluation's
        return (None: no evaluation); evaluations: how many; wall_s.
    """
    hit = next((i for i, e in enumerate(evals) if e["mean_return"] >= threshold), None)
    stable = len(evals)
    while stable > 0 and evals[stable - 1]["mean_return"] >= threshold:
        stable -= 1
    min_after = min(e["mean_return"] for e in evals[hit:]) if hit is not None else None
    held = hit is not None and min_after >= threshold
    return {
        "seed": seed,
        "reached_env_steps": evals[hit]["env_steps"] if hit is not None else None,
        "reached_wall_s": evals[hit]["wall_s"] if hit is not None else None,
        "min_after": min_after,
        "held": held if not (held and skipped_evals) else "unverified",
        "held_from_env_steps": evals[stable]["env_steps"] if stable < len(evals) else None,
        "final": evals[-1]["mean_return"] if evals else None,
        "evaluations": len(evals),
        "wall_s": wall_s,
        "exit_code": exit_code,
        "skipped_evals": skipped_evals,
        "scheduled_evals": scheduled_evals,
    }


def median_or_never(values: list[float | None]) -> float | None:
    """The median with "never" (None) counted as larger than any number; None when that median is
    a "never" (more than half the runs did not get there) or there are no values."""
    if not values:
        return None
    median = statistics.median([math.inf if v is None else v for v in values])
    return None if median == math.inf else median


def median_final(finals: list[float | None]) -> str:
    """The median final evaluation with a run that has none (it died first) counted as lower than
    any: "missing" when that median is one of them; "(k of N missing)" added when any is."""
    if not finals:
        return "missing"
    median = statistics.median([-math.inf if v is None else v for v in finals])
    text = "missing" if median == -math.inf else f"{median:.1f}"
    missing = sum(v is None for v in finals)
    return text + (f" ({missing} of {len(finals)} missing)" if missing else "")


def _held(r: dict) -> str:
    text = {True: "yes", False: "no"}.get(r["held"], r["held"])
    if r.get("skipped_evals"):
        of = f" of {r['scheduled_evals']}" if r.get("scheduled_evals") is not None else ""
        text += f" ({r['skipped_evals']}{of} scheduled evals skipped)"
    return text


def _fmt(value, spec: str) -> str:
    return "never" if value is None else format(value, spec)


def task_table(task_name: str, threshold: float, rows: dict[str, list[dict]]) -> str:
    """A task's Markdown table: per system and seed (the `summarise` figures), then each system's
    median (steps and wall time to the threshold: "never" counts as more than any figure; the final
    evaluation: a run without one counts as lower than any)."""
    t = f"{threshold:g}"
    lines = [
        f"| {task_name}: system | seed | first eval >= {t} (env steps) | wall time to it (s) | held to the end "
        f"| lowest eval after | final eval | evals | run wall time (s) | exit |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for system, runs in rows.items():
        for r in runs:
            lines.append(
                f"| {system} | {r['seed']} | {_fmt(r['reached_env_steps'], ',')} | {_fmt(r['reached_wall_s'], '.0f')} "
                f"| {_held(r)} | {_fmt(r['min_after'], '.1f')} | {_fmt(r['final'], '.1f')} "
                f"| {r['evaluations']} | {_fmt(r['wall_s'], '.0f')} | {r.get('exit_code', 0)} |"
            )
        if len(runs) > 1:
            lines.append(
                f"| {system} | median | {_fmt(median_or_never([r['reached_env_steps'] for r in runs]), ',.0f')} "
                f"| {_fmt(median_or_never([r['reached_wall_s'] for r in runs]), '.0f')} "
                f"| {sum(r['held'] is True for r in runs)} of {len(runs)} | "
                f"| {median_final([r['final'] for r in runs])} | | | |"
            )
    return "\n".join(lines) + "\n"
