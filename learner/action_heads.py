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
- `SpatialQ` (`learner.critic: spatial`): `ActionEmbeddingQ` plus, for a tap, the screen grid's
  features where it lands: Q(s, a) = head(relu(W_h relu(torso(g) + W_a [e_a, d_a] + W_l l(s, a)))),
  where g is the observation's global features and l(s, a) the grid cells' vectors at the tap's
  point, bilinearly interpolated (on a grid aligned with the tap grid: exactly the tapped cell's
  vector); 0 for the other kinds, which keep the global features and their embedding. The
  action-embedding critic sees the screen only through the pooled vector, which need not say what
  is under a given tap (docs/digiq.md: it ranked the rewarded tap first in 24-78% of states); this
  critic is the closest Digi-Q's "VLM on the screenshot with the action" gets while the features
  stay computed once, in the actors, and stored in replay.
- `ActionEmbeddingIQLCritic`: IQL's twin Qs of either kind and its V(s) (an MLP on the features).
- `FactoredPolicy`: pi(a|s) = p(kind(a)|s) p(a|kind(a), s): a softmax over the kinds (tap, swipe,
  type, key, complete) and, within each kind, a softmax over its actions (tap cells, directions,
  text candidates, keys). Its output is the flat log pi(a|s) [B, A], a proper distribution over the
  flat space, so the offline losses' log-likelihood, Best-of-N's sampling and acting use it
  unchanged (log_softmax of log-probabilities is the identity).

