"""The offline agents learn the optimal policy of a chain MDP from a fixed batch recorded by a
suboptimal behaviour policy, publish it so actors act with it, and checkpoint and reset like the
others."""

import io

import numpy as np
import pytest
import torch

from learner import (
    ActionSpace,
    Agent,
    ArchitectureConfig,
    FilteredBCConfig,
    IQLConfig,
    LearnerConfig,
    MissingColumnError,
    OptimizerConfig,
    Policy,
    ResetConfig,
    TargetConfig,
    make_agent,
)

GAMMA = 0.9
STATES = 5
"""A chain 0..4: action 1 moves right, 0 left (floor 0); entering state 4 pays 1 and terminates,
every other step costs 0.1. Optimal: always right (return 0.7 from state 0)."""
CPU = torch.device("cpu")


def record(rng: np.random.Generator, p_right: float, episodes: int, horizon: int = 10) -> list[tuple]:
    """Episodes from state 0 under a policy that goes right with probability `p_right`, as rows
    (state, action, reward, next_state, discount, episode_return); truncated after `horizon`."""
    rows = []
    for _ in range(episodes):
        state, episode = 0, []
        for _ in range(horizon):
            action = int(rng.random() < p_right)
            next_state = state + 1 if action == 1 else max(state - 1, 0)
            done = next_state == STATES - 1
            episode.append((state, action, 1.0 if done else -0.1, next_state, 0.0 if done else GAMMA))
            state = next_state
            if done:
                break
        episode_return = sum(row[2] for row in episode)
        rows += [(*row, episode_return) for row in episode]
    return rows


def recorded_batch() -> dict[str, torch.Tensor]:
    """40 episodes of a behaviour policy that mostly goes the wrong way (left with p 0.6) and 6
    optimal ones (the top returns): 420 transitions, every state covered."""
    rng = np.random.default_rng(0)
    state, action, reward, next_state, discount, episode_return = map(
        np.array, zip(*record(rng, 0.4, 40) + record(rng, 1.0, 6), strict=True)
    )
    one_hot = np.eye(STATES, dtype=np.float32)
    return {
        "obs": torch.tensor(one_hot[state]),
        "action": torch.tensor(action),
        "reward": torch.tensor(reward, dtype=torch.float32),
        "next_obs": torch.tensor(one_hot[next_state]),
        "discount": torch.tensor(discount, dtype=torch.float32),
        "episode_return": torch.tensor(episode_return, dtype=torch.float32),
    }


def config(loss: str, **groups) -> LearnerConfig:
    return LearnerConfig(
        loss=loss,
        gamma=GAMMA,
        architecture=ArchitectureConfig(hidden_size=32),
        optimizer=OptimizerConfig(lr=1e-2),
        target=TargetConfig(update="soft", tau=0.05),
        seed=1,
        **groups,
    )


def train(agent: Agent, batch: dict[str, torch.Tensor], updates: int):
    weights = torch.ones(len(batch["action"]))
    for update in range(1, updates + 1):
        result = agent.update(batch, weights)
        agent.after_update(update)
    return result


def greedy_actions(learner_config: LearnerConfig, agent: Agent) -> list[int]:
    """What an actor does at states 0..3 with the published weights, without exploration."""
    policy = Policy(learner_config, (STATES,), ActionSpace(num_actions=2), seed=99)
    policy.load(agent.policy_state(), version=1)
    return policy.act(np.eye(STATES, dtype=np.float32)[:4], epsilon=0.0, rng=np.random.default_rng(0)).tolist()


def test_the_recorded_behaviour_is_suboptimal_so_plain_cloning_goes_the_wrong_way():
    batch = recorded_batch()
    assert len(batch["action"]) == 420
    plain_bc = config("filtered_bc", filtered_bc=FilteredBCConfig(top_k_percent=100))
    agent = make_agent(plain_bc, (STATES,), ActionSpace(num_actions=2), CPU)
    train(agent, batch, 100)
    assert greedy_actions(plain_bc, agent) == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "iql",
    [IQLConfig(expectile=0.9, temperature=10.0), IQLConfig(expectile=0.9, extraction="best_of_n", n=4)],
    ids=["awr", "best_of_n"],
)
def test_iql_recovers_the_optimal_policy_from_suboptimal_data(iql):
    learner_config = config("iql", iql=iql)
    agent = make_agent(learner_config, (STATES,), ActionSpace(num_actions=2), CPU)
    assert isinstance(agent, Agent)
    batch = recorded_batch()
    result = train(agent, batch, 200)
    assert greedy_actions(learner_config, agent) == [1, 1, 1, 1]
    with torch.no_grad():
        q = agent.critic.twin_q(torch.eye(STATES)[:4]).min(dim=0).values
        value = agent.critic.v(torch.eye(STATES)[:4])
    assert (q[:, 1] > q[:, 0]).all()
    assert (value > q[:, 0]).all()  # expectile 0.9: V leans to the better action the data holds
    assert result.td_abs.shape == (420,) and np.isfinite(result.td_abs).all()


