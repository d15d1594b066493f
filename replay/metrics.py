"""Prometheus metrics of a replay shard (`qfleet_replay_*`), one registry per server.

Names here are the contract the Grafana dashboard generator reads; labels are bounded (`shard`).
Counters that the table already keeps (inserts, samples, size, ...) are exported by a collector
that reads `Table.info()` at scrape time, so the hot path pays nothing for them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from replay.source import ReplaySource

PREFIX = "qfleet_replay"

# Name -> help, for the collector-backed series (also read by the dashboard generator).
TABLE_SERIES = {
    f"{PREFIX}_inserts_total": "Items inserted into the shard since it was created (restored from checkpoints).",
    f"{PREFIX}_samples_total": "Items sampled from the shard since it was created.",
    f"{PREFIX}_dropped_priority_updates_total": "Priority updates dropped because their slot had been overwritten.",
    f"{PREFIX}_limiter_wait_seconds_total": "Seconds callers spent blocked by the rate limiter, by operation.",
    f"{PREFIX}_size": "Items currently held.",
    f"{PREFIX}_capacity": "Maximum items held.",
    f"{PREFIX}_priority_mass": "Sum of priority^alpha over held items.",
    f"{PREFIX}_limiter_diff": "inserts * samples_per_insert - samples (the rate limiter's error term).",
    f"{PREFIX}_limiter_waiting": "Calls currently blocked by the rate limiter, by operation.",
}
# Series of a ShardedReplay (a learner or writer process), read from its cached counters.
SHARDED_SERIES = {
    f"{PREFIX}_achieved_samples_per_insert": "Total samples / total inserts over all shards, as last seen.",
    f"{PREFIX}_target_samples_per_insert": "The global samples_per_insert this client enforces (0: none).",
    f"{PREFIX}_live_shards": "Shards this client currently takes as live.",
    f"{PREFIX}_global_inserts": (
        "Inserts of the run over all shard ids, as last seen: those lost to shard crashes and those of "
        "shards that left included."
    ),
    f"{PREFIX}_global_samples": "Sum of the shards' sample counters, as last seen.",
    f"{PREFIX}_failovers_total": "Times this client found a shard unavailable and moved on without it.",
}
RPC_LATENCY = f"{PREFIX}_rpc_latency_seconds"
REJECTED_BATCHES = f"{PREFIX}_rejected_batches_total"
CHECKPOINTS = f"{PREFIX}_checkpoints_total"
UNAUTHENTICATED = f"{PREFIX}_unauthenticated_requests_total"
SERVER_SERIES = {
    RPC_LATENCY: "Server-side latency of replay RPCs (per Insert batch, per Sample/UpdatePriorities/Info call).",
    REJECTED_BATCHES: "Batches rejected for bad input.",
    CHECKPOINTS: "Checkpoints written.",
    UNAUTHENTICATED: "Calls refused UNAUTHENTICATED: no replay token, or a wrong one.",
}
SERIES = TABLE_SERIES | SHARDED_SERIES | SERVER_SERIES
"""Every replay series, name -> help (histograms by their base name)."""


class _TableCollector:
    def __init__(self, table, shard: str):
        self._table = table
        self._shard = shard

    def collect(self):
        info = self._table.info()
        labels = ["shard"]
        values = [self._shard]

        def counter(name, value):
            family = CounterMetricFamily(name.removesuffix("_total"), TABLE_SERIES[name], labels=labels)
            family.add_metric(values, value)
            return family

        def gauge(name, value):
            family = GaugeMetricFamily(name, TABLE_SERIES[name], labels=labels)
            family.add_metric(values, value)
            return family

        yield counter(f"{PREFIX}_inserts_total", info.inserts)
        yield counter(f"{PREFIX}_samples_total", info.delivered_samples)
        yield counter(f"{PREFIX}_dropped_priority_updates_total", info.dropped_priority_updates)
        waits = CounterMetricFamily(
            f"{PREFIX}_limiter_wait_seconds",
            TABLE_SERIES[f"{PREFIX}_limiter_wait_seconds_total"],
            labels=["shard", "op"],
        )
        waits.add_metric([self._shard, "insert"], info.insert_wait_seconds)
        waits.add_metric([self._shard, "sample"], info.sample_wait_seconds)
        yield waits
        yield gauge(f"{PREFIX}_size", info.size)
        yield gauge(f"{PREFIX}_capacity", info.capacity)
        yield gauge(f"{PREFIX}_priority_mass", info.priority_mass)
        yield gauge(f"{PREFIX}_limiter_diff", info.diff)
        waiting = GaugeMetricFamily(
            f"{PREFIX}_limiter_waiting", TABLE_SERIES[f"{PREFIX}_limiter_waiting"], labels=["shard", "op"]
        )
        waiting.add_metric([self._shard, "insert"], info.waiting_inserts)
        waiting.add_metric([self._shard, "sample"], info.waiting_samples)
        yield waiting


class ReplayMetrics:
    """The metrics of one shard, in their own registry (several shards may share a process)."""

    def __init__(self, table, shard_id: int):
        self.registry = CollectorRegistry()
        shard = str(shard_id)
        self.registry.register(_TableCollector(table, shard))
        self.rpc_latency = Histogram(
            RPC_LATENCY,
            SERVER_SERIES[RPC_LATENCY],
            ["shard", "method"],
            registry=self.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ).labels  # called as rpc_latency(shard, method)
        self._shard = shard
        self.rejected_batches = Counter(
            REJECTED_BATCHES.removesuffix("_total"),
            SERVER_SERIES[REJECTED_BATCHES],
            ["shard"],
            registry=self.registry,
        ).labels(shard)
        self.checkpoints = Counter(
            CHECKPOINTS.removesuffix("_total"), SERVER_SERIES[CHECKPOINTS], ["shard"], registry=self.registry
        ).labels(shard)
        self.unauthenticated_requests = Counter(
            UNAUTHENTICATED.removesuffix("_total"), SERVER_SERIES[UNAUTHENTICATED], ["shard"], registry=self.registry
        ).labels(shard)

    def latency(self, method: str):
        """The latency histogram child of `method`."""
        return self.rpc_latency(self._shard, method)


class ShardedCollector:
    """Exports a replay source's view (achieved vs target UTD, live shards) at scrape time.

    Register it in the process's registry: `registry.register(ShardedCollector(sharded))`.
    """

    def __init__(self, sharded: ReplaySource):
        self._sharded = sharded

    def collect(self):
        stats = self._sharded.stats()
        values = {
            f"{PREFIX}_achieved_samples_per_insert": stats["achieved_samples_per_insert"],
            f"{PREFIX}_target_samples_per_insert": stats["target_samples_per_insert"],
            f"{PREFIX}_live_shards": stats["live_shards"],
            f"{PREFIX}_global_inserts": stats["inserts"],
            f"{PREFIX}_global_samples": stats["samples"],
        }
        for name, value in values.items():
            family = GaugeMetricFamily(name, SHARDED_SERIES[name], labels=["run"])
            family.add_metric([stats["run"]], value)
            yield family
        failovers = CounterMetricFamily(
            f"{PREFIX}_failovers", SHARDED_SERIES[f"{PREFIX}_failovers_total"], labels=["run"]
        )
        failovers.add_metric([stats["run"]], stats["failovers"])
        yield failovers
