"""Asking a Ray actor for its state without ever waiting on it: the driver's loop submits a call,
collects it once ready (`ray.wait(timeout=0)`), keeps the last answer, and knows how long the actor
has been silent. A hung or restarting component then costs the loop nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PollFailure:
    """A call that failed: the actor died (Ray restarts it, or it is gone) or raised."""

    restarting: bool
    """Ray says the actor is restarting or unreachable for now (ActorUnavailableError)."""
    gone: bool
    """Ray says the actor died (ActorDiedError, or another RayActorError)."""
    cause: str


class ComponentPoll:
    """One outstanding call at a time to one actor, e.g. `shard.info.remote()`.

    Args:
        name: the component in messages ("shard 1", "learner").
        call: submits the call and returns its ObjectRef.
    """

    def __init__(self, name: str, call: Callable[[], object]):
        self.name, self.call = name, call
        self.value: object | None = None
        """The latest answer (None before the first)."""
        self.answered_at = time.monotonic()
        """When the latest answer came (the start, before the first)."""
        self.failing = False
        """A call failed and none answered since (one fault per outage)."""
        self.down_at: float | None = None
        """When a call last failed or the driver last had the actor restarted."""
        self._ref = None

    def tick(self, ray, now: float) -> PollFailure | None:
        """Collects a finished call and submits the next one; never waits."""
        if self._ref is None:
            self._ref = self.call()
            return None
        ready, _ = ray.wait([self._ref], timeout=0)
        if not ready:
            return None
        ref, self._ref = self._ref, None
        try:
            self.value = ray.get(ref, timeout=0)
        except Exception as exc:  # Ray's errors of a dead or restarting actor, or what the call raised
            return failure_of(exc)
        self.answered_at, self.failing = now, False
        return None

    def silent_for(self, now: float) -> float:
        """Seconds since the latest answer."""
        return now - self.answered_at

    def hung_for(self, now: float) -> float:
        """Seconds without an answer since the latest answer, failure or restart (a restart that
        Ray reports is no hang until it takes that long)."""
        return now - max(self.answered_at, self.down_at or self.answered_at)

    def restarting(self) -> bool:
        """It went down (a failed call or a restart) and has not answered since: starting up."""
        return self.down_at is not None and self.answered_at <= self.down_at

    def down(self, now: float) -> None:
        """The actor is restarting (Ray's, or the driver's doing): drops the outstanding call."""
        self._ref, self.down_at, self.failing = None, now, True

    @property
    def current(self) -> object | None:
        """The latest answer if it came from the actor's current process (after its latest restart)."""
        return self.value if self.down_at is None or self.answered_at > self.down_at else None


def failure_of(exc: Exception) -> PollFailure:
    """What a Ray error of a call to an actor says: restarting, gone, or the call's own error."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    cause = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return PollFailure(
        restarting=isinstance(exc, ActorUnavailableError),
        gone=isinstance(exc, RayActorError) and not isinstance(exc, ActorUnavailableError),
        cause=cause,
    )
