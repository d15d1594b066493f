"""The agents: `DiscreteQAgent` (DQN, C51, HL-Gauss) and `SACAgent` (continuous actions, with a
REDQ-style critic ensemble), both implementing `learner.agent.Agent`, and the offline ones of
`learner.offline_agents` (IQL, filtered BC); `make_agent` picks one by `learner.loss`. How actors
act with what an agent publishes is `learner.acting`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from learner.agent import Agent, UpdateResult
from learner.config import LearnerConfig
from learner.cuda_graph import GraphedUpdate, make_capturable
from learner.losses import at_actions
from learner.lr_schedule import GRAPHED_STEPS, scheduled_lr, set_learning_rate
from learner.networks import EnsembleCritic, TanhGaussianActor, build_q_network
from learner.offline_agents import FilteredBCAgent, IQLAgent
from learner.optimization import (
    adam,
    load_adam_state,
    periodic_reset,
    polyak_average,
    reinitialise_with_optimizer,
    step,
    step_on_device,
    update_target,
)
from learner.q_losses import make_q_loss
from learner.spaces import ActionSpace

log = logging.getLogger(__name__)


class DiscreteQAgent:
    """Double DQN with n-step targets, C51 or HL-Gauss on one Q network (+ target network); the
    loss is `q_losses.Q_LOSSES[config.loss]`. With `policy_average_tau` it publishes a Polyak
    average of the online network (the policy actors and evaluations act with) instead of the
    online network."""

    discrete: ClassVar[bool] = True

    def __init__(self, config: LearnerConfig, obs_shape: tuple[int, ...], space: ActionSpace, device: torch.device):
        self.config, self.device = config, device
        self.q_loss = make_q_loss(config, device)
        self.online = build_q_network(obs_shape, space.num_actions, self.q_loss.bins, config.architecture).to(device)
        self.target = copy.deepcopy(self.online) if config.target.update != "none" else None
        self.policy_average = (
            copy.deepcopy(self.online).requires_grad_(False) if config.policy_average_tau is not None else None
        )
        """The published policy's network when `policy_average_tau` is set: the online network's
        Polyak average, moved after every update; it takes no gradients."""
        self.parameters = list(self.online.parameters())
        """The online network's parameters (resets re-initialise them in place)."""
        scheduled_lr(config.optimizer, 0)  # refuses a linear schedule without a horizon before anything runs
        self.optimizer = adam(self.parameters, config.optimizer.lr)
        self._rate_set: float | None = None
        """The rate `set_learning_rate` last set on the optimizer's groups (None: not since they were
        built or loaded)."""
        self.graphed: GraphedUpdate | None = None
        """The update as a replayed CUDA graph (`learner.cuda_graph` on a CUDA device), else None."""
        if config.cuda_graph and device.type == "cuda":
            make_capturable(self.optimizer)
            self.graphed = GraphedUpdate(self._update_on_device, self.optimizer, device)

    def q_values(self, network: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """[B, A] expected action values."""
        return self.q_loss.values(network(obs))

    def update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        """One gradient step on importance-weighted losses."""
        if self.graphed is not None:
            return self._graphed_update(batch, weights)
        loss, q_taken, target = self._losses(batch, weights)
        grad_norm = step(self.optimizer, loss, self.parameters, self.config.optimizer.max_grad_norm)
        td = (q_taken.detach() - target.value).abs()
        clamped = target.clamped_fraction
        return UpdateResult(
            float(loss.detach()),
            float(q_taken.detach().mean()),
            grad_norm,
            td.cpu().numpy(),
            clamped_fraction=None if clamped is None else float(clamped),
        )

    def _losses(self, batch: dict[str, torch.Tensor], weights: torch.Tensor):
        """The batch's importance-weighted loss, the taken actions' Q and the bootstrap target."""
        obs, action = batch["obs"], batch["action"].long()
        reward, discount = batch["reward"].float(), batch["discount"].float()
        with torch.no_grad():
            next_online = self.online(batch["next_obs"])
            next_bootstrap = next_online if self.target is None else self.target(batch["next_obs"])
            target = self.q_loss.target(next_online, next_bootstrap, reward, discount)
        taken = at_actions(self.online(obs), action)
        per_item, q_taken = self.q_loss.per_item(taken, target)
        return (weights * per_item).mean(), q_taken, target

    GRAPHED_INPUTS = ("obs", "next_obs", "action", "reward", "discount")
    """The batch columns an update reads (the graph's input buffers, with the weights)."""

    def _update_on_device(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The update `GraphedUpdate` captures: no host reads; its figures in one tensor [4 + B]:
        loss, mean Q taken, gradient norm, clamped share (NaN for "dqn"), then |TD error| per item."""
        loss, q_taken, target = self._losses(inputs, inputs["weights"])
        norm = step_on_device(self.optimizer, loss, self.parameters, self.config.optimizer.max_grad_norm)
        q_taken = q_taken.detach()
        clamped = target.clamped_fraction
        if clamped is None:
            clamped = torch.full((), float("nan"), device=loss.device)
        figures = torch.stack([loss.detach(), q_taken.mean(), norm.to(loss.dtype), clamped.to(loss.dtype)])
        return torch.cat([figures, (q_taken - target.value).abs().to(loss.dtype)])

    def _graphed_update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        inputs = {name: batch[name] for name in self.GRAPHED_INPUTS} | {"weights": weights}
        figures = self.graphed(inputs).cpu().numpy()  # the update's one read by the host
        loss, q_mean, grad_norm, clamped = (float(value) for value in figures[:4])
        return UpdateResult(
            loss, q_mean, grad_norm, figures[4:].copy(), clamped_fraction=None if np.isnan(clamped) else clamped
        )

    def set_learning_rate(self, updates: int) -> float:
        """Sets the rate of the update after update number `updates` from the config
        (`learner.lr_schedule`; "constant": `lr`) and returns it. Set once at the loop's start (after
        a resume) and, for a linear schedule, after every update, so a resumed run follows the configured schedule and `lr`, not the rate its
        checkpoint's optimizer state holds. Setting the rate a CUDA graph was captured with again
        leaves the graph as it is (`learner.cuda_graph` compares values); only a change re-captures."""
        steps = None if self.graphed is None else GRAPHED_STEPS
        rate = scheduled_lr(self.config.optimizer, updates, steps)
        if rate != self._rate_set:  # a capturable group's tensor rate: no device write per update
            set_learning_rate(self.optimizer, rate)
            self._rate_set = rate
        return rate

    def after_update(self, updates: int) -> bool:
        """Target update, policy average and periodic reset after update number `updates`; True
        if it reset. (The next update's learning rate is `set_learning_rate`'s.)"""
        if self.target is not None:
            update_target(self.online, self.target, self.config.target, updates)
        if self.policy_average is not None:
            polyak_average(self.policy_average, self.online, self.config.policy_average_tau)
        return periodic_reset(self, self.config.resets, updates)

    def reset(self, which: str) -> None:
        """Re-initialises the head (or every layer) and its optimizer state; the target and the
        policy average follow (an average of the old and new weights would be neither)."""
        reinitialise_with_optimizer(self.online, self.optimizer, which)
        for follower in (self.target, self.policy_average):
            if follower is not None:
                follower.load_state_dict(self.online.state_dict())
        if self.graphed is not None:  # the optimizer's state the graph recorded is gone
            self.graphed.invalidate()

    def policy_state(self) -> dict[str, torch.Tensor]:
        """The weights actors act with (on CPU): the policy average's with `policy_average_tau`,
        else the online network's."""
        network = self.online if self.policy_average is None else self.policy_average
        return {k: v.detach().cpu() for k, v in network.state_dict().items()}

    def state_dict(self) -> dict:
        state = {"online": self.online.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.target is not None:
            state["target"] = self.target.state_dict()
        if self.policy_average is not None:
            state["policy_average"] = self.policy_average.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores a `state_dict`; a checkpoint written without a policy average (an older run, or
        one with `policy_average_tau` unset) starts the average at the online network."""
        self.online.load_state_dict(state["online"])
        load_adam_state(self.optimizer, state["optimizer"])
        self._rate_set = None  # the groups now hold the checkpoint's rate
        if self.target is not None:
            self.target.load_state_dict(state["target"])
        if self.policy_average is not None:
            if "policy_average" not in state:
                log.info("policy average started at the online network (the checkpoint has none)")
            self.policy_average.load_state_dict(state.get("policy_average", state["online"]))
        if self.graphed is not None:  # the load replaced the optimizer's state and groups
            make_capturable(self.optimizer)
            self.graphed.invalidate()
        else:  # a checkpoint of a graphed run says capturable; op by op it only costs
            for group in self.optimizer.param_groups:
                group["capturable"] = False


@contextlib.contextmanager
def frozen(parameters: list[nn.Parameter]):
    """Parameters that take no gradient inside the block: a loss flows through the network to its
    inputs without computing (and later discarding) gradients of its weights."""
    flags = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, flags, strict=True):
            parameter.requires_grad_(flag)


class SACAgent:
    """SAC (Haarnoja et al. 2018) with an ensemble of LayerNorm critics computed in one batched
    pass; the target takes the minimum over a random subset of `ensemble_subset` critics (REDQ,
    Chen et al. 2021; RLPD, Ball et al. 2023). The actor maximises the minimum over the critics
    when the target takes the minimum over all of them (SAC's clipped double Q, as in SAC and SB3),
    and their mean when it draws a subset (REDQ, RLPD); `sac.actor_q` chooses otherwise."""

    discrete: ClassVar[bool] = False

    def __init__(self, config: LearnerConfig, obs_shape: tuple[int, ...], space: ActionSpace, device: torch.device):
        self.config, self.device = config, device
        obs_dim = int(np.prod(obs_shape))
        low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
        action_dim = low.shape[0]
        hidden_size, num_layers = config.architecture.hidden_size, config.architecture.num_layers
        self.actor = TanhGaussianActor(obs_dim, action_dim, hidden_size, num_layers, low, high).to(device)
        self.critic = EnsembleCritic(obs_dim, action_dim, hidden_size, num_layers, config.sac.ensemble_size).to(device)
        self.critic_target = copy.deepcopy(self.critic) if config.target.update != "none" else None
        initial_log_alpha = float(np.log(config.sac.init_temperature))
        self.log_alpha = torch.tensor(initial_log_alpha, device=device, requires_grad=True)
        # SAC's -action_dim, in the units of actions scaled to [-1, 1] (as SB3's): the actor's
        # log-probability is of the env's actions, whose entropy is sum(log(scale)) higher.
        self.target_entropy = -float(action_dim) + float(np.log((high - low) / 2.0).sum())
        self.actor_q = config.sac.actor_q_for_ensemble()
        lr = config.optimizer.lr
        self.actor_parameters, self.critic_parameters = list(self.actor.parameters()), list(self.critic.parameters())
        self.actor_optimizer = torch.optim.Adam(self.actor_parameters, lr=lr, foreach=True)
        self.critic_optimizer = torch.optim.Adam(self.critic_parameters, lr=lr, foreach=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=lr)

    def update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        """One critic, actor and temperature step. The target evaluates only the `ensemble_subset`
        members it takes the minimum over, and the actor's loss flows into the actions only (the
        critics' weights are frozen for it): the two costs that grew with the ensemble size."""
        obs, action = batch["obs"].float(), batch["action"].float()
        alpha = self.log_alpha.exp().detach()
        max_grad_norm = self.config.optimizer.max_grad_norm
        target = self.td_target(batch, alpha)
        q = self.critic(obs, action)  # [E, B]
        per_item = ((q - target) ** 2).mean(dim=0)
        critic_loss = (weights * per_item).mean()
        grad_norm = step(self.critic_optimizer, critic_loss, self.critic_parameters, max_grad_norm)

        with frozen(self.critic_parameters):
            actor_loss, log_prob = self.actor_loss(obs, alpha)
            step(self.actor_optimizer, actor_loss, self.actor_parameters, max_grad_norm)
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()

        td = (q.detach().mean(dim=0) - target).abs()
        return UpdateResult(float(critic_loss.detach()), float(q.detach().mean()), grad_norm, td.cpu().numpy())

    def td_target(self, batch: dict[str, torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
        """[B] soft TD targets r + discount * (min over drawn target critics Q(s', a') - alpha *
        log pi(a'|s')), a' ~ pi(s'): `ensemble_subset` members drawn at random (all of them, and
        no draw, when the subset is the whole ensemble)."""
        sac = self.config.sac
        with torch.no_grad():
            next_action, next_log_prob = self.actor(batch["next_obs"].float())
            critics = self.critic_target if self.critic_target is not None else self.critic
            subset = None
            if sac.ensemble_subset < sac.ensemble_size:
                subset = torch.randperm(sac.ensemble_size, device=self.device)[: sac.ensemble_subset]
            next_q = critics(batch["next_obs"], next_action, members=subset).min(dim=0).values
            return batch["reward"].float() + batch["discount"].float() * (next_q - alpha * next_log_prob)

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAC's policy loss mean(alpha * log pi(a|s) - Q(s, a)), a ~ pi(s) reparameterised and Q
        the critics' minimum or mean (`sac.actor_q`); and log pi(a|s) [B], which tunes alpha."""
        new_action, log_prob = self.actor(obs)
        q = self.critic(obs, new_action)  # [E, B]
        q = q.min(dim=0).values if self.actor_q == "min" else q.mean(dim=0)
        return (alpha * log_prob - q).mean(), log_prob

    def after_update(self, updates: int) -> bool:
        if self.critic_target is not None:
            update_target(self.critic, self.critic_target, self.config.target, updates)
        return periodic_reset(self, self.config.resets, updates)

    def set_learning_rate(self, updates: int) -> float:
        """Sets every optimizer's rate to the configured `lr` (SAC has no schedule), whatever a
        loaded checkpoint's optimizer state held; returns it."""
        for optimizer in (self.actor_optimizer, self.critic_optimizer, self.alpha_optimizer):
            set_learning_rate(optimizer, self.config.optimizer.lr)
        return self.config.optimizer.lr

    def reset(self, which: str) -> None:
        """Re-initialises heads (or all layers) of actor and critics, with their optimizer state."""
        reinitialise_with_optimizer(self.actor, self.actor_optimizer, which)
        reinitialise_with_optimizer(self.critic, self.critic_optimizer, which)
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


AGENTS: dict[str, type[Agent]] = {
    "dqn": DiscreteQAgent,
    "c51": DiscreteQAgent,
    "hl_gauss": DiscreteQAgent,
    "sac": SACAgent,
    "iql": IQLAgent,
    "filtered_bc": FilteredBCAgent,
}
"""`learner.loss` -> the agent that trains it."""


def make_agent(config: LearnerConfig, obs_shape: tuple[int, ...], space: ActionSpace, device: torch.device) -> Agent:
    """The agent for the configured loss and the env's action space.

    Raises:
        ValueError: a loss that does not fit the action space, naming `learner.loss`.
    """
    torch.manual_seed(config.seed)
    agent_class = AGENTS[config.loss]
    if agent_class.discrete and not space.discrete:
        raise ValueError(
            f"learner.loss={config.loss!r} needs a discrete action space; use 'sac' for continuous actions"
        )
    if not agent_class.discrete and space.discrete:
        raise ValueError(f"learner.loss={config.loss!r} needs a continuous (Box) action space; this env's is discrete")
    return agent_class(config, obs_shape, space, device)
