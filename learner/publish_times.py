"""`PublishTimes`: when the learner published each of its last weights versions, for the
sample-age metric (seconds since the weights behind a sampled transition were published).

The metric is read on every update, so a batch's age is a few vectorised numpy operations over
its items: the times sit in a ring indexed by version modulo the memory (the learner publishes
consecutive versions, so the ring holds exactly the last `memory` of them), and the oldest
remembered time is kept as it changes instead of searched for.
"""

from __future__ import annotations

import numpy as np


class PublishTimes:
    """Publish times of the last `memory` weights versions.

    Args:
        memory: versions remembered; a version published `memory` or more versions before the
            newest is forgotten, and data of it is aged from the oldest time remembered.
    """

    def __init__(self, memory: int):
        if memory < 1:
            raise ValueError(f"memory must be >= 1, got {memory}")
        self.memory = memory
        self._versions = np.zeros(memory, dtype=np.int64)  # 0: an empty slot (version 0 is never published)
        self._times = np.zeros(memory, dtype=np.float64)
        self._oldest: float | None = None  # the oldest time remembered; None: nothing published

    def __len__(self) -> int:
        return int(np.count_nonzero(self._versions))

    def record(self, version: int, when: float) -> None:
        """Remembers that `version` (>= 1) was published at `when` (Unix time); forgets the version
        `memory` before it, whose slot this takes."""
        if version < 1:
            raise ValueError(f"published versions are >= 1, got {version}")
        slot = version % self.memory
        replaced = int(self._versions[slot])
        self._versions[slot], self._times[slot] = version, when
        if self._oldest is None:
            self._oldest = when
        elif replaced:  # the oldest may have been the time forgotten: read it again
            self._oldest = float(self._times[self._versions > 0].min())
        else:  # a wall clock stepped back makes a newer version's time the oldest
            self._oldest = min(self._oldest, when)

    def age(self, versions: np.ndarray, now: float) -> float | None:
        """Seconds since the weights behind each of `versions` were published, mean over the items
        (not over their distinct versions); None when none of them came from published weights.
        Version 0 (the actors' initial weights, never published) and below have no age and are
        left out; a version not remembered (older than the last `memory`) is aged from the oldest
        publication remembered (a lower bound), never from the learner's start."""
        if self._oldest is None:
            return None
        versions = np.asarray(versions, dtype=np.int64)
        versions = versions[versions > 0]
        if not versions.size:
            return None
        slots = versions % self.memory
        published = np.where(self._versions[slots] == versions, self._times[slots], self._oldest)
        return float(now - published.mean())
