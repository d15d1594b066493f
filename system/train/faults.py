"""Faults of a run's components, ridden out and counted: a component that dies and comes back (Ray
restarts it, or the driver has it restarted) is a state of the run, not its end. Only the same
component failing train.max_component_failures times within train.failure_window_s stops it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass

from system.errors import TrainError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultCounts:
    """Faults of one run so far, by kind (state.json's "faults", progress records, metrics)."""

    shard_restarts: int = 0
    """Shard processes that died (or stopped answering calls) and were restarted by Ray."""
    shard_hangs: int = 0
    """Shards silent beyond train.silent_after_s that the driver had Ray restart (also in
    shard_restarts when they came back)."""
    learner_restarts: int = 0
    """Learner processes that died or became unreachable and came back."""
    actor_restarts: int = 0
    """Env actor processes restarted by Ray or replaced by the supervisor."""
    redis_restarts: int = 0
    """Times the embedded redis-server died and the driver restarted it (same port, its data)."""

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> FaultCounts:
        """From state.json (an older run without the key: none)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in (data or {}).items() if k in names})

    def describe(self) -> str:
        """e.g. "shard restarts 1, redis restarts 1" (only the non-zero counts; "" when none)."""
        return ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in self.to_json().items() if v)


class FaultLog:
    """Logs each fault once with its cause, counts it, and stops the run when one component fails
    too often.

    Args:
        max_failures: failures of one component within `window_s` that stop the run.
        window_s: the window, in seconds.
        counts: what earlier sessions of a resumed run counted.
    """

    def __init__(self, max_failures: int, window_s: float, counts: FaultCounts | None = None):
        self.max_failures, self.window_s = max_failures, window_s
        self.counts = counts or FaultCounts()
        self._earlier_actor_restarts = self.counts.actor_restarts
        self._times: dict[str, deque[float]] = {}

    def record(self, component: str, kind: str, cause: str, now: float | None = None) -> None:
        """Counts one fault of `component` (e.g. "shard 1") under `kind` (a FaultCounts field).

        Raises:
            TrainError: `component` failed max_failures times within window_s.
        """
        now = time.monotonic() if now is None else now
        self.counts = dataclasses.replace(self.counts, **{kind: getattr(self.counts, kind) + 1})
        times = self._times.setdefault(component, deque())
        times.append(now)
        while times and now - times[0] > self.window_s:
            times.popleft()
        log.warning("%s: %s (%s %d in this run)", component, cause, kind.replace("_", " "), getattr(self.counts, kind))
        if len(times) >= self.max_failures:
            raise TrainError(
                f"{component} failed {len(times)} times within {self.window_s:g} s "
                f"(train.max_component_failures={self.max_failures}, train.failure_window_s={self.window_s:g}); "
                f"last: {cause}"
            )

    def set_actor_restarts(self, session_restarts: int) -> None:
        """The fleet counts its own actors' restarts (this session's): take its count."""
        restarts = self._earlier_actor_restarts + session_restarts
        if restarts != self.counts.actor_restarts:
            self.counts = dataclasses.replace(self.counts, actor_restarts=restarts)
