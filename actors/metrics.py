"""Prometheus metrics of an env actor (`qfleet_actor_*`), one registry per actor process.

Names here are the contract the Grafana dashboard generator reads; labels are bounded (`run`,
`actor`). Weight version lag is the learner's `qfleet_learner_weight_version` minus
`qfleet_actor_weight_version`, computed in PromQL.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "qfleet_actor"


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

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=self.registry).labels(*values)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=self.registry).labels(*values)

        self.env_steps = counter("env_steps", "Environment steps taken (every env of the actor's vector).")
        self.episodes = counter("episodes", "Episodes finished.")
        self.transitions_inserted = counter("transitions_inserted", "n-step transitions acknowledged by replay.")
        self.transitions_lost = counter(
            "transitions_lost", "Transitions no replay shard accepted within insert_retry_s (dropped, counted)."
        )
        self.env_restarts = counter("env_restarts", "Environments rebuilt after raising in step or reset.")
        self.weight_pulls = counter("weight_pulls", "New weight versions fetched from the parameter store.")
        self.insert_wait_seconds = counter(
            "insert_wait_seconds", "Seconds spent blocked inserting (replay back-pressure or failover)."
        )
        self.weight_version = gauge("weight_version", "Version of the weights the actor acts with (0: initial).")
        self.episode_return = gauge("episode_return", "Mean return of the episodes the actor finished recently.")
        self.episode_length = gauge("episode_length", "Mean length (env steps) of recently finished episodes.")
        self.epsilon = gauge("epsilon", "Exploration rate of the actor (Ape-X schedule).")
