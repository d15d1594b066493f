"""The bookkeeping every agent shares: a clipped optimizer step, target-network updates, and
resets (periodic, re-initialising layers together with their optimizer state)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from learner.config import ResetConfig, TargetConfig
from learner.networks import reinitialise

if TYPE_CHECKING:
    from learner.agent import Agent


def update_target(online: nn.Module, target: nn.Module, config: TargetConfig, updates: int) -> None:
    """Moves `target` towards `online`: Polyak by `tau` ("soft"), or a copy every `every` updates ("hard")."""
    if config.update == "soft":
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), config.tau)
    elif config.update == "hard" and updates % config.every == 0:
        target.load_state_dict(online.state_dict())


def forget_optimizer_state(optimizer: torch.optim.Optimizer, modules) -> None:
    """Drops Adam's moments (and step counts) of every parameter in `modules`."""
    for module in modules:
        for parameter in module.parameters():
            optimizer.state.pop(parameter, None)


def reinitialise_with_optimizer(
    network: nn.Module, optimizer: torch.optim.Optimizer, which: Literal["head", "all"]
) -> None:
    """Re-initialises `network`'s head (its `head_modules()`) or every layer, and forgets their Adam
    state: a reset layer that kept its old moments would be pushed by gradients it never had
    (Nikishin et al. 2022 reset both)."""
    modules = network.head_modules() if which == "head" else [network]
    reinitialise(modules)
    forget_optimizer_state(optimizer, modules)


def periodic_reset(agent: Agent, resets: ResetConfig, updates: int) -> bool:
    """Calls `agent.reset(resets.modules)` when update number `updates` is due one (every
    `resets.every` updates; never when None); True if it reset."""
    if resets.every and updates % resets.every == 0:
        agent.reset(resets.modules)
        return True
    return False


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters, max_grad_norm: float | None) -> float:
    """One optimizer step on `loss`, gradients clipped by global norm; returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        norm = nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
    optimizer.step()
    return float(norm)
