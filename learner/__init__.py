"""qfleet learner: networks, losses, agents, the training loop, weight publishing and checkpoints.

Public surface:
    LearnerConfig, Learner, LearnerSummary, make_replay (the loop);
    ActionSpace, make_agent, DiscreteQAgent, SACAgent, UpdateResult (agents);
    WeightStore, WeightStoreError, decode_weights (the Redis parameter store);
    LearnerMetrics; build_q_network, TanhGaussianActor (networks actors act with).
"""

from learner.agents import ActionSpace, DiscreteQAgent, SACAgent, UpdateResult, make_agent
from learner.config import LearnerConfig, resolve_device
from learner.loop import Learner, LearnerSummary, make_replay
from learner.metrics import LearnerMetrics
from learner.networks import TanhGaussianActor, build_q_network
from learner.weights import WeightStore, WeightStoreError, decode_weights

__all__ = [
    "ActionSpace",
    "DiscreteQAgent",
    "Learner",
    "LearnerConfig",
    "LearnerMetrics",
    "LearnerSummary",
    "SACAgent",
    "TanhGaussianActor",
    "UpdateResult",
    "WeightStore",
    "WeightStoreError",
    "build_q_network",
    "decode_weights",
    "make_agent",
    "make_replay",
    "resolve_device",
]