`build_policy_network` and `build_iql_critic` pick by `learner.policy_head` / `learner.critic`.
Where the observations carry a screen grid (`ActionSpace.screen`), the networks built here (the
policy, V, the action-embedding and spatial Qs' torsos) read only the global features before it
(`GlobalTorso`): only the spatial critic's tap lookup reads the grid, so the policy and filtered BC
are what they are without it. (The "discrete" IQL critic and the Q losses' networks read the whole
vector.)
"""

from __future__ import annotations

import torch
from torch import nn

from learner.config import ArchitectureConfig
from learner.networks import IQLCritic, QNetwork, build_torso
from learner.spaces import ActionLayout, ActionSpace, ScreenGrid


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


def tap_corners(layout: ActionLayout | None, screen: ScreenGrid, num_actions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per action, the 4 grid cells ([A, 4] flat row-major indices) and bilinear weights ([A, 4])
    that interpolate the screen grid at its tap point; weights 0 for the other kinds.

    A cell's vector sits at its centre, ((col + 0.5) / cols, (row + 0.5) / rows); points nearer an
    edge than the outer centres take the edge cells (clamped), as torch's `grid_sample` with
    `align_corners=False` and border padding does."""
    corners = torch.zeros(num_actions, 4, dtype=torch.long)
    weights = torch.zeros(num_actions, 4)
    if layout is None or "tap" not in layout.kinds:
        return corners, weights
    tap = layout.kinds.index("tap")
    for action, (kind, (x, y)) in enumerate(zip(layout.kind_of, layout.points, strict=True)):
        if kind != tap:
            continue
        col = min(max(x * screen.cols - 0.5, 0.0), screen.cols - 1.0)
        row = min(max(y * screen.rows - 0.5, 0.0), screen.rows - 1.0)
        col0, row0 = int(col), int(row)
        col1, row1 = min(col0 + 1, screen.cols - 1), min(row0 + 1, screen.rows - 1)
        dx, dy = col - col0, row - row0
        cells = (
            row0 * screen.cols + col0,
            row0 * screen.cols + col1,
            row1 * screen.cols + col0,
            row1 * screen.cols + col1,
        )
        corners[action] = torch.tensor(cells)
        weights[action] = torch.tensor([(1 - dx) * (1 - dy), dx * (1 - dy), (1 - dx) * dy, dx * dy])
    return corners, weights


class GlobalTorso(nn.Module):
    """A torso that reads only the first `offset` values of an observation: its global features,
    not the screen grid after them (`ScreenGrid`). Its output width is the inner torso's `out_dim`."""

    def __init__(self, torso: nn.Module, offset: int):
        super().__init__()
        self.torso, self.offset = torso, offset
        self.out_dim = torso.out_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.torso(obs[..., : self.offset])


def feature_torso(obs_shape: tuple[int, ...], space: ActionSpace, architecture: ArchitectureConfig) -> nn.Module:
    """`build_torso` for the observations, or, when they carry a screen grid, a `GlobalTorso` over
    their global features only."""
    if space.screen is None:
        return build_torso(obs_shape, architecture)
    return GlobalTorso(build_torso((space.screen.offset,), architecture), space.screen.offset)


def feature_q_network(
    obs_shape: tuple[int, ...], space: ActionSpace, outputs: int, architecture: ArchitectureConfig
) -> QNetwork:
    """`build_q_network` (one value per output) on `feature_torso`."""
    return QNetwork(feature_torso(obs_shape, space, architecture), outputs, 1, architecture.dueling)


class ActionEmbeddingQ(nn.Module):
    """Q(s, a) with the action as an input (see the module docstring).

    Args:
        obs_shape: one observation's shape (encoder features [D] in Digi-Q).
        space: the actions (A of them) and their layout, or none (the learned embedding alone);
            with a screen grid, the torso reads the global features only.
        architecture: torso, `hidden_size` and `action_embedding_dim`.
    """

    def __init__(self, obs_shape: tuple[int, ...], space: ActionSpace, architecture: ArchitectureConfig):
        super().__init__()
        num_actions = space.num_actions
        self.torso = feature_torso(obs_shape, space, architecture)
        self.embedding = nn.Embedding(num_actions, architecture.action_embedding_dim)
        # Derived from the layout, not learned: kept out of the state dict (and the published weights).
        self.register_buffer("descriptors", action_descriptors(space.layout, num_actions), persistent=False)
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


class SpatialQ(ActionEmbeddingQ):
    """`ActionEmbeddingQ` plus, for taps, the screen grid's features at the tap's point (see the
    module docstring). Needs a space with a layout and a screen grid.

    Raises:
        ValueError: the space has no screen grid, no layout or no tap actions (the critic would be an
            action-embedding one that costs more).
    """

    def __init__(self, obs_shape: tuple[int, ...], space: ActionSpace, architecture: ArchitectureConfig):
        if space.screen is None:
            raise ValueError("learner.critic='spatial' needs observations with a screen grid (env.features.grid_rows)")
        if space.layout is None or "tap" not in space.layout.kinds:
            raise ValueError(
                "learner.critic='spatial' reads the screen grid where a tap lands: it needs a UI action space "
                f"with tap actions, this one has {'no layout' if space.layout is None else 'no tap kind'}; "
                "use critic 'action_embedding'"
            )
        super().__init__(obs_shape, space, architecture)
        self.screen = space.screen
        corners, weights = tap_corners(space.layout, space.screen, space.num_actions)
        self.register_buffer("corners", corners, persistent=False)
        self.register_buffer("corner_weights", weights, persistent=False)
        self.local_encoder = nn.Linear(space.screen.channels, self.torso.out_dim)

    def local_features(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """[B, N, channels]: the grid's vector at each action's tap point (`action` [B, N]),
        bilinearly interpolated; zeros for actions that are not taps."""
        screen = self.screen
        grid = obs[:, screen.offset : screen.offset + screen.size].reshape(len(obs), screen.rows * screen.cols, -1)
        batch, count = action.shape
        cells = self.corners[action].reshape(batch, count * 4, 1).expand(-1, -1, screen.channels)
        gathered = torch.gather(grid, 1, cells).reshape(batch, count, 4, screen.channels)
        return (gathered * self.corner_weights[action][..., None]).sum(dim=2)

    def _scored(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """[B, N] Q of `action` [B, N]."""
        tapped = self.local_encoder(self.local_features(obs, action))
        is_tap = (self.corner_weights[action].sum(-1, keepdim=True) > 0).to(tapped.dtype)
        return self._q(self.torso(obs)[:, None, :], self._action_features(action) + tapped * is_tap)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, A]: Q of every action (A action rows per state, as `q_at` with every action)."""
        every_action = torch.arange(self.embedding.num_embeddings, device=obs.device)
        return self._scored(obs, every_action[None, :].expand(len(obs), -1))

    def q_at(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """[B] Q of one action per state (`action` [B]) or [B, N] of N per state ([B, N])."""
        action = action.long()
        if action.dim() == 1:
            return self._scored(obs, action[:, None])[:, 0]
        return self._scored(obs, action)


class ActionEmbeddingIQLCritic(nn.Module):
    """IQL's critics with Qs that take the action as an input: twin `ActionEmbeddingQ` or
    `SpatialQ` (`q_class`; the target takes their minimum) and a state-value network V on the
    global features, each its own torso; the same interface as `learner.networks.IQLCritic`."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        space: ActionSpace,
        architecture: ArchitectureConfig,
        q_class: type[ActionEmbeddingQ] = ActionEmbeddingQ,
    ):
        super().__init__()
        self.q1 = q_class(obs_shape, space, architecture)
        self.q2 = q_class(obs_shape, space, architecture)
        self.value = feature_q_network(obs_shape, space, 1, architecture)

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

    `forward` returns the flat log pi(a|s) [B, A]; `kind_log_probs` the first factor [B, K]. With a
    `screen` grid in the observations, it reads the global features before it only.
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        layout: ActionLayout,
        architecture: ArchitectureConfig,
        screen: ScreenGrid | None = None,
    ):
        super().__init__()
        self.torso = feature_torso(
            obs_shape, ActionSpace(layout.num_actions, layout=layout, screen=screen), architecture
        )
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
        return feature_q_network(obs_shape, space, space.num_actions, architecture)
    if space.layout is None:
        raise ValueError(
            "learner.policy_head='factored' needs a UI action space (MiniWoB, Android: kinds of action); "
            f"this env's is a plain Discrete({space.num_actions})"
        )
    return FactoredPolicy(obs_shape, space.layout, architecture, space.screen)


IQL_Q_CLASSES: dict[str, type[ActionEmbeddingQ]] = {"action_embedding": ActionEmbeddingQ, "spatial": SpatialQ}
"""`learner.critic` -> the Q network of `ActionEmbeddingIQLCritic` (the others than "discrete")."""


def build_iql_critic(obs_shape: tuple[int, ...], space: ActionSpace, architecture: ArchitectureConfig) -> nn.Module:
    """IQL's twin Qs and V: discrete heads ("discrete"), action-embedding Qs ("action_embedding") or
    action-embedding Qs that also read the screen grid at a tap ("spatial")."""
    if architecture.critic == "discrete":
        return IQLCritic(obs_shape, space.num_actions, architecture)
    return ActionEmbeddingIQLCritic(obs_shape, space, architecture, IQL_Q_CLASSES[architecture.critic])
