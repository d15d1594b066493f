"""Prometheus metrics of the `qfleet train` driver (`qfleet_train_*`): the run as a whole."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from system.train.records import ACCOUNTING_FIELDS, ProgressRecord

PREFIX = "qfleet_train"

SERIES = {
    f"{PREFIX}_env_steps": "Env steps of the run over all actors (a resumed run counts on).",
    f"{PREFIX}_target_env_steps": "train.total_env_steps: where the run stops.",
    f"{PREFIX}_episodes": "Episodes finished by all actors (a resumed run counts on).",
    f"{PREFIX}_recent_return": "Mean return of the last 100 training episodes of all actors (with exploration).",
    f"{PREFIX}_eval_return": "Mean return of the latest evaluation of the published weights.",
    f"{PREFIX}_eval_env_steps": "Env steps of the run when the latest evaluation's weights were taken.",
    f"{PREFIX}_replay_size": "Items held by all replay shards.",
    f"{PREFIX}_actors": "Env actors the supervisor keeps running.",
    f"{PREFIX}_transitions_lost": "Transitions lost over the run: never acknowledged, or lost by a shard that died.",
    f"{PREFIX}_transitions_inserted": "Transitions stored for the actors over the run, each once (the shards' "
    "insert ledgers; a killed actor's last chunk included).",
    f"{PREFIX}_transitions_stored_twice": "Transitions a shard stored and, no reply reaching the writer, another "
    "shard stored again (failover); present + lost - this = inserted.",
    f"{PREFIX}_transitions_given_back": "Transitions a shard stored of batches handed back to an actor unacknowledged "
    "(no shard took the re-send in time): counted lost once.",
    f"{PREFIX}_transitions_unattributed": "present + lost by shards - stored twice - given back - stored for the "
    "actors: transitions no actor is credited with (0 when the accounting is exact).",
    f"{PREFIX}_transitions_untracked": "Transitions of insert streams beyond the shards' ledger slots (counted, in no "
    "actor's total, de-duplicated in memory only).",
    f"{PREFIX}_receipts_unresolved": "Failover receipts naming a stream no shard's ledger holds (their stored-twice "
    "items are unknown).",
    f"{PREFIX}_receipts_dropped": "Failover receipts the shards refused (another writer's stream, or no room left).",
    f"{PREFIX}_faults": "Component faults ridden out over the run, by kind (shard_restarts, redis_restarts, ...).",
}


class TrainMetrics:
    """The driver's series; `registry` is served on the driver's /metrics."""

    def __init__(self, run: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()

        def gauge(name: str) -> Gauge:
            return Gauge(name, SERIES[name], ["run"], registry=self.registry).labels(run)

        self.env_steps = gauge(f"{PREFIX}_env_steps")
        self.target_env_steps = gauge(f"{PREFIX}_target_env_steps")
        self.episodes = gauge(f"{PREFIX}_episodes")
        self.recent_return = gauge(f"{PREFIX}_recent_return")
        self.eval_return = gauge(f"{PREFIX}_eval_return")
        self.eval_env_steps = gauge(f"{PREFIX}_eval_env_steps")
        self.replay_size = gauge(f"{PREFIX}_replay_size")
        self.actors = gauge(f"{PREFIX}_actors")
        self.transitions_lost = gauge(f"{PREFIX}_transitions_lost")
        self.accounting = {name: gauge(f"{PREFIX}_{name}") for name in ACCOUNTING_FIELDS}
        name = f"{PREFIX}_faults"
        self.faults = Gauge(name, SERIES[name], ["run", "kind"], registry=self.registry)
        self.run = run

    def update(self, record: ProgressRecord) -> None:
        """Takes the values of a progress record (metrics.jsonl)."""
        self.env_steps.set(record.env_steps)
        self.episodes.set(record.episodes)
        if record.recent_return is not None:
            self.recent_return.set(record.recent_return)
        if record.last_eval is not None:
            self.eval_env_steps.set(record.last_eval[0])
            self.eval_return.set(record.last_eval[1])
        self.replay_size.set(record.replay_size)
        self.actors.set(record.actors)
        self.transitions_lost.set(record.transitions_lost)
        for name, series in self.accounting.items():  # left unset when no shard ledger counts them
            value = getattr(record, name)
            if value is not None:
                series.set(value)
        for kind, count in record.faults.items():
            self.faults.labels(self.run, kind).set(count)
