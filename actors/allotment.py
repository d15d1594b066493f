"""How many env steps an actor's next chunk may take: the fleet's arithmetic, kept pure.

A chunk's steps count for the fleet only once it ends, so the fleet's env-step counter moves in
chunks. Two things want it to stop on a given number rather than pass it by a chunk: the end of the
run (train.total_env_steps) and each scheduled evaluation (every train.eval_every_steps: the driver
evaluates when the counter reaches a multiple, and should do so near it, not thousands of steps
later). So each chunk gets an even share of what is left up to the nearer of the two, not counting
what chunks in flight were promised; once a milestone is all promised, chunks aim at the next one
(no actor waits at a milestone: only the end of the run stops chunks).
"""

from __future__ import annotations


def chunk_allotment(
    done: int,
    promised: int,
    actors: int,
    num_envs: int,
    max_env_steps: int | None = None,
    milestone_every: int | None = None,
    milestone_offset: int = 0,
    min_chunk: int = 0,
) -> int | None:
    """Env steps the next chunk may take, in whole vector steps of `num_envs`.

    Args:
        done: env steps of finished chunks (the fleet's counter).
        promised: env steps allotted to chunks in flight.
        actors: actors sharing what is left (>= 1).
        num_envs: envs per actor (a chunk steps them together).
        max_env_steps: the fleet's budget (None: none).
        milestone_every: chunks end on multiples of this (counted with `milestone_offset`); None or
            0: no milestones.
        milestone_offset: env steps the run did before this fleet (a resumed run's milestones are
            multiples of the run's count).
        min_chunk: env steps a chunk toward a milestone takes at least, though it passes the
            milestone (`min_chunk_steps`: each chunk end costs a round trip, a flush and a report,
            which a fast actor must not pay every few steps); the budget still binds.

    Returns:
        None: no limit; 0: the budget is spent or promised (no chunk starts); otherwise at least
        one vector step.
    """
    reached = done + promised
    budget_left = None if max_env_steps is None else max_env_steps - reached
    if budget_left is not None and budget_left <= 0:
        return 0
    share = None if budget_left is None else _share(budget_left, actors, num_envs)
    if milestone_every:
        at = milestone_offset + reached
        to_milestone = (at // milestone_every + 1) * milestone_every - at
        smallest = _share(milestone_every // MILESTONE_MIN_PARTS, actors, num_envs)
        smallest = max(smallest, _share(min_chunk, 1, num_envs))
        toward = max(_share(to_milestone, actors, num_envs), min(smallest, _share(to_milestone, 1, num_envs)))
        share = toward if share is None else min(share, toward)
    return share


MILESTONE_MIN_PARTS = 4
"""A chunk toward a milestone takes at least a quarter of an actor's even share of an interval (or
all that is left to the milestone, when less): the shares halve as chunks end near a milestone, and
this stops the halving after a few, so that a milestone costs each actor a few more chunk ends
(flushes, reports) at most."""

MIN_CHUNK_BLOCKS = 64
"""A chunk toward a milestone takes at least this many vector steps (one n-step block at most)."""

MIN_CHUNK_FRACTION = 4
"""... and at least 1/this of what the actor steps in a plain chunk at its measured pace."""


def min_chunk_steps(num_envs: int, steps_per_second: float | None, chunk_s: float) -> int:
    """The smallest chunk toward a milestone for an actor at `steps_per_second` (None: not known
    yet): MIN_CHUNK_BLOCKS vector steps, or a 1/MIN_CHUNK_FRACTION of a plain chunk of `chunk_s`
    seconds when more. A fast actor then ends a few more chunks per milestone, not hundreds; an
    evaluation it passes records both its scheduled and its actual env step."""
    by_pace = int((steps_per_second or 0.0) * chunk_s / MIN_CHUNK_FRACTION)
    return max(MIN_CHUNK_BLOCKS * num_envs, by_pace)


def _share(left: int, actors: int, num_envs: int) -> int:
    """An even share of `left` env steps over `actors`, in whole vector steps (at least one)."""
    vector_steps = max(1, left // num_envs)
    return -(-vector_steps // max(1, actors)) * num_envs
