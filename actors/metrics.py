"""Prometheus metrics of an env actor (`qfleet_actor_*`), one registry per actor process.

Names here are the contract the Grafana dashboard generator reads; labels are bounded (`run`,
`actor`). Weight version lag is the learner's `qfleet_learner_weight_version` minus
`qfleet_actor_weight_version`, computed in PromQL.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "qfleet_actor"

SERIES = {
    f"{PREFIX}_env_steps_total": "Environment steps taken (every env of the actor's vector).",
    f"{PREFIX}_episodes_total": "Episodes finished.",
    f"{PREFIX}_transitions_inserted_total": "n-step transitions acknowledged by replay.",
    f"{PREFIX}_transitions_lost_total": "Transitions no replay shard accepted within insert_retry_s (dropped, counted).",
    f"{PREFIX}_env_restarts_total": "Environments rebuilt after raising in step or reset.",
    f"{PREFIX}_random_steps_total": (
        "Environment steps acted uniformly at random before the actor's policy was built (fresh runs)."
    ),
    f"{PREFIX}_weight_pulls_total": "New weight versions fetched from the parameter store.",
    f"{PREFIX}_insert_wait_seconds_total": "Seconds spent blocked inserting (replay back-pressure or failover).",
    f"{PREFIX}_weight_version": "Version of the weights the actor acts with (0: initial).",
    f"{PREFIX}_episode_return": "Mean return of the episodes the actor finished recently.",
    f"{PREFIX}_episode_length": "Mean length (env steps) of recently finished episodes.",
    f"{PREFIX}_epsilon": "Exploration rate of the actor (Ape-X schedule).",
}


class ActorMetrics:
    """The series of one actor.

    Args:
        run: the run name (label).
        actor_id: the actor (label).
    """

    def __init__(self, run: str, actor_id: int):
        self.registry = CollectorRegistry()
        labels = ("run", "actor")
        values = (run, str(actor_id))

        def counter(name: str) -> Counter:
            full = f"{PREFIX}_{name}_total"
            return Counter(full.removesuffix("_total"), SERIES[full], labels, registry=self.registry).labels(*values)

        def gauge(name: str) -> Gauge:
            full = f"{PREFIX}_{name}"
            return Gauge(full, SERIES[full], labels, registry=self.registry).labels(*values)

        self.env_steps = counter("env_steps")
        self.episodes = counter("episodes")
        self.transitions_inserted = counter("transitions_inserted")
        self.transitions_lost = counter("transitions_lost")
        self.env_restarts = counter("env_restarts")
        self.random_steps = counter("random_steps")
        self.weight_pulls = counter("weight_pulls")
        self.insert_wait_seconds = counter("insert_wait_seconds")
        self.weight_version = gauge("weight_version")
        self.episode_return = gauge("episode_return")
        self.episode_length = gauge("episode_length")
        self.epsilon = gauge("epsilon")
