"""Agents: networks + optimizer + one `update(batch)`, for discrete (DQN, C51, HL-Gauss) and
continuous (SAC with a REDQ-style ensemble) actions.

    agent = make_agent(config, obs_shape, action_space_spec, device)
    result = agent.update(batch, weights)     # one gradient step; result.td_abs -> priorities
    agent.after_update(updates)               # target network, periodic reset
    agent.policy_state()                      # what actors need to act (published as weights)

An agent knows nothing of replay, Redis or processes: the training loop wires those.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learner import losses
from learner.config import LearnerConfig
from learner.networks import EnsembleCritic, TanhGaussianActor, build_q_network, reinitialise
from learner.spaces import ActionSpace


@dataclass(frozen=True)
class UpdateResult:
    """Statistics of one update."""

    loss: float
    q_mean: float
    grad_norm: float
    td_abs: np.ndarray
    """|TD error| per item (expected values for distributional losses), for new priorities."""


def value_support(config: LearnerConfig, device: torch.device) -> torch.Tensor | None:
    """The values a distributional head's outputs stand for: C51's atoms or HL-Gauss' bin
    centres; None for "dqn" (the head outputs values)."""
    if config.loss == "c51":
        return torch.linspace(config.v_min, config.v_max, config.num_bins, device=device)
    if config.loss == "hl_gauss":
        edges = torch.linspace(config.v_min, config.v_max, config.num_bins + 1, device=device)
        return (edges[:-1] + edges[1:]) / 2
    return None


def _update_target(online: nn.Module, target: nn.Module, config: LearnerConfig, updates: int) -> None:
    if config.target_update == "soft":
        with torch.no_grad():
            for t, o in zip(target.parameters(), online.parameters(), strict=True):
                t.lerp_(o, config.tau)
    elif config.target_update == "hard" and updates % config.target_update_every == 0:
        target.load_state_dict(online.state_dict())


def _forget_optimizer_state(optimizer: torch.optim.Optimizer, modules) -> None:
    """Drops Adam's moments (and step counts) of every parameter in `modules`."""
    for module in modules:
        for parameter in module.parameters():
            optimizer.state.pop(parameter, None)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters, max_grad_norm: float | None) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        norm = nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
    optimizer.step()
    return float(norm)


