"""Replay settings, documented once for code, YAML and --help.

`ReplayConfig` holds a shard's settings; `ShardedReplayConfig` those of a client of many shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from replay.credentials import ReplayCredentials
from replay.mixing import validate_fractions
from replay.priority_stream import PriorityStreamConfig
from replay.rate_limiter import RateLimiter

RESERVED_THREADS = 4
"""Handler threads kept free of Insert streams and Samples, so Info and priority updates answer."""


@dataclass(frozen=True)
class ReplayConfig:
    """Settings of a replay shard (the `replay` section of a run config)."""

    capacity: int = 100_000
    """Items held per shard; the oldest item is evicted first beyond it."""

    selector: Literal["uniform", "prioritized"] = "prioritized"
    """How samples pick items: "uniform", or "prioritized" (proportional to priority**alpha)."""

    alpha: float = 0.6
    """Priority exponent of the prioritized selector, in [0, 1] (0 is uniform)."""

    beta: float = 0.4
    """Importance-sampling exponent used when a sample request does not name one."""

    samples_per_insert: float | None = None
    """Target ratio of sampled to inserted items enforced per shard (Reverb-style); null: none."""

    min_size: int = 1
    """Items that must have been inserted before the first sample is allowed."""

    error_buffer: float | None = None
    """Slack around samples_per_insert, in items; null: max(1024, 2*max(1,spi), 0.1*spi*min_size)."""

    limit_samples: bool = True
    """Samples wait for samples_per_insert too (Reverb's limiter); false: only inserts wait, for
    shards whose samplers keep the ratio over all shards themselves (`qfleet train` sets it), so a
    shard with few writers never blocks the learner's draws."""

    checkpoint_dir: str | None = None
    """Folder for checkpoints (restored at start, written on request, periodically and on SIGTERM)."""

    checkpoint_every_s: float | None = None
    """Seconds between periodic checkpoints; null: only on request and at shutdown."""

    host: str = "127.0.0.1"
    """Address the gRPC server and /metrics bind to."""

    port: int = 0
    """gRPC port; 0 picks a free one."""

    metrics_port: int | None = None
    """Port of the Prometheus /metrics endpoint; 0 picks a free one; null: no endpoint."""

    shard_id: int = 0
    """This shard's id (0..1023), encoded into every key it hands out."""

    max_message_mb: int = 512
    """Largest gRPC message accepted or sent, in MiB (an Atari batch of 256 is about 15 MiB)."""

    max_workers: int = 64
    """gRPC handler threads: one per concurrent stream or blocked call."""

    max_concurrent_samples: int = 8
    """Sample calls served at once (each may wait for the limiter); more get RESOURCE_EXHAUSTED."""

    max_priority_streams: int = 2
    """UpdatePrioritiesStream calls served at once (one per learner client): their own threads, so
    Insert streams never starve them nor they Inserts; more are refused as busy (the client retries)."""

    max_concurrent_rpcs: int = 256
    """RPCs in progress or queued (streams included); more are refused with RESOURCE_EXHAUSTED."""

    max_sample_items: int = 1 << 20
    """Largest batch_size x num_batches of one Sample; more is refused with INVALID_ARGUMENT."""

    max_priority_updates: int = 1 << 20
    """Most keys one UpdatePriorities call may carry (a learner sends one Sample's keys, at most
    max_sample_items); more is refused with INVALID_ARGUMENT before the table lock."""

    max_sample_wait_s: float = 30.0
    """Longest a Sample waits for the rate limiter server-side; ReplayClient re-asks if it may wait."""

    insert_idle_s: float = 300.0
    """An Insert stream that sends nothing for this long is cancelled (the client reopens on demand)."""

    insert_stream_max_age_s: float = 3600.0
    """An Insert stream older than this is ended after its current batch (the client reopens it)."""

    max_tracked_writers: int = 65_536
    """Writers whose last batch sequence is kept for de-duplication (least recently seen dropped)."""

    seed: int | None = None
    """Seed of the sampling RNG; null: from OS entropy."""

    redis_url: str | None = None
    """Redis URL of the run's shard registry, e.g. redis://127.0.0.1:6379/0; null: don't register."""

    run: str = "default"
    """Run name: the registry namespace that the run's shards and clients share."""

    heartbeat_s: float = 1.0
    """Seconds between registry heartbeats (which also re-register after a Redis restart)."""

    registry_ttl_s: float = 5.0
    """A shard whose last heartbeat is older than this is taken as gone by clients."""

    mix: dict[str, float] | None = None
    """Fractions of each learner batch by source in a run with an offline dataset (`offline:`),
    {offline: F, online: 1 - F}; null: RLPD's {offline: 0.5, online: 0.5} (online-only runs: null)."""

    @property
    def max_insert_streams(self) -> int:
        """Insert streams served at once: the threads left after Samples, priority streams and
        the reserve."""
        return self.max_workers - self.max_concurrent_samples - self.max_priority_streams - RESERVED_THREADS

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

        if self.capacity < 1:
            bad("capacity", "must be >= 1")
        if self.selector not in ("uniform", "prioritized"):
            bad("selector", "must be 'uniform' or 'prioritized'")
        if not 0.0 <= self.alpha <= 1.0:
            bad("alpha", "must be in [0, 1]")
        if self.beta < 0.0:
            bad("beta", "must be >= 0")
        if self.samples_per_insert is not None and not self.samples_per_insert > 0:
            bad("samples_per_insert", "must be > 0, or null for no ratio")
        if self.min_size < 1:
            bad("min_size", "must be >= 1")
        if self.min_size > self.capacity:
            bad("min_size", f"exceeds capacity={self.capacity}: sampling could never start")
        if self.mix is not None:
            try:
                validate_fractions(self.mix)
            except ValueError as exc:
                raise ValueError(f"mix={self.mix!r}: {exc}") from None
        # Raises RateLimiterConfigError (a ValueError) for a window that could block forever.
        RateLimiter(self.min_size, self.samples_per_insert, self.error_buffer)
        if self.checkpoint_every_s is not None and not self.checkpoint_every_s > 0:
            bad("checkpoint_every_s", "must be > 0, or null")
        if self.checkpoint_every_s is not None and self.checkpoint_dir is None:
            bad("checkpoint_every_s", "needs checkpoint_dir")
        if not 0 <= self.port <= 65535:
            bad("port", "must be in [0, 65535]")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            bad("metrics_port", "must be in [0, 65535], or null")
        if not 0 <= self.shard_id < 1024:
            bad("shard_id", "must be in [0, 1023]")
        if not 1 <= self.max_message_mb <= 2047:
            bad("max_message_mb", "must be in [1, 2047]")
        if self.max_concurrent_samples < 1:
            bad("max_concurrent_samples", "must be >= 1")
        if self.max_priority_streams < 1:
            bad("max_priority_streams", "must be >= 1")
        if self.max_workers < self.max_concurrent_samples + self.max_priority_streams + RESERVED_THREADS + 1:
            bad(
                "max_workers",
                f"must be >= max_concurrent_samples + max_priority_streams + {RESERVED_THREADS + 1} "
                "(threads for Info and one Insert stream)",
            )
        if self.max_concurrent_rpcs < self.max_workers:
            bad("max_concurrent_rpcs", f"must be >= max_workers={self.max_workers}")
        if self.max_sample_items < 1:
            bad("max_sample_items", "must be >= 1")
        if self.max_priority_updates < 1:
            bad("max_priority_updates", "must be >= 1")
        for field in ("max_sample_wait_s", "insert_idle_s", "insert_stream_max_age_s"):
            if not getattr(self, field) > 0:
                bad(field, "must be > 0")
        if self.max_tracked_writers < 1:
            bad("max_tracked_writers", "must be >= 1")
        if not self.run or ":" in self.run:
            bad("run", "must be a non-empty name without ':'")
        if not self.heartbeat_s > 0:
            bad("heartbeat_s", "must be > 0")
        if not self.registry_ttl_s > 2 * self.heartbeat_s:
            bad("registry_ttl_s", f"must exceed 2 * heartbeat_s = {2 * self.heartbeat_s}")


@dataclass(frozen=True)
class ShardedReplayConfig:
    """Settings of a `ShardedReplay`: where its shards are, how it writes, samples and fails over.

    Give exactly one of `redis_url` (shards are discovered) and `addresses` (shards are named).
    """

    redis_url: str | None = None
    """The run's shard registry; shards are discovered and followed from there."""

    run: str = "default"
    """The run name (registry namespace)."""

    addresses: Sequence[str] | None = None
    """Instead of a registry, a fixed list of shard addresses ("host:port")."""

    writer_id: str | None = None
    """Routes this client's inserts (stable hash); None: each instance picks a random one."""

    writer_index: int | None = None
    """Routes this client's inserts by number instead: writer i goes to the i % n-th of the n known
    shards (by id), the next live one while that one is down, so writers 0..n-1 cover every shard
    (an actor passes its actor id). None: the rendezvous hash of writer_id, which can leave a
    shard without writers."""

    samples_per_insert: float | None = None
    """Global ratio of sampled to inserted items, enforced when sampling; None: no ratio."""

    min_size: int = 1
    """Total inserts (all shards) needed before the first sample."""

    error_buffer: float | None = None
    """Slack of the global ratio, in items; None: as for a shard's limiter."""

    beta: float = 0.4
    """Default importance-sampling exponent."""

    discovery_s: float = 1.0
    """Seconds between registry reads (joins and leaves are seen within this)."""

    failover_after_s: float = 0.5
    """How long a shard may stay unreachable before writers and samplers move on without it."""

    seed: int | None = None
    """Seeds the per-batch allocation of items to shards."""

    max_in_flight: int = 32
    """Unacknowledged insert batches per shard before `insert` blocks (bounds a writer's lead)."""

    insert_wait_s: float = 0.0
    """While no shard is live, inserts wait this long for one (re-sending what is unacknowledged)."""

    credentials: ReplayCredentials | None = None
    """The run's replay token and certificate (TLS + token on every call); None: plaintext shards.
    Its repr shows neither the token nor the certificate."""

    priorities: PriorityStreamConfig = PriorityStreamConfig()
    """How `send_priorities` streams and coalesces updates to each shard."""

    same_host_feed: str = "off"
    """"auto": samples from a shard on this host arrive through a shared-memory region this
    process owns, not the gRPC response (replay/same_host.py); "off": always in the response."""

    def __post_init__(self) -> None:
        if self.same_host_feed not in ("auto", "off"):
            raise ValueError(f"same_host_feed={self.same_host_feed!r}: expected 'auto' or 'off'")
        if (self.redis_url is None) == (self.addresses is None):
            raise ValueError("give either redis_url (discover shards) or addresses (fixed shards), not both")
        if self.addresses is not None:
            object.__setattr__(self, "addresses", tuple(self.addresses))
        if self.credentials is not None and self.credentials.key_pem is not None:
            object.__setattr__(self, "credentials", self.credentials.for_clients())  # clients never hold the key
        if self.insert_wait_s < 0:
            raise ValueError(f"insert_wait_s={self.insert_wait_s}: must be >= 0")
        if self.writer_index is not None and self.writer_index < 0:
            raise ValueError(f"writer_index={self.writer_index}: must be >= 0, or None")
