"""Networks: torsos (MLP, Nature CNN), Q heads (plain, dueling, distributional), IQL's twin-Q and
value critics, and SAC's tanh-Gaussian actor and batched critic ensemble.

Every Q network maps observations [B, *obs_shape] to [B, A] values ("dqn") or [B, A, bins]
logits (C51, HL-Gauss). Each network names its last layer(s) `head`, which periodic resets use.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from learner.config import ArchitectureConfig


class MLP(nn.Module):
    """Linear layers with ReLU (and optional LayerNorm after each)."""

    def __init__(self, in_dim: int, hidden_size: int, num_layers: int, layer_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(in_dim if i == 0 else hidden_size, hidden_size))
            if layer_norm:
                layers.append(nn.LayerNorm(hidden_size))
            layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.out_dim = hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1).float())


class NatureCNN(nn.Module):
    """The Nature DQN torso (Mnih et al. 2015) for HxWxC uint8 frames, scaled to [0, 1]."""

    def __init__(self, obs_shape: tuple[int, ...], hidden_size: int = 512):
        super().__init__()
        height, width, channels = obs_shape
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, channels, height, width)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, hidden_size), nn.ReLU())
        self.out_dim = hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x.permute(0, 3, 1, 2).float() / 255.0))


class QNetwork(nn.Module):
    """Torso + Q head: [B, A] values, or [B, A, bins] logits when `bins` > 1."""

    def __init__(self, torso: nn.Module, num_actions: int, bins: int = 1, dueling: bool = False):
        super().__init__()
        self.torso = torso
        self.num_actions, self.bins, self.dueling = num_actions, bins, dueling
        self.head = nn.Linear(torso.out_dim, num_actions * bins)
        self.value = nn.Linear(torso.out_dim, bins) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.torso(obs)
        if self.bins == 1 and self.value is None:
            return self.head(features)  # already [B, A]: no view and squeeze for autograd to track
        out = self.head(features).view(-1, self.num_actions, self.bins)
        if self.value is not None:
            out = self.value(features).view(-1, 1, self.bins) + out - out.mean(dim=1, keepdim=True)
        return out.squeeze(-1) if self.bins == 1 else out

    def head_modules(self) -> list[nn.Module]:
        """The layers a "head" reset re-initialises."""
        return [m for m in (self.head, self.value) if m is not None]


def build_torso(obs_shape: tuple[int, ...], architecture: ArchitectureConfig) -> nn.Module:
    """The torso for an observation shape ("auto": the Nature CNN for HxWxC images of at least
    36x36, its smallest input; an MLP over the flattened observation otherwise, e.g. for vectors,
    encoder features and MinAtar's 10x10 grids). Its output width is `out_dim`."""
    network = architecture.torso
    if network == "auto":
        network = "cnn" if len(obs_shape) == 3 and min(obs_shape[:2]) >= 36 else "mlp"
    if network == "cnn":
        if len(obs_shape) != 3:
            raise ValueError(f"learner.network='cnn' needs HxWxC observations, got shape {obs_shape}")
        return NatureCNN(obs_shape)
    return MLP(math.prod(obs_shape), architecture.hidden_size, architecture.num_layers, architecture.layer_norm)


def build_q_network(
    obs_shape: tuple[int, ...], num_actions: int, bins: int, architecture: ArchitectureConfig
) -> QNetwork:
    """The Q network for an observation shape (torso: `build_torso`)."""
    return QNetwork(build_torso(obs_shape, architecture), num_actions, bins, architecture.dueling)


class IQLCritic(nn.Module):
    """IQL's critics: twin Q networks (the target takes their minimum, as in IQL and TD3) and a
    state-value network V, each its own torso."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, architecture: ArchitectureConfig):
        super().__init__()
        self.q1 = build_q_network(obs_shape, num_actions, 1, architecture)
        self.q2 = build_q_network(obs_shape, num_actions, 1, architecture)
        self.value = build_q_network(obs_shape, 1, 1, architecture)

    def twin_q(self, obs: torch.Tensor) -> torch.Tensor:
        """[2, B, A] both Q networks' values."""
        return torch.stack([self.q1(obs), self.q2(obs)])

    def twin_q_at(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """[2, B] both Qs at one action per state (`action` [B]), or [2, B, N] at N per state ([B, N])."""
        index = action.long() if action.dim() == 2 else action.long()[:, None]
        q = self.twin_q(obs).gather(2, index.expand(2, *index.shape))
        return q if action.dim() == 2 else q.squeeze(2)

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        """[B] state values."""
        return self.value(obs).squeeze(-1)

    def head_modules(self) -> list[nn.Module]:
        return [*self.q1.head_modules(), *self.q2.head_modules(), *self.value.head_modules()]


# -- SAC ---------------------------------------------------------------------------------------------


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: [E, B, in] -> [E, B, out]
    (or [M, B, in] -> [M, B, out] for M chosen `members`)."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over features with a separate affine transform per ensemble member."""

    def __init__(self, members: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        return F.layer_norm(x, x.shape[-1:]) * weight + bias


class EnsembleCritic(nn.Module):
    """E LayerNorm MLP critics Q_e(s, a), all computed in one batched pass (a batched matmul per
    layer, no loop over members): returns [E, B], or [M, B] for M chosen `members` (REDQ's target
    needs only the members it takes the minimum over).

    `body` keeps the layout of the first SAC checkpoints (Linear, LayerNorm, ReLU per hidden layer,
    keys `body.0`, `body.1`, `body.3`, ...) and so their parameter order too, which Adam's saved
    state follows by position: checkpoints written before `members` existed still load."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_size: int, num_layers: int, members: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [
                EnsembleLinear(members, obs_dim + action_dim if i == 0 else hidden_size, hidden_size),
                EnsembleLayerNorm(members, hidden_size),
                nn.ReLU(),
            ]
        self.body = nn.Sequential(*layers)
        self.head = EnsembleLinear(members, hidden_size, 1)
        self.members = members

    def forward(self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.cat([obs.flatten(1).float(), action.float()], dim=-1)
        x = x.unsqueeze(0).expand(self.members if members is None else len(members), *x.shape)
        for linear, norm in self.hidden_layers():
            x = F.relu(norm(linear(x, members), members))
        return self.head(x, members).squeeze(-1)

    def hidden_layers(self) -> list[tuple[EnsembleLinear, EnsembleLayerNorm]]:
        """(linear, LayerNorm) of each hidden layer, in order."""
        return [(self.body[i], self.body[i + 1]) for i in range(0, len(self.body), 3)]

    def head_modules(self) -> list[nn.Module]:
        return [self.head]


class TanhGaussianActor(nn.Module):
    """SAC's policy: a Gaussian squashed by tanh and scaled to the action bounds."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_size: int, num_layers: int, low, high):
        super().__init__()
        self.torso = MLP(obs_dim, hidden_size, num_layers, layer_norm=False)
        self.head = nn.Linear(hidden_size, 2 * action_dim)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (action, log-probability) for each observation."""
        mean, log_std = self.head(self.torso(obs)).chunk(2, dim=-1)
        log_std = log_std.clamp(-5.0, 2.0)
        std = log_std.exp()
        raw = mean if deterministic else mean + std * torch.randn_like(mean)
        squashed = torch.tanh(raw)
        log_prob = (-0.5 * ((raw - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - raw - F.softplus(-2 * raw))).sum(-1)  # tanh correction
        log_prob = log_prob - torch.log(self.scale).sum()
        return squashed * self.scale + self.center, log_prob

    def head_modules(self) -> list[nn.Module]:
        return [self.head]


def reinitialise(modules) -> None:
    """Re-runs the default initialisation of every layer inside `modules`."""
    for module in modules:
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
