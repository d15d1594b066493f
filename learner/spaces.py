"""`ActionSpace`: what the learner (and the policies actors act with) need of an env's actions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActionSpace:
    """What the learner needs of the env's action space."""

    num_actions: int | None = None
    """Discrete: number of actions."""
    low: tuple[float, ...] | None = None
    """Continuous: lower bounds."""
    high: tuple[float, ...] | None = None
    """Continuous: upper bounds."""

    @property
    def discrete(self) -> bool:
        return self.num_actions is not None
