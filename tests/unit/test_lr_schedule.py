"""The learning-rate schedule (`learner.lr_schedule`): its values, its config keys and refusals, the
horizon `qfleet train` derives, and a resumed agent continuing it."""

from __future__ import annotations

import copy

import pytest
import torch

from learner import ActionSpace, ArchitectureConfig, LearnerConfig, OptimizerConfig, make_agent, scheduled_lr
from learner.lr_schedule import GRAPHED_STEPS
from system.config import load_config
from system.train import plan
from system.train.run_dir import RunDir
from tests.unit.test_agents import CHAIN_SUPPORT, chain_dataset

LINEAR = OptimizerConfig(lr=1e-3, lr_schedule="linear", lr_final_fraction=0.1, lr_decay_updates=1000)


@pytest.mark.parametrize(
    ("updates", "lr"),
    [
        (0, 1e-3),  # the configured rate before the first update
        (500, 5.5e-4),  # halfway: 1e-3 * (1 - 0.9 * 0.5)
        (1000, 1e-4),  # the floor at the horizon
        (5000, 1e-4),  # and held there after it
    ],
)
def test_a_linear_schedule_decays_from_lr_to_its_floor_over_its_horizon_then_holds(updates, lr):
    assert scheduled_lr(LINEAR, updates) == pytest.approx(lr)


def test_a_constant_schedule_is_lr_at_every_update():
    assert {scheduled_lr(OptimizerConfig(lr=1e-3), updates) for updates in (0, 10, 10**9)} == {1e-3}


def test_a_graphed_learner_moves_the_rate_in_equal_steps():
    assert scheduled_lr(LINEAR, 19, steps=GRAPHED_STEPS) == pytest.approx(scheduled_lr(LINEAR, 10))  # 1.9% -> 1%
    assert scheduled_lr(LINEAR, 20, steps=GRAPHED_STEPS) == pytest.approx(scheduled_lr(LINEAR, 20))


def test_a_linear_schedule_without_a_horizon_is_refused_when_the_agent_is_built():
    config = LearnerConfig(optimizer=OptimizerConfig(lr_schedule="linear"))
    with pytest.raises(ValueError, match="lr_schedule='linear' needs lr_decay_updates"):
        make_agent(config, (5,), ActionSpace(num_actions=2), torch.device("cpu"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr_final_fraction": 0.0}, "lr_final_fraction=0.0: must be in \\(0, 1\\]"),
        ({"lr_final_fraction": 1.5}, "lr_final_fraction=1.5: must be in \\(0, 1\\]"),
        ({"lr_decay_updates": 0}, "lr_decay_updates=0: must be >= 1"),
    ],
)
def test_bad_schedule_settings_are_refused_naming_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(lr_schedule="linear", **settings)


def test_a_schedule_is_refused_for_losses_other_than_the_discrete_q_losses():
    with pytest.raises(ValueError, match="lr_schedule='linear': needs loss 'dqn', 'c51' or 'hl_gauss'"):
        LearnerConfig(loss="sac", optimizer=OptimizerConfig(lr_schedule="linear"))


def test_the_schedule_keys_are_read_flat_from_yaml_and_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learner:\n  loss: hl_gauss\n  lr: 0.002\n  lr_schedule: linear\n  lr_final_fraction: 0.2\n")
    optimizer = load_config(path, ["learner.lr_decay_updates=700"]).learner.optimizer
    assert (optimizer.lr, optimizer.lr_schedule, optimizer.lr_final_fraction) == (0.002, "linear", 0.2)
    assert optimizer.lr_decay_updates == 700