def test_filtered_bc_recovers_the_optimal_policy_when_the_top_episodes_are_optimal():
    learner_config = config("filtered_bc", filtered_bc=FilteredBCConfig(top_k_percent=5))
    agent = make_agent(learner_config, (STATES,), ActionSpace(num_actions=2), CPU)
    result = train(agent, recorded_batch(), 100)
    assert greedy_actions(learner_config, agent) == [1, 1, 1, 1]
    np.testing.assert_array_equal(result.td_abs, np.ones(420))  # uniform priorities


def test_the_q_target_bootstraps_from_the_target_networks_value():
    agent = make_agent(config("iql"), (STATES,), ActionSpace(num_actions=2), CPU)
    with torch.no_grad():
        for network in (agent.critic.q1, agent.critic.q2):  # online Q = 0 everywhere
            network.head.weight.zero_()
            network.head.bias.zero_()
        agent.critic_target.value.head.weight.zero_()
        agent.critic_target.value.head.bias.fill_(3.0)  # V_target = 3; the online V is not 3
    batch = {
        "obs": torch.eye(STATES)[:2],
        "action": torch.tensor([0, 1]),
        "reward": torch.tensor([1.0, -0.1]),
        "next_obs": torch.eye(STATES)[1:3],
        "discount": torch.tensor([0.0, 0.9]),
    }
    result = agent.update(batch, torch.ones(2))
    np.testing.assert_allclose(result.td_abs, [1.0, abs(-0.1 + 0.9 * 3.0)], rtol=1e-6)
    assert result.q_mean == 0.0


def test_filtered_bc_without_episode_returns_names_the_missing_column():
    agent = make_agent(config("filtered_bc"), (STATES,), ActionSpace(num_actions=2), CPU)
    batch = {key: value for key, value in recorded_batch().items() if key != "episode_return"}
    with pytest.raises(MissingColumnError, match="'filtered_bc' needs a 'episode_return' column") as raised:
        agent.update(batch, torch.ones(420))
    assert raised.value.column == "episode_return" and "obs" in raised.value.columns


@pytest.mark.parametrize("extraction", ["awr", "best_of_n"])
def test_a_checkpointed_iql_agent_makes_the_same_next_update(extraction):
    learner_config = config("iql", iql=IQLConfig(extraction=extraction))
    batch = recorded_batch()
    agent = make_agent(learner_config, (STATES,), ActionSpace(num_actions=2), CPU)
    train(agent, batch, 3)
    buffer = io.BytesIO()
    torch.save({"agent": agent.state_dict(), "rng": torch.get_rng_state()}, buffer)
    expected = agent.update(batch, torch.ones(420))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = make_agent(learner_config, (STATES,), ActionSpace(num_actions=2), CPU)
    restored.load_state_dict(saved["agent"])
    torch.set_rng_state(saved["rng"])
    result = restored.update(batch, torch.ones(420))
    assert result.loss == expected.loss
    np.testing.assert_array_equal(result.td_abs, expected.td_abs)
    for name, tensor in restored.policy_state().items():
        torch.testing.assert_close(tensor, agent.policy_state()[name])


def test_reset_reinitialises_the_heads_of_pi_and_the_critics():
    learner_config = config("iql", resets=ResetConfig(every=2, modules="head"))
    agent = make_agent(learner_config, (STATES,), ActionSpace(num_actions=2), CPU)
    batch = recorded_batch()
    agent.update(batch, torch.ones(420))
    assert not agent.after_update(1)
    agent.update(batch, torch.ones(420))
    before = {
        name: p.detach().clone() for name, p in [*agent.policy.named_parameters(), *agent.critic.named_parameters()]
    }
    assert agent.after_update(2)
    after = dict([*agent.policy.named_parameters(), *agent.critic.named_parameters()])
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if ".head." in f".{name}"}
    assert all(p not in agent.policy_optimizer.state for p in agent.policy.head.parameters())
    torch.testing.assert_close(agent.critic_target.value.head.weight, agent.critic.value.head.weight)


def test_an_offline_loss_needs_discrete_actions():
    with pytest.raises(ValueError, match="learner.loss='iql' needs a discrete action space"):
        make_agent(config("iql"), (4,), ActionSpace(low=(-1.0,), high=(1.0,)), CPU)
