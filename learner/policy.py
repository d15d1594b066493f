"""`Policy`: the network actors and evaluation act with, rebuilt from the learner's config.

The learner publishes `agent.policy_state()` (the online Q network, or its Polyak average with
`learner.policy_average_tau`; the offline losses' policy
network pi, or SAC's actor); a Policy builds the same architecture, loads those weights and turns
observations into actions: epsilon-greedy on expected Q values for discrete actions (C51 and
HL-Gauss take the expectation over their support) or on pi's logits ("iql", "filtered_bc": greedy
is pi's most likely action; `policy_acting: sample` draws from pi), a sample from the
tanh-Gaussian for continuous ones.
"""

from __future__ import annotations

import numpy as np
import torch

from learner.acting import PolicyLogits, acting_head, sample_actions
from learner.action_heads import build_policy_network
from learner.config import LearnerConfig
from learner.networks import TanhGaussianActor, build_q_network
from learner.shared_weights import SharedWeights
from learner.spaces import ActionSpace


class Policy:
    """Acts with published weights (CPU, no gradients).

    Args:
        config: the learner's config (architecture and loss decide the network and its output).
        obs_shape: one observation's shape.
        space: the env's action space.
        seed: seeds the initial (random) weights, used until the first `load`.
    """

    def __init__(self, config: LearnerConfig, obs_shape: tuple[int, ...], space: ActionSpace, seed: int = 0):
        torch.manual_seed(seed)
        self.space = space
        self.version = 0
        architecture = config.architecture
        self.head = None
        self.sample = config.policy_acting == "sample"
        if space.discrete:
            self.head = acting_head(config)
            if isinstance(self.head, PolicyLogits):
                self.network = build_policy_network(obs_shape, space, architecture)
            else:
                self.network = build_q_network(obs_shape, space.num_actions, self.head.bins, architecture)
        else:
            low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
            obs_dim, action_dim = int(np.prod(obs_shape)), low.shape[0]
            self.network = TanhGaussianActor(
                obs_dim, action_dim, architecture.hidden_size, architecture.num_layers, low, high
            )
        self.network.eval()

    def load(self, state: SharedWeights | dict[str, torch.Tensor], version: int) -> None:
        """Takes weights: fetched ones (`SharedWeights`, copied in from the shared payload, never
        written to) or a state dict (raises if they do not fit this architecture)."""
        if isinstance(state, SharedWeights):
            state.load_into(self.network)
        else:
            self.network.load_state_dict(state)
        self.version = version

    @torch.inference_mode()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """[B, A] the scores greedy acting maximises (discrete actions only): expected action values,
        or pi's logits for the offline policy losses."""
        return self.head.values(self.network(torch.from_numpy(np.asarray(obs)))).numpy()

    @torch.inference_mode()
    def act(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        """Actions for a batch of observations.

        Discrete: greedy in Q (or, with `learner.policy_acting: sample`, a draw from pi), replaced by
        a uniform random action with probability `epsilon` per observation. Continuous: a sample of
        the policy, or its mean when `epsilon` is 0 (greedy evaluation).
        """
        if not self.space.discrete:
            action, _ = self.network(torch.from_numpy(np.asarray(obs)).float(), deterministic=epsilon == 0)
            return action.numpy()
        scores = self.q_values(obs)
        actions = sample_actions(scores, rng) if self.sample else scores.argmax(axis=1)
        if epsilon > 0:
            explore = rng.random(len(actions)) < epsilon
            count = np.count_nonzero(explore)
            if count:
                actions[explore] = rng.integers(0, self.space.num_actions, count)
        return actions
