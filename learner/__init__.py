"""qfleet learner: networks, losses, agents, the training loop, weight publishing and checkpoints.

Public surface:
    LearnerConfig and its groups (ArchitectureConfig, OptimizerConfig, TargetConfig, DQNConfig,
    DistributionalConfig, SACConfig, IQLConfig, FilteredBCConfig, ResetConfig, PrefetchConfig,
    WeightsConfig), WEIGHTS_TRANSPORTS (the weights' transport names), resolve_device, ActionSpace, ActionLayout, ScreenGrid,
    parse_number, MalformedValues, LearnerError, WeightStoreError, MalformedWeightsError, MissingColumnError, MalformedColumnError,
    CheckpointLossError, CheckpointShapeError, WeightsHostError, HostAheadError, SupersededReadError, and the value support's arithmetic (implied_returns,
    auto_support, contains, discounted_horizon, SUPPORT_MARGIN, CLAMPED_WARNING_FRACTION) (importing
    these does not import torch);
    Learner, LearnerSummary, LearnerReached, make_replay (the loop), sample_error_buffer (its window's
    slack; torch-free); PhaseMark,
    OFFLINE_PHASE, ONLINE_PHASE (the offline/online phase a checkpoint was written in);
    find_checkpoint, has_checkpoints, load_latest_checkpoint (checkpoints);
    Agent, UpdateResult (the seam), make_agent, AGENTS, DiscreteQAgent, SACAgent,
    IQLAgent, FilteredBCAgent (agents); adam (the agents' Adam: torch's fused kernel); ActingHead, acting_head, ACTING_HEADS, PolicyLogits, sample_actions (how
    actors act with what a discrete agent publishes);
    QLoss, Q_LOSSES, make_q_loss (the discrete losses); WeightStore (the parameter store: announced
    in Redis, carried by Redis or Ray's object store), announced_version (the version it announces, read
    without torch), SharedWeights (the weights it fetches), WEIGHTS_MANIFEST_FORMAT (its manifest's layout), encode_weights, decode_weights, header_digest,
    MAX_HEADER_BYTES, split_chunks, join_chunks (its payload), WeightsHost, weights_host_name (the object store's Ray actor, a new
    name per host); LearnerMetrics; LearnerStatus, learner_status_key
    (its status hash in Redis); Policy (what actors and evaluation act with); build_q_network,
    TanhGaussianActor; ActionEmbeddingQ, ActionEmbeddingIQLCritic, SpatialQ, tap_corners, FactoredPolicy, action_descriptors
    (Digi-Q's heads for UI action spaces: Q(s, a) with the action as an input, the factored policy); FrozenEncoder, SmallEncoder, load_encoder, load_small_encoder,
    save_small_encoder, feature_statistics, load_transformers_encoder, instruction_embedding, ENCODER_LOADERS (frozen
    image encoders, docs/digiq.md); ActionabilityConfig, EncoderError (no torch),
    train_actionability, screen_changed, ActionabilityModel, ActionabilityResult (phase 1).

Everything else is imported on first use, so commands that only read configs (`qfleet --help`,
`qfleet config`, `qfleet replay serve`) start without loading torch.
"""

import importlib

from learner.config import (
    WEIGHTS_TRANSPORTS,
    ActionabilityConfig,
    ArchitectureConfig,
    DistributionalConfig,
    DQNConfig,
    FilteredBCConfig,
    IQLConfig,
    LearnerConfig,
    OptimizerConfig,
    PrefetchConfig,
    ResetConfig,
    SACConfig,
    TargetConfig,
    WeightsConfig,
    resolve_device,
)
from learner.errors import (
    CheckpointLossError,
    CheckpointShapeError,
    CheckpointSupportError,
    EncoderError,
    HostAheadError,
    LearnerError,
    MalformedColumnError,
    MalformedWeightsError,
    MissingColumnError,
    SupersededReadError,
    WeightsHostError,
    WeightStoreError,
)
from learner.redis_values import MalformedValues, parse_number
from learner.spaces import ActionLayout, ActionSpace, ScreenGrid
from learner.value_support import (
    CLAMPED_WARNING_FRACTION,
    SUPPORT_MARGIN,
    auto_support,
    contains,
    discounted_horizon,
    implied_returns,
)

_RENAMED = {
    "METRIC_SERIES": "SERIES",
    "load_latest_checkpoint": "load_latest",
    "find_checkpoint": "find",
    "weights_host_name": "host_name",
    "WEIGHTS_MANIFEST_FORMAT": "MANIFEST_FORMAT",
}
"""Names exported under another name than their module's."""