class DiscreteQAgent:
    """Double DQN with n-step targets, C51 or HL-Gauss on one Q network (+ target network)."""

    def __init__(self, config: LearnerConfig, obs_shape: tuple[int, ...], num_actions: int, device: torch.device):
        if config.loss == "sac":
            raise ValueError("learner.loss='sac' needs a continuous (Box) action space")
        self.config, self.device = config, device
        bins = 1 if config.loss == "dqn" else config.num_bins
        self.online = build_q_network(
            obs_shape, num_actions, bins, config.network, config.hidden_size, config.num_layers,
            config.layer_norm, config.dueling,
        ).to(device)  # fmt: skip
        self.target = copy.deepcopy(self.online) if config.target_update != "none" else None
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=config.lr)
        self.support = value_support(config, device)
        if config.loss == "hl_gauss":
            self.edges = torch.linspace(config.v_min, config.v_max, bins + 1, device=device)
            self.sigma = config.sigma_ratio * float(self.edges[1] - self.edges[0])

    def q_values(self, network: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """[B, A] expected action values."""
        out = network(obs)
        return out if self.config.loss == "dqn" else losses.expectation(out, self.support)

    def update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        """One gradient step on importance-weighted losses."""
        obs, action = batch["obs"], batch["action"].long()
        reward, discount = batch["reward"].float(), batch["discount"].float()
        bootstrap = self.target if self.target is not None else self.online
        with torch.no_grad():
            next_online = self.q_values(self.online, batch["next_obs"])
            best = next_online.argmax(dim=1)
            if self.config.loss == "c51":
                next_logits = bootstrap(batch["next_obs"])[torch.arange(len(best)), best]
                target_probs = losses.categorical_projection(next_logits.softmax(-1), reward, discount, self.support)
                target_value = (target_probs * self.support).sum(-1)
            else:
                next_target = next_online if self.target is None else self.q_values(self.target, batch["next_obs"])
                target_value = losses.double_q_target(reward, discount, next_online, next_target)
                if self.config.loss == "hl_gauss":
                    target_probs = losses.hl_gauss_target(target_value, self.edges, self.sigma)
        out = self.online(obs)[torch.arange(len(action)), action]
        if self.config.loss == "dqn":
            q_taken = out
            per_item = losses.regression_loss(q_taken, target_value, self.config.td_loss)
        else:
            q_taken = losses.expectation(out, self.support)
            per_item = losses.cross_entropy(out, target_probs)
        loss = (weights * per_item).mean()
        grad_norm = _step(self.optimizer, loss, list(self.online.parameters()), self.config.max_grad_norm)
        td = (q_taken.detach() - target_value).abs()
        return UpdateResult(float(loss.detach()), float(q_taken.detach().mean()), grad_norm, td.cpu().numpy())

    def after_update(self, updates: int) -> bool:
        """Target update and periodic reset after update number `updates`; True if it reset."""
        if self.target is not None:
            _update_target(self.online, self.target, self.config, updates)
        if self.config.reset_every and updates % self.config.reset_every == 0:
            self.reset(self.config.reset_modules)
            return True
        return False

    def reset(self, which: str) -> None:
        """Re-initialises the head (or every layer) and its optimizer state; the target follows."""
        modules = self.online.head_modules() if which == "head" else [self.online]
        reinitialise(modules)
        _forget_optimizer_state(self.optimizer, modules)
        if self.target is not None:
            self.target.load_state_dict(self.online.state_dict())

    def policy_state(self) -> dict[str, torch.Tensor]:
        """The online network's weights (on CPU): what actors act with."""
        return {k: v.detach().cpu() for k, v in self.online.state_dict().items()}

    def state_dict(self) -> dict:
        state = {"online": self.online.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.target is not None:
            state["target"] = self.target.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.target is not None:
            self.target.load_state_dict(state["target"])


class SACAgent:
    """SAC (Haarnoja et al. 2018) with an ensemble of LayerNorm critics computed in one batched
    pass; the target takes the minimum over a random subset of `ensemble_subset` critics (REDQ,
    Chen et al. 2021; RLPD, Ball et al. 2023). The actor follows the ensemble mean."""

    def __init__(self, config: LearnerConfig, obs_shape: tuple[int, ...], space: ActionSpace, device: torch.device):
        self.config, self.device = config, device
        obs_dim = int(np.prod(obs_shape))
        low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
        action_dim = low.shape[0]
        self.actor = TanhGaussianActor(obs_dim, action_dim, config.hidden_size, config.num_layers, low, high).to(device)
        self.critic = EnsembleCritic(
            obs_dim, action_dim, config.hidden_size, config.num_layers, config.ensemble_size
        ).to(device)
        self.critic_target = copy.deepcopy(self.critic) if config.target_update != "none" else None
        self.log_alpha = torch.tensor(float(np.log(config.init_temperature)), device=device, requires_grad=True)
        self.target_entropy = -float(action_dim)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.lr)

    def update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        obs, action = batch["obs"].float(), batch["action"].float()
        reward, discount = batch["reward"].float(), batch["discount"].float()
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_log_prob = self.actor(batch["next_obs"].float())
            critics = self.critic_target if self.critic_target is not None else self.critic
            subset = torch.randperm(self.config.ensemble_size, device=self.device)[: self.config.ensemble_subset]
            next_q = critics(batch["next_obs"], next_action)[subset].min(dim=0).values
            target = reward + discount * (next_q - alpha * next_log_prob)
        q = self.critic(obs, action)  # [E, B]
        per_item = ((q - target) ** 2).mean(dim=0)
        critic_loss = (weights * per_item).mean()
        grad_norm = _step(self.critic_optimizer, critic_loss, list(self.critic.parameters()), self.config.max_grad_norm)

        new_action, log_prob = self.actor(obs)
        actor_loss = (alpha * log_prob - self.critic(obs, new_action).mean(dim=0)).mean()
        _step(self.actor_optimizer, actor_loss, list(self.actor.parameters()), self.config.max_grad_norm)
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()

        td = (q.detach().mean(dim=0) - target).abs()
        return UpdateResult(float(critic_loss.detach()), float(q.detach().mean()), grad_norm, td.cpu().numpy())

    def after_update(self, updates: int) -> bool:
        if self.critic_target is not None:
            _update_target(self.critic, self.critic_target, self.config, updates)
        if self.config.reset_every and updates % self.config.reset_every == 0:
            self.reset(self.config.reset_modules)
            return True
        return False

    def reset(self, which: str) -> None:
        """Re-initialises heads (or all layers) of actor and critics, with their optimizer state."""
        pairs = [(self.actor, self.actor_optimizer), (self.critic, self.critic_optimizer)]
        for network, optimizer in pairs:
            modules = network.head_modules() if which == "head" else [network]
            reinitialise(modules)
            _forget_optimizer_state(optimizer, modules)
        if self.critic_target is not None:
            self.critic_target.load_state_dict(self.critic.state_dict())

    def policy_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.actor.state_dict().items()}

    def state_dict(self) -> dict:
        state = {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
        }
        if self.critic_target is not None:
            state["critic_target"] = self.critic_target.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        if self.critic_target is not None:
            self.critic_target.load_state_dict(state["critic_target"])


def make_agent(config: LearnerConfig, obs_shape: tuple[int, ...], space: ActionSpace, device: torch.device):
    """The agent for the configured loss and the env's action space.

    Raises:
        ValueError: a loss that does not fit the action space, naming `learner.loss`.
    """
    torch.manual_seed(config.seed)
    if space.discrete:
        if config.loss == "sac":
            raise ValueError("learner.loss='sac' needs a continuous (Box) action space; this env's is discrete")
        return DiscreteQAgent(config, obs_shape, space.num_actions, device)
    if config.loss != "sac":
        raise ValueError(
            f"learner.loss={config.loss!r} needs a discrete action space; use 'sac' for continuous actions"
        )
    return SACAgent(config, obs_shape, space, device)
