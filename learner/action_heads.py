"""Heads that see an action's structure (Digi-Q, Bai et al. 2025): a Q-function that takes the action
as an input, and a policy factored into the action's kind and its detail.

- `ActionEmbeddingQ`: Q(s, a) = head(relu(W_h relu(torso(s) + W_a [e_a, d_a]))), where e_a is a
  learned embedding of the flat action index and d_a the action's descriptor (`action_descriptors`:
  its kind one-hot, a tap's normalised (x, y), its place within its kind; empty without an
  `ActionLayout`). Adding W_a [e_a, d_a] to the state's features is a linear layer over their
  concatenation, so this is the usual MLP over (features, action embedding). `forward` computes
  Q for every action in one pass, [B, A], by broadcasting the B states against the A action
  embeddings (for a caller that wants every action's value); `q_at` computes only the given
  actions, and is what the IQL update uses: Q at the data action and at Best-of-N's N candidates
  (via `twin_q_at`), B x (1 + N) rows rather than B x A.
- `ActionEmbeddingIQLCritic`: IQL's twin Qs of that kind and its V(s) (an MLP on the features).
- `FactoredPolicy`: pi(a|s) = p(kind(a)|s) p(a|kind(a), s): a softmax over the kinds (tap, swipe,
  type, key, complete) and, within each kind, a softmax over its actions (tap cells, directions,
  text candidates, keys). Its output is the flat log pi(a|s) [B, A], a proper distribution over the
  flat space, so the offline losses' log-likelihood, Best-of-N's sampling and acting use it
  unchanged (log_softmax of log-probabilities is the identity).

`build_policy_network` and `build_iql_critic` pick by `learner.policy_head` / `learner.critic`.
"""

from __future__ import annotations

import torch
from torch import nn

from learner.config import ArchitectureConfig
from learner.networks import IQLCritic, build_q_network, build_torso
from learner.spaces import ActionLayout, ActionSpace


def action_descriptors(layout: ActionLayout | None, num_actions: int) -> torch.Tensor:
    """[A, K + 3] per action: its kind one-hot (K kinds), a tap's normalised x and y (0 for the other
    kinds), and its place within its kind, (rank + 0.5) / count (a text slot, key, direction or cell
    told apart). [A, 0] without a layout."""
    if layout is None:
        return torch.zeros(num_actions, 0)
    kind_of = torch.tensor(layout.kind_of)
    one_hot = nn.functional.one_hot(kind_of, len(layout.kinds)).float()
    points = torch.tensor(layout.points, dtype=torch.float32)
    place = torch.zeros(num_actions)
    for kind in range(len(layout.kinds)):
        members = (kind_of == kind).nonzero().squeeze(1)
        place[members] = (torch.arange(len(members), dtype=torch.float32) + 0.5) / len(members)
    return torch.cat([one_hot, points, place[:, None]], dim=1)