_LAZY = {
    "Agent": "learner.agent",
    "UpdateResult": "learner.agent",
    "AGENTS": "learner.agents",
    "DiscreteQAgent": "learner.agents",
    "SACAgent": "learner.agents",
    "make_agent": "learner.agents",
    "adam": "learner.optimization",
    "scheduled_lr": "learner.lr_schedule",
    "ActingHead": "learner.acting",
    "ACTING_HEADS": "learner.acting",
    "PolicyLogits": "learner.acting",
    "sample_actions": "learner.acting",
    "acting_head": "learner.acting",
    "IQLAgent": "learner.offline_agents",
    "FilteredBCAgent": "learner.offline_agents",
    "Learner": "learner.loop",
    "LearnerSummary": "learner.loop",
    "LearnerReached": "learner.loop",
    "PhaseMark": "learner.phase_mark",
    "OFFLINE_PHASE": "learner.phase_mark",
    "ONLINE_PHASE": "learner.phase_mark",
    "make_replay": "learner.loop",
    "sample_error_buffer": "learner.sample_window",
    "LearnerMetrics": "learner.metrics",
    "METRIC_SERIES": "learner.metrics",
    "load_latest_checkpoint": "learner.checkpoint",
    "find_checkpoint": "learner.checkpoint",
    "has_checkpoints": "learner.checkpoint",
    "LearnerStatus": "learner.status",
    "learner_status_key": "learner.status",
    "TanhGaussianActor": "learner.networks",
    "build_q_network": "learner.networks",
    "Policy": "learner.policy",
    "QLoss": "learner.q_losses",
    "Q_LOSSES": "learner.q_losses",
    "make_q_loss": "learner.q_losses",
    "WeightStore": "learner.weights",
    "announced_version": "learner.weights_version",
    "SharedWeights": "learner.shared_weights",
    "WEIGHTS_MANIFEST_FORMAT": "learner.weights",
    "MAX_HEADER_BYTES": "learner.weights_codec",
    "encode_weights": "learner.weights_codec",
    "decode_weights": "learner.weights_codec",
    "header_digest": "learner.weights_codec",
    "split_chunks": "learner.weights_codec",
    "join_chunks": "learner.weights_codec",
    "WeightsHost": "learner.weights_host",
    "ActionEmbeddingQ": "learner.action_heads",
    "ActionEmbeddingIQLCritic": "learner.action_heads",
    "SpatialQ": "learner.action_heads",
    "tap_corners": "learner.action_heads",
    "FactoredPolicy": "learner.action_heads",
    "action_descriptors": "learner.action_heads",
    "FrozenEncoder": "learner.encoders",
    "SmallEncoder": "learner.encoders",
    "ENCODER_LOADERS": "learner.encoders",
    "load_encoder": "learner.encoders",
    "load_small_encoder": "learner.encoders",
    "save_small_encoder": "learner.encoders",
    "feature_statistics": "learner.encoders",
    "instruction_embedding": "learner.encoders",
    "load_transformers_encoder": "learner.hf_encoder",
    "ActionabilityModel": "learner.actionability",
    "ActionabilityResult": "learner.actionability",
    "screen_changed": "learner.actionability",
    "train_actionability": "learner.actionability",
    "weights_host_name": "learner.weights_host",
}

__all__ = [
    "ActionLayout",
    "CLAMPED_WARNING_FRACTION",
    "SUPPORT_MARGIN",
    "auto_support",
    "contains",
    "discounted_horizon",
    "implied_returns",
    "ActionSpace",
    "ScreenGrid",
    "ActionabilityConfig",
    "EncoderError",
    "ArchitectureConfig",
    "CheckpointLossError",
    "CheckpointShapeError",
    "CheckpointSupportError",
    "DQNConfig",
    "DistributionalConfig",
    "FilteredBCConfig",
    "IQLConfig",
    "LearnerConfig",
    "LearnerError",
    "MalformedColumnError",
    "MalformedValues",
    "MalformedWeightsError",
    "MissingColumnError",
    "OptimizerConfig",
    "PrefetchConfig",
    "ResetConfig",
    "SACConfig",
    "TargetConfig",
    "WeightStoreError",
    "WeightsConfig",
    "WeightsHostError",
    "SupersededReadError",
    "HostAheadError",
    "WEIGHTS_TRANSPORTS",
    "parse_number",
    "resolve_device",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'learner' has no attribute {name!r}")
