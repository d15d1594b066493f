"""A dataset's episodes as n-step transitions, computed once with the actors' own n-step code.

The episodes are laid side by side in `lanes` (each lane a run of whole episodes) and fed to
`actors.NStepAccumulator` as if each lane were one env of a vector: one `add` per row moves every
lane a step, so a million steps take about a thousand vectorised calls. The accumulator then gives
exactly what an actor would have inserted: no bootstrap through termination (discount 0), a
truncated episode bootstraps from its last observation. Rows past a lane's end are marked aborted,
which starts no window and (every episode having ended before) cuts none.
"""

from __future__ import annotations

import heapq

import numpy as np

from actors import NStepAccumulator
from system.datasets.reader import Episodes

LANE_STEPS = 1024
"""Target steps per lane: rows fed to the accumulator (lanes = steps / this)."""

BLOCK_ROWS = 64
"""Rows between the accumulator's emissions (bounds the memory of one emission)."""


def episode_lanes(lengths: np.ndarray, lane_steps: int = LANE_STEPS) -> list[list[int]]:
    """Episodes (indices, in order within a lane) spread over lanes of about equal steps."""
    lanes = max(1, min(len(lengths), int(lengths.sum()) // lane_steps))
    heap = [(0, lane) for lane in range(lanes)]
    assigned: list[list[int]] = [[] for _ in range(lanes)]
    for episode in np.argsort(-lengths, kind="stable"):  # longest first: the lanes end up even
        steps, lane = heapq.heappop(heap)
        assigned[lane].append(int(episode))
        heapq.heappush(heap, (steps + int(lengths[episode]), lane))
    return [sorted(lane) for lane in assigned if lane]


def nstep_transitions(
    episodes: Episodes, n_step: int, gamma: float, lane_steps: int = LANE_STEPS
) -> dict[str, np.ndarray]:
    """Every n-step transition of the dataset, columnar, in the replay spec's columns.

    Each transition carries its episode's `policy_version` and `actor_id` from the episode
    metadata (-1 where it has none).

    Returns:
        obs, action, reward (n-step discounted sum), next_obs, discount, policy_version, actor_id;
        one row per dataset step.
    """
    lengths, starts = episodes.lengths, episodes.starts
    lanes = episode_lanes(lengths, lane_steps)
    rows = max(int(lengths[lane].sum()) for lane in lanes)
    step_index = np.full((rows, len(lanes)), -1, np.int64)  # dataset step at (row, lane); -1: past the lane's end
    episode_of = np.full((rows, len(lanes)), 0, np.int64)
    for column, lane in enumerate(lanes):
        steps = np.concatenate([np.arange(starts[e], starts[e] + lengths[e]) for e in lane])
        step_index[: len(steps), column] = steps
        episode_of[: len(steps), column] = np.repeat(lane, lengths[lane])
    versions = np.array([int(m.get("policy_version", -1)) for m in episodes.metadata], np.int64)
    actors = np.array([int(m.get("actor_id", -1)) for m in episodes.metadata], np.int32)
    past_end = step_index < 0
    safe_step = np.where(past_end, 0, step_index)
    obs_index = safe_step + episode_of  # episode e's observations sit e rows below its steps
    accumulator = NStepAccumulator(len(lanes), n_step, gamma, block=BLOCK_ROWS)
    out: list[dict[str, np.ndarray]] = []
    row = 0
    while row < rows or accumulator.pending():
        if row < rows:
            s, o, aborted = safe_step[row], obs_index[row], past_end[row]
            emitted = accumulator.add(
                episodes.observations[o],
                episodes.actions[s],
                np.where(aborted, 0.0, episodes.rewards[s]),
                episodes.observations[o + 1],
                episodes.terminations[s] & ~aborted,
                episodes.truncations[s] & ~aborted,
                extras={"policy_version": versions[episode_of[row]], "actor_id": actors[episode_of[row]]},
                aborted=aborted,
            )
        else:  # drain: rows of nothing until the last windows are emitted
            nothing = np.ones(len(lanes), bool)
            zeros = np.zeros(len(lanes), np.int64)
            emitted = accumulator.add(
                episodes.observations[zeros],
                episodes.actions[zeros],
                np.zeros(len(lanes)),
                episodes.observations[zeros],
                ~nothing,
                ~nothing,
                extras={"policy_version": versions[zeros], "actor_id": actors[zeros]},
                aborted=nothing,
            )
        row += 1
        if emitted is not None:
            out.append(emitted)
    transitions = {name: np.concatenate([batch[name] for batch in out]) for name in out[0]}
    assert len(transitions["reward"]) == episodes.num_steps, "every dataset step starts one transition"
    return transitions
