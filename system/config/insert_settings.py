"""The actors' insert settings derived from the run: `actors.insert_batch` and
`actors.max_inserts_in_flight`, when a config leaves them out.

How far actors may run ahead of the learner beyond the replay's rate-limiter window is what each
actor has sent and replay has not admitted yet: up to `max_inserts_in_flight` unacknowledged
insert messages plus the one it is filling, so num_actors x insert_batch x (max_inserts_in_flight
+ 1) transitions ("the lead"; `InsertSettings.lead`: messages are exactly insert_batch, and the
actor's n-step block is sized to fit in one). Those transitions were collected by a policy that many env steps
(x the UTD: learner updates) older than the learner's. The fixed defaults (4096 x 33 per actor)
suit a long throughput run and were 1352% of a 20k-step Pendulum run (issue #23). So the lead is
sized from the run:

    lead budget = min(LEAD_FRACTION x train.total_env_steps, LEAD_UPDATES / learner.updates_per_env_step)

(2% of the run, and 512 learner updates' worth of transitions), then split over the actors: one message in flight, the batch as large as the budget allows (up to
MAX_INSERT_BATCH); once the batch is at its largest, more messages in flight (up to
MAX_INSERTS_IN_FLIGHT) for throughput. A key given in the config wins; the other is derived around
it. `system.train.plan` warns when the lead of explicit settings is out of proportion to the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from system.config.run import RunConfig

LEAD_FRACTION = 0.02
"""The lead budget as a fraction of train.total_env_steps (plan warns above 5%: `LEAD_WARN_FRACTION`)."""

LEAD_WARN_FRACTION = 0.05
"""A lead above this fraction of the run is out of proportion (plan warns about explicit settings)."""

LEAD_UPDATES = 512
"""The lead budget in learner updates: the data in flight was collected by a policy this many
updates behind the learner at most, whatever the run's length. It is what configs/cartpole.yaml was
tuned with (2 actors x 256 x 2 at UTD 0.5: 1,024 transitions, 512 updates), a few target-network
periods; a higher UTD gets proportionally fewer transitions (UTD 4: 128)."""

MAX_INSERT_BATCH = 4096
"""The largest derived insert message (the fixed default's size). Small messages cost actors little:
a shard takes over 300k CartPole transitions/s at 256 per message (docs/benchmarks.md, replay
insert), far above what a run's actors produce."""

MAX_INSERTS_IN_FLIGHT = 32
"""The most derived messages in flight (the fixed default's)."""


@dataclass(frozen=True)
class InsertSettings:
    """An actor's insert message size and how many may be unacknowledged."""

    insert_batch: int
    max_inserts_in_flight: int

    def lead(self, num_actors: int, num_envs: int = 1) -> int:
        """Transitions all actors may hold sent but not admitted: num_actors x message x
        (max_inserts_in_flight + 1), a message being max(insert_batch, num_envs).

        An actor's writer sends messages of exactly insert_batch (`actors.TransitionWriter`), and
        its n-step accumulator hands them over every `actors.actor.nstep_block` vector steps, at
        most insert_batch transitions at a time; with more envs than insert_batch one vector
        step's transitions (num_envs) are the smallest hand-over. On top of the lead, each actor
        is collecting at most one such block (plus n_step - 1 steps of open windows) that is not
        yet transitions."""
        return num_actors * max(self.insert_batch, num_envs) * (self.max_inserts_in_flight + 1)


def lead_budget(total_env_steps: int, updates_per_env_step: float) -> float:
    """Transitions the actors together may run ahead of the learner (see the module docstring)."""
    return min(LEAD_FRACTION * total_env_steps, LEAD_UPDATES / updates_per_env_step)


def derive_insert_settings(
    total_env_steps: int,
    updates_per_env_step: float,
    num_actors: int,
    insert_batch: int | None = None,
    max_inserts_in_flight: int | None = None,
) -> InsertSettings:
    """The insert settings for a run; a value given (not None) is kept, the other derived around it.

    Args:
        total_env_steps: train.total_env_steps (0, an offline-only run: the smallest settings).
        updates_per_env_step: learner.updates_per_env_step (the UTD, > 0).
        num_actors: actors.num_actors (>= 1).
        insert_batch, max_inserts_in_flight: the config's, when it sets them.
    """
    per_actor = lead_budget(total_env_steps, updates_per_env_step) / max(1, num_actors)
    if insert_batch is None:
        in_flight = 1 if max_inserts_in_flight is None else max_inserts_in_flight
        insert_batch = _clamp(int(per_actor // (in_flight + 1)), 1, MAX_INSERT_BATCH)
    if max_inserts_in_flight is None:
        max_inserts_in_flight = _clamp(int(per_actor // insert_batch) - 1, 1, MAX_INSERTS_IN_FLIGHT)
    return InsertSettings(insert_batch, max_inserts_in_flight)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


INSERT_KEYS = ("insert_batch", "max_inserts_in_flight")
"""The `actors` keys derived when a config leaves them out."""


def with_derived_inserts(config: RunConfig, given: set[str]) -> RunConfig:
    """`config` (a `RunConfig`) with the `actors` insert keys not in `given` derived from its run
    length, UTD and actor count."""
    actors = config.actors
    if set(INSERT_KEYS) <= given:
        return config
    settings = derive_insert_settings(
        config.train.total_env_steps,
        config.learner.updates_per_env_step,
        actors.num_actors,
        actors.insert_batch if "insert_batch" in given else None,
        actors.max_inserts_in_flight if "max_inserts_in_flight" in given else None,
    )
    return dataclasses.replace(config, actors=dataclasses.replace(actors, **dataclasses.asdict(settings)))
