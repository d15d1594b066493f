"""`ActionSpace`: what the learner (and the policies actors act with) need of an env's actions, and
`ActionLayout`: how a flat discrete space is structured (UI action spaces), for the heads that use it,
and `ScreenGrid`: where a featurized UI observation holds the screen's feature grid that taps land on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActionLayout:
    """The structure of a flat discrete action space: each index's kind (tap, swipe, type, key, ...)
    and, for taps, the screen point it taps. `actors.UIActionSpace.layout()` builds it for MiniWoB and
    Android; the action-embedding critic reads it as features of each action and the factored policy
    as its kinds (learner/action_heads.py).

    Raises:
        ValueError: fields of different lengths, a kind index outside `kinds`, a kind with no action,
            a kind named twice, or a point outside [0, 1]^2 (or not finite).
    """

    kinds: tuple[str, ...]
    """The kinds that have at least one action, in index order (e.g. ("tap", "swipe", "type", "key"))."""
    kind_of: tuple[int, ...]
    """Per flat index, its kind's place in `kinds`."""
    points: tuple[tuple[float, float], ...]
    """Per flat index: a tap's normalised (x, y) in [0, 1]^2 (from the left and the top); (0, 0)
    for the other kinds."""

    def __post_init__(self) -> None:
        if len(self.points) != len(self.kind_of):
            raise ValueError(f"ActionLayout: {len(self.kind_of)} kinds but {len(self.points)} points")
        if any(not 0 <= kind < len(self.kinds) for kind in self.kind_of):
            raise ValueError(f"ActionLayout: kind_of holds indices outside 0..{len(self.kinds) - 1}")
        empty = [name for k, name in enumerate(self.kinds) if k not in self.kind_of]
        if empty:
            raise ValueError(f"ActionLayout: kinds {empty} have no action")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"ActionLayout: kinds {list(self.kinds)} name a kind twice")
        outside = [i for i, point in enumerate(self.points) if len(point) != 2 or not all(0 <= c <= 1 for c in point)]
        if outside:
            raise ValueError(f"ActionLayout: the points of actions {outside[:5]} are not in [0, 1]^2")

    @property
    def num_actions(self) -> int:
        return len(self.kind_of)


@dataclass(frozen=True)
class ScreenGrid:
    """Where an observation carries the screen's spatial features: the frozen encoder's feature map
    pooled to `rows` x `cols` cells of `channels` values, flattened row-major (cell by cell, channels
    last) after the first `offset` values (the global features: image features + instruction).
    `actors.FeaturizedEnv` writes it with `env.features.grid_rows/grid_cols`; the "spatial" critic
    reads a tap's cell from it and every other head reads only the first `offset` values
    (learner/action_heads.py).

    Raises:
        ValueError: a size below 1.
    """

    offset: int
    """Length of the global features before the grid."""
    rows: int
    """Grid rows (top to bottom)."""
    cols: int
    """Grid columns (left to right)."""
    channels: int
    """Values per cell (the encoder's feature-map channels)."""

    def __post_init__(self) -> None:
        for name in ("offset", "rows", "cols", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScreenGrid: {name}={getattr(self, name)} must be >= 1")

    @property
    def size(self) -> int:
        """Values of the grid in an observation (rows x cols x channels)."""
        return self.rows * self.cols * self.channels


@dataclass(frozen=True)
class ActionSpace:
    """What the learner needs of the env's action space."""

    num_actions: int | None = None
    """Discrete: number of actions."""
    low: tuple[float, ...] | None = None
    """Continuous: lower bounds."""
    high: tuple[float, ...] | None = None
    """Continuous: upper bounds."""
    layout: ActionLayout | None = None
    """Discrete: the space's structure (UI envs), or None (a plain list of actions)."""
    screen: ScreenGrid | None = None
    """Where the observations carry the screen's feature grid that taps land on (featurized UI envs
    with `env.features.grid_rows/grid_cols`), or None."""

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout.num_actions != self.num_actions:
            raise ValueError(f"ActionSpace: {self.num_actions} actions but a layout of {self.layout.num_actions}")

    @property
    def discrete(self) -> bool:
        return self.num_actions is not None
