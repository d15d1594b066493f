"""One PNG per task of `qfleet bench learning`: every system's evaluations against env steps, a thin
line per seed and a thick one for the median over seeds, the threshold dashed."""

from __future__ import annotations

import pathlib

import numpy as np


def median_curve(curves: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """The median over seeds of `curves` (each a run's evaluations), each interpolated linearly onto
    the evaluation points of the first curve, up to where the shortest curve ends (no
    extrapolation). Empty arrays when a curve has no evaluation."""
    if not curves or any(not curve for curve in curves):
        return np.array([]), np.array([])
    end = min(curve[-1]["env_steps"] for curve in curves)
    grid = np.array([e["env_steps"] for e in curves[0] if e["env_steps"] <= end], dtype=float)
    values = [np.interp(grid, [e["env_steps"] for e in curve], [e["mean_return"] for e in curve]) for curve in curves]
    return grid, np.median(np.stack(values), axis=0)


def plot_task(path: pathlib.Path, title: str, threshold: float, curves: dict[str, list[list[dict]]]) -> None:
    """Writes `path` (a PNG): per system (`curves`: system -> its seeds' evaluations) thin per-seed
    lines and the median, in one colour per system, and the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for index, (system, runs) in enumerate(curves.items()):
        colour = f"C{index}"
        for run in runs:
            if run:
                axes.plot(
                    [e["env_steps"] for e in run], [e["mean_return"] for e in run], color=colour, lw=0.8, alpha=0.35
                )
        grid, median = median_curve(runs)
        if len(grid):
            axes.plot(grid, median, color=colour, lw=2.2, label=f"{system} (median of {len(runs)})")
    axes.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    axes.set(title=title, xlabel="env steps", ylabel="greedy evaluation return (mean)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
