"""When a run evaluates: at every multiple of train.eval_every_steps, on a schedule that never drifts.

The driver sees the env-step count only as actors' chunks end (the fleet shortens chunks to end on
the schedule's multiples: `actors.allotment`), so an evaluation is noticed at or shortly past its
scheduled step. It is recorded with both (the scheduled step, and the step the weights were taken
at); the next one is due at the following multiple, whatever step this one was noticed at. Several
multiples passed at once (a long chunk, a slow poll) give one evaluation, for the latest of them,
not a burst of evaluations of the same weights.
"""

from __future__ import annotations


def due_evaluation(env_steps: int, next_due: int, every: int) -> tuple[int | None, int]:
    """The scheduled step of the evaluation due at `env_steps`, and the next due step.

    Args:
        env_steps: the run's env steps now.
        next_due: the step the next evaluation is due at (a multiple of `every`, unless a resumed
            run changed the interval).
        every: train.eval_every_steps (0: no periodic evaluations).

    Returns:
        (None, next_due) while none is due; else (the latest scheduled step reached, at least
        `next_due`; the multiple of `every` after `env_steps`).
    """
    if not every or env_steps < next_due:
        return None, next_due
    return max(next_due, env_steps // every * every), (env_steps // every + 1) * every
