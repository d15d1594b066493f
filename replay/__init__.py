"""qfleet replay: gRPC replay shards, their tables, selectors, rate limiter and clients.

Public surface:
    Spec, ReplayConfig, ReplayServer, ReplayClient, Sample, ReplayInfo, and the errors below.
"""

from replay.client import CheckpointResult, PriorityUpdateResult, ReplayClient, ReplayInfo, Sample
from replay.config import ReplayConfig
from replay.errors import (
    CheckpointError,
    DeadlineExceededError,
    InvalidBatchError,
    RateLimiterConfigError,
    ReplayError,
    ReplayUnavailableError,
    SpecMismatchError,
)
from replay.server import ReplayServer
from replay.spec import Spec

__all__ = [
    "CheckpointError",
    "CheckpointResult",
    "DeadlineExceededError",
    "InvalidBatchError",
    "PriorityUpdateResult",
    "RateLimiterConfigError",
    "ReplayClient",
    "ReplayConfig",
    "ReplayError",
    "ReplayInfo",
    "ReplayServer",
    "ReplayUnavailableError",
    "Sample",
    "Spec",
    "SpecMismatchError",
]
