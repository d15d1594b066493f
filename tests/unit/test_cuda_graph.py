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


def config(loss: str, cuda_graph: bool, device: str = "cuda", policy_average_tau: float | None = None) -> LearnerConfig:
    return LearnerConfig(
        policy_average_tau=policy_average_tau,
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
    if one.policy_average is not None:  # moved outside the graph, after each update
        for mine, theirs in zip(one.policy_average.parameters(), other.policy_average.parameters(), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize(("loss", "tau"), [("dqn", None), ("c51", None), ("hl_gauss", None), ("dqn", 0.25)], ids=str)
def test_graphed_updates_match_op_by_op_ones_through_a_reset_an_lr_change_and_a_load(loss, tau):
    device = torch.device("cuda")
    space = ActionSpace(num_actions=3)
    graphed = make_agent(config(loss, True, policy_average_tau=tau), (8,), space, device)
    eager = make_agent(config(loss, False, policy_average_tau=tau), (8,), space, device)
    assert graphed.graphed is not None and eager.graphed is None
    for update, (batch, weights) in enumerate(batches(30, device), start=1):
        if update == 12:  # a reset replaces optimizer state the graph recorded
            graphed.reset("head")
            eager.reset("head")
            eager.online.load_state_dict(graphed.online.state_dict())  # the same fresh head in both
            eager.target.load_state_dict(graphed.target.state_dict())
            if tau is not None:
                eager.policy_average.load_state_dict(graphed.policy_average.state_dict())
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
    assert graphed.graphed.replays == 30 - 4 * 3  # every other update: a replay


@needs_cuda
@pytest.mark.parametrize("first_graphed", [True, False], ids=["graphed-to-op-by-op", "op-by-op-to-graphed"])
def test_a_checkpoint_moves_between_graphed_and_op_by_op_agents(first_graphed):
    device = torch.device("cuda")
    space = ActionSpace(num_actions=3)
    first = make_agent(config("hl_gauss", first_graphed), (8,), space, device)
    data = list(batches(12, device))
    for update, (batch, weights) in enumerate(data[:5], start=1):
        first.update(batch, weights)
        first.after_update(update)
    second = make_agent(config("hl_gauss", not first_graphed), (8,), space, device)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as from a file: no tensor shared
    for group in second.optimizer.param_groups:  # each keeps the kind of step it runs
        assert group["capturable"] is (second.graphed is not None)
    for update, (batch, weights) in enumerate(data[5:], start=6):
        assert_same_result(first.update(batch, weights), second.update(batch, weights))
        first.after_update(update)
        second.after_update(update)
    assert_same_parameters(first, second)


@needs_cuda
def test_a_capture_that_fails_leaves_the_agent_training_op_by_op_with_a_warning(caplog):
    device = torch.device("cuda")
    space = ActionSpace(num_actions=3)
    graphed = make_agent(config("c51", True), (8,), space, device)
    eager = make_agent(config("c51", False), (8,), space, device)
    captured = graphed.graphed.update

    def reads_on_the_host(inputs):  # a host read: fine op by op, refused inside a capture
        out = captured(inputs)
        float(out[0])
        return out

    graphed.graphed.update = reads_on_the_host
    for update, (batch, weights) in enumerate(batches(8, device), start=1):
        assert_same_result(graphed.update(batch, weights), eager.update(batch, weights))
        graphed.after_update(update)
        eager.after_update(update)
    assert_same_parameters(graphed, eager)  # the failed capture's update ran exactly once
    assert graphed.graphed.disabled and graphed.graphed.captures == 0 and graphed.graphed.replays == 0
    assert "could not be captured as a CUDA graph" in caplog.text and "learner.cuda_graph: false" in caplog.text


@needs_cuda
def test_threads_copying_to_the_device_during_a_capture_do_not_break_it():
    # As the learner's prefetcher threads do: pinned host memory copied to the device meanwhile.
    import threading

    device = torch.device("cuda")
    space = ActionSpace(num_actions=3)
    graphed = make_agent(config("dqn", True), (8,), space, device)
    eager = make_agent(config("dqn", False), (8,), space, device)
    stop = threading.Event()
    copies = []

    def prefetch():
        while not stop.is_set():
            copies.append(torch.empty(4096).pin_memory().to(device, non_blocking=True).sum())

    thread = threading.Thread(target=prefetch, daemon=True)
    thread.start()
    try:
        for update, (batch, weights) in enumerate(batches(10, device), start=1):
            assert_same_result(graphed.update(batch, weights), eager.update(batch, weights))
            graphed.after_update(update)
            eager.after_update(update)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert copies and graphed.graphed.captures == 1 and graphed.graphed.disabled is None
    assert_same_parameters(graphed, eager)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_learner_on_a_second_gpu_captures_its_own_work():
    device = torch.device(f"cuda:{torch.cuda.device_count() - 1}")
    space = ActionSpace(num_actions=3)
    graphed = make_agent(config("dqn", True, device=str(device)), (8,), space, device)
    eager = make_agent(config("dqn", False, device=str(device)), (8,), space, device)
    for update, (batch, weights) in enumerate(batches(10, device), start=1):
        assert_same_result(graphed.update(batch, weights), eager.update(batch, weights))
        graphed.after_update(update)
        eager.after_update(update)
    assert_same_parameters(graphed, eager)  # replays that did nothing would leave them apart
    assert graphed.graphed.captures == 1 and graphed.graphed.disabled is None


def test_the_switch_has_no_effect_on_the_cpu():
    agent = make_agent(config("dqn", True, device="cpu"), (8,), ActionSpace(num_actions=3), torch.device("cpu"))
    assert agent.graphed is None
    assert dataclasses.replace(LearnerConfig(), device="cpu").cuda_graph  # on by default: it only acts on CUDA
