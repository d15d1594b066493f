"""A Q agent's update replayed as a CUDA graph does what the op-by-op update does, update for update,
through a reset, a learning-rate change and a checkpoint load. Needs CUDA (skipped elsewhere); on the
CPU only the switch is checked."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from learner import (
    ActionSpace,
    ArchitectureConfig,
    DistributionalConfig,
    LearnerConfig,
    OptimizerConfig,
    TargetConfig,
    make_agent,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SUPPORT = DistributionalConfig(v_min=-1.0, v_max=1.0, num_bins=21)  # rewards in [0, 3) clamp some targets


def config(loss: str, cuda_graph: bool, device: str = "cuda") -> LearnerConfig:
    return LearnerConfig(
        loss=loss,
        device=device,
        cuda_graph=cuda_graph,
        architecture=ArchitectureConfig(hidden_size=64),
        optimizer=OptimizerConfig(lr=1e-3, max_grad_norm=1.0),
        target=TargetConfig(update="hard", every=4),
        distributional=SUPPORT,
        seed=3,
    )


def batches(count: int, device: torch.device, batch_size: int = 32):
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield (
            {
                "obs": torch.from_numpy(rng.integers(0, 255, (batch_size, 8), dtype=np.uint8)).to(device).float() / 255,
                "next_obs": torch.from_numpy(rng.random((batch_size, 8), dtype=np.float32)).to(device),
                "action": torch.from_numpy(rng.integers(0, 3, batch_size)).to(device),
                "reward": torch.from_numpy(rng.random(batch_size, dtype=np.float32) * 3).to(device),
                "discount": torch.from_numpy(rng.choice([0.0, 0.99], batch_size).astype(np.float32)).to(device),
                "policy_version": torch.zeros(batch_size, dtype=torch.int64, device=device),
            },
            torch.from_numpy(rng.random(batch_size, dtype=np.float32) + 0.5).to(device),
        )


def assert_same_result(graphed, eager) -> None:
    close = {"rtol": 1e-4, "atol": 1e-5}
    np.testing.assert_allclose(graphed.loss, eager.loss, **close)
    np.testing.assert_allclose(graphed.q_mean, eager.q_mean, **close)
    np.testing.assert_allclose(graphed.grad_norm, eager.grad_norm, **close)
    np.testing.assert_allclose(graphed.td_abs, eager.td_abs, **close)
    assert (graphed.clamped_fraction is None) == (eager.clamped_fraction is None)
    if eager.clamped_fraction is not None:
        assert graphed.clamped_fraction == pytest.approx(eager.clamped_fraction, abs=1e-6)


def assert_same_parameters(one, other) -> None:
    for mine, theirs in zip(one.online.parameters(), other.online.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(one.target.parameters(), other.target.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("loss", ["dqn", "c51", "hl_gauss"])
def test_graphed_updates_match_op_by_op_ones_through_a_reset_an_lr_change_and_a_load(loss):
    device = torch.device("cuda")
    space = ActionSpace(num_actions=3)
    graphed = make_agent(config(loss, True), (8,), space, device)
    eager = make_agent(config(loss, False), (8,), space, device)
    assert graphed.graphed is not None and eager.graphed is None
    for update, (batch, weights) in enumerate(batches(30, device), start=1):
        if update == 12:  # a reset replaces optimizer state the graph recorded
            graphed.reset("head")
            eager.reset("head")
            eager.online.load_state_dict(graphed.online.state_dict())  # the same fresh head in both
            eager.target.load_state_dict(graphed.target.state_dict())
        if update == 18:  # a learning rate the capture baked in
            for agent in (graphed, eager):
                for group in agent.optimizer.param_groups:
                    group["lr"] = 5e-4
        if update == 24:  # a checkpoint load replaces the optimizer's state and groups
            graphed.load_state_dict(copy.deepcopy(eager.state_dict()))  # as from a file: no tensor shared
        assert_same_result(graphed.update(batch, weights), eager.update(batch, weights))
        graphed.after_update(update)
        eager.after_update(update)
    assert_same_parameters(graphed, eager)
    # captured at the start, after the reset, the lr change and the load; the rest replayed
    assert graphed.graphed.captures == 4
    assert graphed.graphed.replays >= 30 - 4 * 3


@needs_cuda
def test_a_graphed_agent_checkpoint_resumes_op_by_op_and_back():
    device = torch.device("cuda")
    space = ActionSpace(num_actions=3)
    graphed = make_agent(config("hl_gauss", True), (8,), space, device)
    data = list(batches(8, device))
    for update, (batch, weights) in enumerate(data[:5], start=1):
        graphed.update(batch, weights)
        graphed.after_update(update)
    resumed = make_agent(config("hl_gauss", False), (8,), space, device)
    resumed.load_state_dict(copy.deepcopy(graphed.state_dict()))  # as from a file: no tensor shared
    for update, (batch, weights) in enumerate(data[5:], start=6):
        assert_same_result(graphed.update(batch, weights), resumed.update(batch, weights))
        graphed.after_update(update)
        resumed.after_update(update)
    assert_same_parameters(graphed, resumed)


def test_the_switch_has_no_effect_on_the_cpu():
    agent = make_agent(config("dqn", True, device="cpu"), (8,), ActionSpace(num_actions=3), torch.device("cpu"))
    assert agent.graphed is None
    assert dataclasses.replace(LearnerConfig(), device="cpu").cuda_graph  # on by default: it only acts on CUDA
