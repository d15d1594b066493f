"""qfleet learner: networks, losses, agents, the training loop, weight publishing and checkpoints.

Public surface:
    LearnerConfig, resolve_device, ActionSpace (importing them does not import torch);
    Learner, LearnerSummary, make_replay, sample_error_buffer (the loop);
    make_agent, DiscreteQAgent, SACAgent, UpdateResult (agents);
    WeightStore, WeightStoreError, decode_weights (the Redis parameter store);
    LearnerMetrics; LearnerStatus, learner_status_key (its status hash in Redis); Policy (what actors and evaluation
    act with); build_q_network, TanhGaussianActor.

Everything but the configuration is imported on first use, so commands that only read configs
(`qfleet --help`, `qfleet config`, `qfleet replay serve`) start without loading torch.
"""

import importlib

from learner.config import LearnerConfig, resolve_device
from learner.spaces import ActionSpace

_LAZY = {
    "DiscreteQAgent": "learner.agents",
    "SACAgent": "learner.agents",
    "UpdateResult": "learner.agents",
    "make_agent": "learner.agents",
    "Learner": "learner.loop",
    "LearnerSummary": "learner.loop",
    "make_replay": "learner.loop",
    "sample_error_buffer": "learner.loop",
    "LearnerMetrics": "learner.metrics",
    "LearnerStatus": "learner.status",
    "learner_status_key": "learner.status",
    "TanhGaussianActor": "learner.networks",
    "build_q_network": "learner.networks",
    "Policy": "learner.policy",
    "WeightStore": "learner.weights",
    "WeightStoreError": "learner.weights",
    "decode_weights": "learner.weights",
}

__all__ = ["ActionSpace", "LearnerConfig", "resolve_device", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'learner' has no attribute {name!r}")
