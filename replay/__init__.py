"""qfleet replay: gRPC replay shards, their tables, selectors, rate limiter and clients.

Public surface:
    Spec, ReplayConfig, ReplayServer, ReplayClient, Sample, ReplayInfo (one shard);
    ShardedReplay, ShardedReplayConfig, ShardedInfo, ShardRegistry, live_shard_key,
    rendezvous_score, choose_shard, indexed_order (many shards as one); ReplaySource, ReplayStats
    (what a learner reads); PriorityStreamConfig, PriorityCounts (streamed, coalesced priority
    updates and what became of them); Prefetcher, TorchBatch, to_torch
    (batches kept ready for a learner); MixedReplay, validate_fractions, split_counts (fixed-fraction mixes);
    FeedRegion, RegionWriter, FeedCounts, host_identity, FEED_MODES (the same-host feed: samples
    through the learner's shared memory instead of the response, replay/same_host.py);
    keep_freed_memory (malloc settings for processes that move large batches); MAX_PRIORITY (the
    cap on stored priorities); ReplayCredentials, generate_credentials (a run's token and TLS
    certificate; TOKEN_ENV, CERT_ENV, KEY_ENV name the environment variables that hold them);
    connect_redis, redact_url (the run's Redis, its password kept out of sight);
    BoundedHTTPServer, HTTPLimits, start_metrics_server (HTTP with bounded threads and timeouts,
    for /metrics and discovery); private_dir, create_private_file (owner-only checkpoints and
    run folders); pdeathsig_setpriv (a setpriv that gives children a parent-death signal, if
    this machine has one that works); and the errors.
"""

from replay import wire
from replay.accounting import Reconciled, ShardAccounting, reconcile, writer_tag
from replay.allocator import keep_freed_memory
from replay.client import CheckpointResult, PriorityUpdateResult, ReplayClient, ReplayInfo, Sample
from replay.codec import grpc_options
from replay.config import ReplayConfig, ShardedReplayConfig
from replay.credentials import CERT_ENV, KEY_ENV, TOKEN_ENV, ReplayCredentials, generate_credentials
from replay.errors import (
    CheckpointError,
    DeadlineExceededError,
    InvalidBatchError,
    LedgerError,
    LedgerInUseError,
    RateLimiterConfigError,
    RegionRefusedError,
    ReplayAuthenticationError,
    ReplayError,
    ReplayTLSError,
    ReplayUnavailableError,
    RequestCancelledError,
    SpecMismatchError,
    TableClosedError,
)
from replay.http_server import BoundedHTTPServer, HTTPLimits, start_metrics_server
from replay.insert_ledger import Receipt
from replay.limits import MAX_PRIORITY
from replay.metrics import SERIES as METRIC_SERIES
from replay.metrics import ShardedCollector
from replay.mixing import MixedReplay, split_counts, validate_fractions
from replay.parent_death import pdeathsig_setpriv
from replay.prefetch import Prefetcher, TorchBatch, to_torch
from replay.priority_stream import PriorityCounts, PriorityStreamConfig
from replay.private_files import create_private_file, private_dir
from replay.rate_limiter import RateLimiter
from replay.redis_connection import connect_redis, redact_url
from replay.registry import ShardRecord, ShardRegistry, live_shard_key
from replay.routing import choose_shard, indexed_order, rendezvous_score
from replay.same_host import FEED_MODES, FeedCounts, FeedRegion, RegionWriter, host_identity
from replay.selectors import make_selector
from replay.server import ReplayServer, add_servicer, importance_weights, insert_response
from replay.sharded import ShardedInfo, ShardedReplay
from replay.source import ReplaySource, ReplayStats
from replay.spec import Spec
from replay.table import Table

__all__ = [
    "CERT_ENV",
    "Receipt",
    "Reconciled",
    "ShardAccounting",
    "reconcile",
    "writer_tag",
    "KEY_ENV",
    "TOKEN_ENV",
    "MAX_PRIORITY",
    "FEED_MODES",
    "FeedCounts",
    "FeedRegion",
    "RegionWriter",
    "host_identity",
    "METRIC_SERIES",
    "RateLimiter",
    "Table",
    "BoundedHTTPServer",
    "HTTPLimits",
    "start_metrics_server",
    "create_private_file",
    "pdeathsig_setpriv",
    "private_dir",
    "add_servicer",
    "grpc_options",
    "importance_weights",
    "insert_response",
    "make_selector",
    "wire",
    "CheckpointError",
    "CheckpointResult",
    "DeadlineExceededError",
    "InvalidBatchError",
    "LedgerError",
    "LedgerInUseError",
    "MixedReplay",
    "Prefetcher",
    "PriorityUpdateResult",
    "PriorityCounts",
    "PriorityStreamConfig",
    "RateLimiterConfigError",
    "RegionRefusedError",
    "ReplayClient",
    "ReplayAuthenticationError",
    "ReplayConfig",
    "ReplayCredentials",
    "ReplayError",
    "ReplayInfo",
    "ReplayServer",
    "ReplayTLSError",
    "ReplaySource",
    "ReplayStats",
    "ReplayUnavailableError",
    "RequestCancelledError",
    "Sample",
    "ShardRecord",
    "ShardedCollector",
    "ShardRegistry",
    "ShardedInfo",
    "ShardedReplay",
    "ShardedReplayConfig",
    "Spec",
    "SpecMismatchError",
    "TableClosedError",
    "TorchBatch",
    "to_torch",
    "choose_shard",
    "indexed_order",
    "connect_redis",
    "generate_credentials",
    "keep_freed_memory",
    "live_shard_key",
    "redact_url",
    "rendezvous_score",
    "split_counts",
    "validate_fractions",
]