def test_qfleet_train_decays_over_the_runs_update_budget_and_a_resume_keeps_it(tmp_path):
    overrides = ["learner.lr_schedule=linear", "train.total_env_steps=40000"]  # UTD 0.5: 20,000 updates
    planned = plan("configs/cartpole.yaml", overrides, str(tmp_path / "run"), None)
    assert planned.config.learner.optimizer.lr_decay_updates == 20_000
    RunDir(tmp_path / "run").write_config(planned.config)
    resumed = plan(None, ["train.total_env_steps=60000"], None, str(tmp_path / "run"))
    assert resumed.config.learner.optimizer.lr_decay_updates == 20_000  # the horizon it started with
    hand_set = plan("configs/cartpole.yaml", [*overrides, "learner.lr_decay_updates=5000"], str(tmp_path / "b"), None)
    assert hand_set.config.learner.optimizer.lr_decay_updates == 5000
    constant = plan("configs/cartpole.yaml", [], str(tmp_path / "c"), None)
    assert constant.config.learner.optimizer.lr_decay_updates is None


def scheduled_agent(**optimizer):
    settings = {"lr": 1e-2, "lr_schedule": "linear", "lr_final_fraction": 0.5, "lr_decay_updates": 10} | optimizer
    config = LearnerConfig(
        loss="hl_gauss",
        distributional=CHAIN_SUPPORT,
        architecture=ArchitectureConfig(hidden_size=16),
        optimizer=OptimizerConfig(**settings),
        seed=0,
    )
    return make_agent(config, (5,), ActionSpace(num_actions=2), torch.device("cpu"))


def learning_rate(agent) -> float:
    """The agent's one learning rate (every optimizer group's)."""
    (rate,) = {float(group["lr"]) for group in agent.optimizer.param_groups}
    return rate


def train(agent, updates: range) -> None:
    """Updates as the learner loop makes them: the step, its bookkeeping, the next rate."""
    batch, _ = chain_dataset()
    for update in updates:
        agent.update(batch, torch.ones(8))
        agent.after_update(update)
        agent.set_learning_rate(update)


def test_an_agent_steps_with_the_scheduled_rate_and_a_resumed_one_continues_it():
    agent = scheduled_agent()
    assert learning_rate(agent) == 1e-2
    train(agent, range(1, 5))
    assert learning_rate(agent) == pytest.approx(1e-2 * (1 - 0.5 * 4 / 10))  # the 5th update's rate

    resumed = scheduled_agent()
    resumed.load_state_dict(copy.deepcopy(agent.state_dict()))  # as a checkpoint file: no shared tensors
    assert resumed.set_learning_rate(4) == learning_rate(resumed) == learning_rate(agent)  # as the loop resumes
    for update in range(5, 13):
        train(agent, range(update, update + 1))
        train(resumed, range(update, update + 1))
    assert learning_rate(resumed) == learning_rate(agent) == pytest.approx(5e-3)  # the floor, past 10
    for name, value in agent.online.state_dict().items():
        torch.testing.assert_close(resumed.online.state_dict()[name], value, msg=name)


@pytest.mark.parametrize(
    ("optimizer", "rate"),
    [
        ({"lr_schedule": "constant"}, 1e-2),  # back to constant after a decayed linear run: lr, not the decayed rate
        ({"lr": 3e-3}, 3e-3 * (1 - 0.5 * 8 / 10)),  # a changed lr: its schedule at the restored update count
    ],
)
def test_a_resumed_agent_steps_with_the_configured_rate_not_the_checkpoints(optimizer, rate):
    agent = scheduled_agent()
    train(agent, range(1, 9))
    assert learning_rate(agent) == pytest.approx(1e-2 * (1 - 0.5 * 8 / 10))  # decayed: 6e-3
    resumed = scheduled_agent(**optimizer)
    resumed.load_state_dict(copy.deepcopy(agent.state_dict()))
    assert resumed.set_learning_rate(8) == pytest.approx(rate)
    assert learning_rate(resumed) == pytest.approx(rate)  # what the next step uses
    train(resumed, range(9, 10))
    expected = 1e-2 if optimizer.get("lr_schedule") == "constant" else 3e-3 * (1 - 0.5 * 9 / 10)
    assert learning_rate(resumed) == pytest.approx(expected)
