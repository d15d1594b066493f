"""`EnvConfig`: which environment the actors run (the `env` section of a run config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvConfig:
    """The environment of a run."""

    id: str = "CartPole-v1"
    """Gymnasium environment id, e.g. "CartPole-v1", "MinAtar/Breakout-v0", "ALE/Pong-v5"."""

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id='': an environment id is required")