class ActionEmbeddingQ(nn.Module):
    """Q(s, a) with the action as an input (see the module docstring).

    Args:
        obs_shape: one observation's shape (encoder features [D] in Digi-Q).
        num_actions: A, the flat actions.
        layout: the space's structure, or None (the learned embedding alone).
        architecture: torso, `hidden_size` and `action_embedding_dim`.
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        num_actions: int,
        layout: ActionLayout | None,
        architecture: ArchitectureConfig,
    ):
        super().__init__()
        self.torso = build_torso(obs_shape, architecture)
        self.embedding = nn.Embedding(num_actions, architecture.action_embedding_dim)
        # Derived from the layout, not learned: kept out of the state dict (and the published weights).
        self.register_buffer("descriptors", action_descriptors(layout, num_actions), persistent=False)
        in_dim = architecture.action_embedding_dim + self.descriptors.shape[1]
        self.action_encoder = nn.Linear(in_dim, self.torso.out_dim)
        self.hidden = nn.Linear(self.torso.out_dim, architecture.hidden_size)
        self.head = nn.Linear(architecture.hidden_size, 1)

    def _action_features(self, action: torch.Tensor) -> torch.Tensor:
        return self.action_encoder(torch.cat([self.embedding(action), self.descriptors[action]], dim=-1))

    def _q(self, state: torch.Tensor, action_features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(torch.relu(state + action_features)))).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, A]: Q of every action, in one pass ([B, 1, D] states + [1, A, D] actions)."""
        every_action = torch.arange(self.embedding.num_embeddings, device=obs.device)
        return self._q(self.torso(obs)[:, None, :], self._action_features(every_action)[None, :, :])

    def q_at(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """[B]: Q(s_i, a_i) of one action per state (`action` [B] flat indices), or [B, N]: Q of N
        actions per state (`action` [B, N], e.g. Best-of-N's candidates). Costs B (or B x N)
        action rows rather than B x A."""
        state = self.torso(obs)
        if action.dim() == 2:
            state = state[:, None, :]
        return self._q(state, self._action_features(action.long()))

    def head_modules(self) -> list[nn.Module]:
        return [self.head]


class ActionEmbeddingIQLCritic(nn.Module):
    """IQL's critics with action-embedding Qs: twin `ActionEmbeddingQ` (the target takes their
    minimum) and a state-value network V on the features, each its own torso; the same interface as
    `learner.networks.IQLCritic`."""

    def __init__(self, obs_shape: tuple[int, ...], space: ActionSpace, architecture: ArchitectureConfig):
        super().__init__()
        self.q1 = ActionEmbeddingQ(obs_shape, space.num_actions, space.layout, architecture)
        self.q2 = ActionEmbeddingQ(obs_shape, space.num_actions, space.layout, architecture)
        self.value = build_q_network(obs_shape, 1, 1, architecture)

    def twin_q(self, obs: torch.Tensor) -> torch.Tensor:
        """[2, B, A] both Q networks' values of every action."""
        return torch.stack([self.q1(obs), self.q2(obs)])

    def twin_q_at(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """[2, B] both Qs at one action per state (`action` [B]), or [2, B, N] at N per state
        ([B, N]): only those actions are embedded and scored."""
        return torch.stack([self.q1.q_at(obs, action), self.q2.q_at(obs, action)])

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        """[B] state values."""
        return self.value(obs).squeeze(-1)

    def head_modules(self) -> list[nn.Module]:
        return [*self.q1.head_modules(), *self.q2.head_modules(), *self.value.head_modules()]


class FactoredPolicy(nn.Module):
    """pi(a|s) = p(kind(a)|s) * p(a|kind(a), s) over a UI action space (see the module docstring).

    `forward` returns the flat log pi(a|s) [B, A]; `kind_log_probs` the first factor [B, K].
    """

    def __init__(self, obs_shape: tuple[int, ...], layout: ActionLayout, architecture: ArchitectureConfig):
        super().__init__()
        self.torso = build_torso(obs_shape, architecture)
        self.kind_head = nn.Linear(self.torso.out_dim, len(layout.kinds))
        self.head = nn.Linear(self.torso.out_dim, layout.num_actions)  # the detail logits, per action
        kind_of = torch.tensor(layout.kind_of)
        self.register_buffer("kind_of", kind_of, persistent=False)
        members = kind_of[None, :] == torch.arange(len(layout.kinds))[:, None]  # [K, A]
        self.register_buffer("members", members, persistent=False)

    def kind_log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, K] log p(kind|s)."""
        return torch.log_softmax(self.kind_head(self.torso(obs)), dim=-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, A] log pi(a|s) = log p(kind(a)|s) + log p(a|kind(a), s)."""
        features = self.torso(obs)
        kind = torch.log_softmax(self.kind_head(features), dim=-1)  # [B, K]
        detail = self.head(features)  # [B, A]
        within = detail[:, None, :].masked_fill(~self.members, float("-inf"))  # [B, K, A]
        normaliser = torch.logsumexp(within, dim=-1)  # [B, K]: log sum of exp(detail) over each kind
        return kind[:, self.kind_of] + detail - normaliser[:, self.kind_of]

    def head_modules(self) -> list[nn.Module]:
        return [self.kind_head, self.head]


def build_policy_network(obs_shape: tuple[int, ...], space: ActionSpace, architecture: ArchitectureConfig) -> nn.Module:
    """The offline losses' policy pi: [B, A] logits ("flat") or log-probabilities ("factored").

    Raises:
        ValueError: "factored" for an action space without a layout, naming `learner.policy_head`.
    """
    if architecture.policy_head == "flat":
        return build_q_network(obs_shape, space.num_actions, 1, architecture)
    if space.layout is None:
        raise ValueError(
            "learner.policy_head='factored' needs a UI action space (MiniWoB, Android: kinds of action); "
            f"this env's is a plain Discrete({space.num_actions})"
        )
    return FactoredPolicy(obs_shape, space.layout, architecture)


def build_iql_critic(obs_shape: tuple[int, ...], space: ActionSpace, architecture: ArchitectureConfig) -> nn.Module:
    """IQL's twin Qs and V: discrete heads ("discrete") or action-embedding Qs ("action_embedding")."""
    if architecture.critic == "discrete":
        return IQLCritic(obs_shape, space.num_actions, architecture)
    return ActionEmbeddingIQLCritic(obs_shape, space, architecture)
