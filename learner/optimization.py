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


FUSED_ADAM_DEVICES = {"cpu", "cuda"}
"""Devices torch has a fused Adam kernel for (torch >= 2.4 on CPU)."""


def adam(parameters, lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where the parameters' device has one (CPU, CUDA): one pass
    per tensor for the moments and the update instead of about ten element-wise ops, the same
    update rule (results agree to float32 rounding). `qfleet bench update-cost --env cartpole`
    (the CartPole MLP, 2 x 256, batch 128, one thread): `agent.update` 13% cheaper by the median,
    19% by the minimum, than with the for-loop kernel. A checkpoint written with the for-loop kernel
    resumes on the fused one (`load_adam_state`)."""
    parameters = list(parameters)
    devices = {parameter.device.type for parameter in parameters}
    return torch.optim.Adam(parameters, lr=lr, fused=devices <= FUSED_ADAM_DEVICES)


def load_adam_state(optimizer: torch.optim.Adam, state: dict) -> None:
    """Loads a checkpoint's `state` into `optimizer`, keeping the kernel `optimizer` was built with:
    the saved param groups name the kernel they were written with (`fused` None before `adam`), and
    loading them as they are would keep a resumed run on the slower for-loop kernel for good. The
    step counts become float32 tensors on their parameters' devices, as the fused kernel keeps them."""
    fused = optimizer.param_groups[0].get("fused")
    optimizer.load_state_dict(state)
    if not fused:
        return
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for parameter in group["params"]:
            kept = optimizer.state.get(parameter)
            if kept and "step" in kept:
                kept["step"] = torch.as_tensor(kept["step"], dtype=torch.float32, device=parameter.device)


def polyak_average(average: nn.Module, online: nn.Module, tau: float) -> None:
    """Moves every parameter of `average` a step `tau` towards `online`'s, in place:
    average <- (1 - tau) * average + tau * online (Polyak averaging, as DDPG's soft targets); after k
    steps towards a fixed online network the distance left is (1 - tau)^k of the first. Buffers are
    left alone: qfleet's networks hold only constants there (action scales, layouts)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(average.parameters()), list(online.parameters()), tau)


def update_target(online: nn.Module, target: nn.Module, config: TargetConfig, updates: int) -> None:
    """Moves `target` towards `online`: Polyak by `tau` ("soft"), or a copy every `every` updates ("hard")."""
    if config.update == "soft":
        polyak_average(target, online, config.tau)
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
    """One optimizer step on `loss`, gradients clipped by global norm; returns the norm before clipping.

    Every agent's update goes through here (the Q losses, SAC's critic and actor, IQL, filtered BC).
    The clipping is `clip_grad_norm_`'s: gradients scaled by min(1, max_grad_norm / (norm + 1e-6)).
    On CPU, where that factor is clearly 1 (norm + 1e-6 below UNCLIPPED_BELOW of the limit), the
    scaling, a multiply of every gradient by exactly 1, is skipped: the same gradients, ~3% of the
    CPU of an update of the CartPole MLP (2 x 256, batch 128). A NaN or infinite norm fails that test,
    so torch scales as it would (NaN everywhere). On other devices (CUDA) the clip always runs and the
    norm is read after the step: reading it first would make the CPU wait for the backward pass."""
    if loss.device.type != "cpu":
        return float(step_on_device(optimizer, loss, parameters, max_grad_norm))
    parameters = list(parameters)  # walked twice: a generator would leave the clip nothing to scale
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.get_total_norm([parameter.grad for parameter in parameters if parameter.grad is not None])
    value = float(norm)
    if max_grad_norm is not None and not value + CLIP_EPSILON < UNCLIPPED_BELOW * max_grad_norm:
        nn.utils.clip_grads_with_norm_(parameters, max_grad_norm, norm)
    optimizer.step()
    return value


def step_on_device(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters, max_grad_norm: float | None
) -> torch.Tensor:
    """`step` on a device other than the CPU, without any read by the host (also what a captured
    CUDA graph runs): the clip always runs and the norm before clipping comes back as a 0-dim
    tensor on the device."""
    parameters = list(parameters)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.get_total_norm([parameter.grad for parameter in parameters if parameter.grad is not None])
    if max_grad_norm is not None:
        nn.utils.clip_grads_with_norm_(parameters, max_grad_norm, norm)
    optimizer.step()
    return norm


CLIP_EPSILON = 1e-6
"""What `clip_grad_norm_` adds to the norm before dividing the limit by it."""
UNCLIPPED_BELOW = 0.999
"""Where norm + CLIP_EPSILON is below this share of max_grad_norm, `clip_grad_norm_`'s factor
max_grad_norm / (norm + 1e-6) is above 1 by far more than float32 rounding, so it clamps to exactly
1; nearer the limit (or past it) `step` lets torch compute the factor."""
