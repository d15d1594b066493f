"""The slack of the learner's samples-per-insert window: plain arithmetic on its config, kept
apart from the loop so that a driver planning the shards' rate limiters need not import torch."""

from __future__ import annotations

from learner.config import LearnerConfig


def sample_error_buffer(config: LearnerConfig) -> float:
    """Slack of the learner's global samples-per-insert window, in sampled items: room for the
    prefetcher's requests (prefetch_batches_per_request batches each) from a few threads."""
    return max(4.0 * config.batch_size * config.prefetch.batches_per_request, 1024.0)
