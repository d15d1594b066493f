"""The offline agents learn the optimal policy of a chain MDP from a fixed batch recorded by a
suboptimal behaviour policy, publish it so actors act with it, and checkpoint and reset like the
others."""

import dataclasses
import io

import numpy as np
import pytest
import torch

from learner import (
    ActionLayout,
    ActionSpace,
    Agent,
    ArchitectureConfig,
    FilteredBCConfig,
    IQLConfig,
    LearnerConfig,
    LearnerError,
    MalformedColumnError,
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


SMALL = ArchitectureConfig(hidden_size=32)
PLAIN = ActionSpace(num_actions=2)


def config(loss: str, architecture: ArchitectureConfig = SMALL, **groups) -> LearnerConfig:
    return LearnerConfig(
        loss=loss,
        gamma=GAMMA,
        architecture=architecture,
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


CHAIN_LAYOUT = ActionSpace(
    num_actions=2, layout=ActionLayout(kinds=("swipe",), kind_of=(0, 0), points=((0.0, 0.0), (0.0, 0.0)))
)
"""The chain's two actions as two swipes (left, right) of one kind: a space that the action-embedding
critic and the factored policy read the structure of. Both in one kind, so the factored policy's
choice is made by its within-kind softmax (p(kind) is 1)."""


def greedy_actions(learner_config: LearnerConfig, agent: Agent, space: ActionSpace = PLAIN) -> list[int]:
    """What an actor does at states 0..3 with the published weights, without exploration."""
    policy = Policy(learner_config, (STATES,), space, seed=99)
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
    ("iql", "critic", "policy_head", "space"),
    [
        (IQLConfig(expectile=0.9, temperature=10.0), "discrete", "flat", ActionSpace(num_actions=2)),
        (IQLConfig(expectile=0.9, extraction="best_of_n", n=4), "discrete", "flat", ActionSpace(num_actions=2)),
        (IQLConfig(expectile=0.9, temperature=10.0), "action_embedding", "flat", ActionSpace(num_actions=2)),
        (IQLConfig(expectile=0.9, extraction="best_of_n", n=4), "action_embedding", "flat", CHAIN_LAYOUT),
        (IQLConfig(expectile=0.9, extraction="best_of_n", n=4), "action_embedding", "factored", CHAIN_LAYOUT),
        (IQLConfig(expectile=0.5, extraction="best_of_n", n=1), "action_embedding", "factored", CHAIN_LAYOUT),
    ],
    ids=["awr", "best_of_n", "awr-embedding", "best_of_n-embedding", "digiq-best_of_4", "digiq-v-mse-best_of_1"],
)
def test_iql_recovers_the_optimal_policy_from_suboptimal_data(iql, critic, policy_head, space):
    architecture = ArchitectureConfig(hidden_size=32, critic=critic, policy_head=policy_head)
    learner_config = config("iql", iql=iql, architecture=architecture)
    agent = make_agent(learner_config, (STATES,), space, CPU)
    assert isinstance(agent, Agent)
    batch = recorded_batch()
    result = train(agent, batch, 200)
    assert greedy_actions(learner_config, agent, space) == [1, 1, 1, 1]
    with torch.no_grad():
        q = agent.critic.twin_q(torch.eye(STATES)[:4]).min(dim=0).values
        value = agent.critic.v(torch.eye(STATES)[:4])
    assert (q[:, 1] > q[:, 0]).all()
    if iql.expectile > 0.5:
        assert (value > q[:, 0]).all()  # expectile 0.9: V leans to the better action the data holds
    assert result.td_abs.shape == (420,) and np.isfinite(result.td_abs).all()


@pytest.mark.parametrize(("policy_head", "space"), [("flat", PLAIN), ("factored", CHAIN_LAYOUT)])
def test_filtered_bc_recovers_the_optimal_policy_when_the_top_episodes_are_optimal(policy_head, space):
    architecture = ArchitectureConfig(hidden_size=32, policy_head=policy_head)
    learner_config = config("filtered_bc", architecture, filtered_bc=FilteredBCConfig(top_k_percent=5))
    agent = make_agent(learner_config, (STATES,), space, CPU)
    result = train(agent, recorded_batch(), 100)
    assert greedy_actions(learner_config, agent, space) == [1, 1, 1, 1]
    assert result.td_abs is None  # no TD error: no priorities sent, items keep theirs
    kept = recorded_batch()["episode_return"] >= 0.7 - 1e-6  # the optimal episodes' return
    assert result.imitation_weight == pytest.approx(float(kept.float().mean()))
    assert result.policy_loss == result.loss > 0


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


def set_head(network: torch.nn.Module, bias: list[float]) -> None:
    """Makes `network` output `bias` for every observation: its head's weights zeroed."""
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.copy_(torch.tensor(bias))


def two_rows() -> dict[str, torch.Tensor]:
    """(s0, a0, r 0.5, discount 0.9, -> s1) and (s1, a1, r 0, discount 0.9, -> s2)."""
    return {
        "obs": torch.eye(STATES)[:2],
        "action": torch.tensor([0, 1]),
        "reward": torch.tensor([0.5, 0.0]),
        "next_obs": torch.eye(STATES)[1:3],
        "discount": torch.tensor([0.9, 0.9]),
    }


def test_the_critic_loss_regresses_v_to_the_min_of_the_target_twins_and_q_to_r_plus_v_target():
    agent = make_agent(config("iql", iql=IQLConfig(expectile=0.7)), (STATES,), ActionSpace(num_actions=2), CPU)
    set_head(agent.critic_target.q1, [1.0, 2.0])
    set_head(agent.critic_target.q2, [3.0, 0.0])  # min of the twins: Q_target(., a0) = 1, (., a1) = 0
    for network in (agent.critic_target.value, agent.critic.value, agent.critic.q1, agent.critic.q2):
        set_head(network, [0.0] * network.head.bias.numel())  # V_target = V = online Q = 0
    result = agent.update(two_rows(), torch.ones(2))
    # V: u = Q_target(s, a_data) - V = [1, 0] -> 0.7 * 1**2, 0. Q: target r + 0.9 * V_target = [0.5, 0]
    # against online Q 0 -> 0.25, 0 (both twins). Mean over the batch: (0.7 + 0.25 + 0) / 2.
    assert result.loss == pytest.approx(0.475)
    # Regressing V to the online Q (0) would give 0.125; to the max of the twins (3, 2) 4.675.
    np.testing.assert_allclose(result.td_abs, [0.5, 0.0], atol=1e-7)


def test_priorities_are_the_td_error_of_the_mean_of_both_twins():
    agent = make_agent(config("iql"), (STATES,), ActionSpace(num_actions=2), CPU)
    set_head(agent.critic.q1, [1.0, 1.0])
    set_head(agent.critic.q2, [3.0, 3.0])
    set_head(agent.critic_target.value, [0.0])  # target r = 0.5 (row 0), 0 (row 1)
    result = agent.update(two_rows(), torch.ones(2))
    # The twins' mean is 2: |2 - 0.5|, |2 - 0|. q1 alone would give 0.5, 1; q2 alone 2.5, 3.
    np.testing.assert_allclose(result.td_abs, [1.5, 2.0], rtol=1e-6)
    assert result.q_mean == pytest.approx(2.0)


def test_best_of_n_leaves_pi_unchanged_when_no_candidate_beats_v():
    iql = IQLConfig(extraction="best_of_n", n=2, include_data_action=True)
    agent = make_agent(config("iql", iql=iql), (STATES,), ActionSpace(num_actions=2), CPU)
    set_head(agent.critic.value, [100.0])  # V far above any Q: no advantage anywhere
    before = [p.detach().clone() for p in agent.policy.parameters()]
    result = agent.update(two_rows(), torch.ones(2))
    assert all(torch.equal(b, p) for b, p in zip(before, agent.policy.parameters(), strict=True))
    assert result.imitation_weight == 0.0 and result.policy_loss == 0.0


def test_best_of_n_imitates_the_highest_q_candidate_when_it_beats_v():
    iql = IQLConfig(extraction="best_of_n", n=2, replacement=False)  # n = A, distinct: both, every time
    agent = make_agent(config("iql", iql=iql), (STATES,), ActionSpace(num_actions=2), CPU)
    set_head(agent.critic_target.q1, [0.0, 1.0])
    set_head(agent.critic_target.q2, [0.0, 1.0])  # action 1 is the best everywhere
    set_head(agent.critic.value, [-1.0])
    set_head(agent.policy, [0.0, 0.0])
    result = agent.update(two_rows(), torch.ones(2))
    assert result.imitation_weight == 1.0
    assert result.policy_loss == pytest.approx(np.log(2.0))  # -mean(log 1/2) over two imitated items
    assert agent.policy.head.bias[1] > agent.policy.head.bias[0]  # towards action 1, at both states


def test_a_batch_where_no_item_is_imitated_takes_no_policy_step():
    """After a step that built Adam's momentum, a batch with every imitation weight zero leaves pi
    as it was (an Adam step on a zero gradient would still move it)."""
    iql = IQLConfig(extraction="best_of_n", n=2, include_data_action=True)
    agent = make_agent(config("iql", iql=iql), (STATES,), ActionSpace(num_actions=2), CPU)
    set_head(agent.critic.value, [-100.0])  # V far below any Q: every item is imitated
    first = agent.update(two_rows(), torch.ones(2))
    assert first.imitation_weight == 1.0
    set_head(agent.critic.value, [100.0])  # now V far above: no item is
    before = [p.detach().clone() for p in agent.policy.parameters()]
    second = agent.update(two_rows(), torch.ones(2))
    assert second.imitation_weight == 0.0 and second.policy_loss == 0.0
    assert all(torch.equal(b, p) for b, p in zip(before, agent.policy.parameters(), strict=True))


def test_pi_loss_is_weighted_by_the_importance_weights():
    # AWR with beta 0: every data action weighs 1, and pi (zero head) gives each probability 1/2.
    agent = make_agent(config("iql", iql=IQLConfig(temperature=0.0)), (STATES,), ActionSpace(num_actions=2), CPU)
    set_head(agent.policy, [0.0, 0.0])
    result = agent.update(two_rows(), torch.tensor([1.0, 0.0]))
    assert result.policy_loss == pytest.approx(np.log(2.0) / 2)  # -(1 * log 1/2 + 0 * log 1/2) / 2
    assert result.imitation_weight == pytest.approx(1.0)
    # Only row 0 (action 0) counts: pi's bias moves towards action 0; both rows would cancel out.
    assert agent.policy.head.bias[0] > agent.policy.head.bias[1]


def test_awr_imitation_weight_is_the_mean_clipped_weight():
    iql = IQLConfig(temperature=1.0, max_weight=2.0)
    agent = make_agent(config("iql", iql=iql), (STATES,), ActionSpace(num_actions=2), CPU)
    set_head(agent.critic_target.q1, [1.0, -1.0])
    set_head(agent.critic_target.q2, [1.0, -1.0])
    set_head(agent.critic.value, [0.0])  # advantages of the data actions: 1 (a0), -1 (a1)
    result = agent.update(two_rows(), torch.ones(2))
    assert result.imitation_weight == pytest.approx((2.0 + np.exp(-1.0)) / 2)  # e**1 clipped at 2


def test_filtered_bc_refuses_non_finite_episode_returns_naming_the_column():
    agent = make_agent(config("filtered_bc"), (STATES,), ActionSpace(num_actions=2), CPU)
    batch = recorded_batch()
    for bad in (float("nan"), float("inf")):
        batch["episode_return"][3] = bad
        with pytest.raises(MalformedColumnError, match="'episode_return' holds NaN or infinite") as raised:
            agent.update(batch, torch.ones(420))
        assert (raised.value.column, raised.value.loss) == ("episode_return", "filtered_bc")
        assert isinstance(raised.value, LearnerError)


def test_filtered_bc_without_episode_returns_names_the_missing_column():
    agent = make_agent(config("filtered_bc"), (STATES,), ActionSpace(num_actions=2), CPU)
    batch = {key: value for key, value in recorded_batch().items() if key != "episode_return"}
    with pytest.raises(MissingColumnError, match="'filtered_bc' needs a 'episode_return' column") as raised:
        agent.update(batch, torch.ones(420))
    assert raised.value.column == "episode_return" and "obs" in raised.value.columns


def policy_entropy(agent: Agent) -> float:
    """pi's mean entropy over the chain's states (log 2 = 0.69 is uniform)."""
    with torch.no_grad():
        logits = agent.policy(torch.eye(STATES))
    return float(-(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean())


def test_best_of_n_does_not_imitate_an_untrained_frozen_critic_before_policy_starts():
    """Issue 20: an untrained target critic (here frozen: hard copies far apart) ranks one action
    first almost everywhere; Best-of-N copying it from update 1 drives pi's entropy to ~0 before the
    critic learns. With policy_starts, pi is untouched (entropy as initialised) until then, and
    learns from the update after."""
    frozen = TargetConfig(update="hard", every=10_000)

    def agent_after(policy_starts: int, updates: int):
        iql = IQLConfig(extraction="best_of_n", n=16, policy_starts=policy_starts)
        learner_config = dataclasses.replace(config("iql", iql=iql), target=frozen)
        agent = make_agent(learner_config, (STATES,), PLAIN, CPU)
        set_head(agent.critic_target.q1, [0.0, 0.3])  # the untrained critic's arbitrary favourite: 1
        set_head(agent.critic_target.q2, [0.0, 0.3])
        initial = policy_entropy(agent)
        result = train(agent, recorded_batch(), updates)
        return agent, initial, result

    collapsed, initial, _ = agent_after(policy_starts=0, updates=25)
    assert policy_entropy(collapsed) < 0.1 * initial  # the failure policy_starts prevents
    waiting, initial, result = agent_after(policy_starts=25, updates=25)
    assert result.imitation_weight == 0.0 and result.policy_loss == 0.0
    assert policy_entropy(waiting) == pytest.approx(initial)
    before = [p.detach().clone() for p in waiting.policy.parameters()]
    assert waiting.update(recorded_batch(), torch.ones(420)).imitation_weight > 0  # update 26: pi learns
    assert not all(torch.equal(b, p) for b, p in zip(before, waiting.policy.parameters(), strict=True))


def test_with_a_filtered_bc_warmup_pi_clones_the_best_episodes_while_the_critics_train_first():
    """Digi-Q starts Best-of-N from a trained proposal policy: during `policy_starts`, pi clones the
    data actions of the batch's top episodes (here the optimal ones) and nothing else; Best-of-N
    takes over after. The behaviour mostly goes left, so plain cloning of every row would too."""
    iql = IQLConfig(extraction="best_of_n", n=4, policy_starts=60, policy_warmup="filtered_bc", advantage_threshold=1e9)
    learner_config = config("iql", iql=iql, filtered_bc=FilteredBCConfig(top_k_percent=5))
    agent = make_agent(learner_config, (STATES,), PLAIN, CPU)
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    result = train(agent, recorded_batch(), 60)
    assert greedy_actions(learner_config, agent) == [1, 1, 1, 1]
    kept = recorded_batch()["episode_return"] >= 0.7 - 1e-6  # the optimal episodes' rows only
    assert result.imitation_weight == pytest.approx(float(kept.float().mean()))
    assert not all(torch.equal(b, p) for b, p in zip(critic_before, agent.critic.parameters(), strict=True))
    after = agent.update(recorded_batch(), torch.ones(420))  # update 61: Best-of-N, whose threshold nothing beats
    assert (after.imitation_weight, after.policy_loss) == (0.0, 0.0)


def test_the_warmups_policy_loss_is_filtered_bcs_mean_over_the_kept_transitions():
    batch, weights = recorded_batch(), torch.ones(420)
    top = FilteredBCConfig(top_k_percent=5)
    iql = IQLConfig(extraction="best_of_n", policy_starts=10, policy_warmup="filtered_bc")
    warmup = make_agent(config("iql", iql=iql, filtered_bc=top), (STATES,), PLAIN, CPU).update(batch, weights)
    bc = make_agent(config("filtered_bc", filtered_bc=top), (STATES,), PLAIN, CPU)
    bc.policy.load_state_dict(make_agent(config("iql", iql=iql, filtered_bc=top), (STATES,), PLAIN, CPU).policy_state())
    filtered = bc.update(batch, weights)
    assert warmup.imitation_weight == pytest.approx(filtered.imitation_weight) and warmup.imitation_weight < 0.2
    assert warmup.policy_loss == pytest.approx(filtered.policy_loss, rel=1e-5)  # not scaled down by the kept share


def test_best_of_n_samples_no_candidates_during_the_warmup():
    iql = IQLConfig(extraction="best_of_n", n=16, policy_starts=2, policy_warmup="filtered_bc")
    agent = make_agent(config("iql", iql=iql), (STATES,), PLAIN, CPU)
    for update in (1, 2):
        rng = torch.get_rng_state()
        agent.update(recorded_batch(), torch.ones(420))
        assert torch.equal(rng, torch.get_rng_state()), update  # nothing drawn
    rng = torch.get_rng_state()
    agent.update(recorded_batch(), torch.ones(420))  # update 3: Best-of-N samples its candidates
    assert not torch.equal(rng, torch.get_rng_state())


def test_a_filtered_bc_warmup_refuses_non_finite_episode_returns_naming_the_column():
    iql = IQLConfig(extraction="best_of_n", policy_starts=10, policy_warmup="filtered_bc")
    agent = make_agent(config("iql", iql=iql), (STATES,), PLAIN, CPU)
    batch = recorded_batch()
    batch["episode_return"][3] = float("nan")
    with pytest.raises(MalformedColumnError, match="policy_warmup.*'episode_return' holds NaN or infinite"):
        agent.update(batch, torch.ones(420))


def test_a_warmup_batch_without_episode_returns_teaches_pi_nothing_and_warns_once(caplog):
    """A learner restarted without a checkpoint in an online phase warms up again on actors'
    transitions, which have no episode return: the critics train, pi waits as with no warm-up."""
    iql = IQLConfig(extraction="best_of_n", policy_starts=10, policy_warmup="filtered_bc")
    agent = make_agent(config("iql", iql=iql), (STATES,), PLAIN, CPU)
    batch = {k: v for k, v in recorded_batch().items() if k != "episode_return"}
    policy_before = [p.detach().clone() for p in agent.policy.parameters()]
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    with caplog.at_level("WARNING", logger="learner.offline_agents"):
        results = [agent.update(batch, torch.ones(420)) for _ in range(3)]
    assert all((r.imitation_weight, r.policy_loss) == (0.0, 0.0) for r in results)
    assert all(torch.equal(b, p) for b, p in zip(policy_before, agent.policy.parameters(), strict=True))
    assert not all(torch.equal(b, p) for b, p in zip(critic_before, agent.critic.parameters(), strict=True))
    warnings = [r for r in caplog.records if "episode_return" in r.getMessage()]
    assert len(warnings) == 1 and "policy_starts=10" in warnings[0].getMessage()


def test_an_unknown_policy_warmup_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="policy_warmup"):
        IQLConfig(policy_warmup="bc")


@pytest.mark.parametrize("extraction", ["awr", "best_of_n"])
def test_a_checkpointed_iql_agent_makes_the_same_next_update(extraction):
    # policy_starts 3: pi's first step is the update after the checkpoint, so the update count is restored
    learner_config = config("iql", iql=IQLConfig(extraction=extraction, policy_starts=3))
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


def test_cql_alpha_adds_alpha_times_the_conservative_penalty_to_the_critic_loss():
    agent = make_agent(
        config("iql", iql=IQLConfig(expectile=0.7, cql_alpha=0.5)), (STATES,), ActionSpace(num_actions=2), CPU
    )
    set_head(agent.critic_target.q1, [1.0, 2.0])
    set_head(agent.critic_target.q2, [3.0, 0.0])
    for network in (agent.critic_target.value, agent.critic.value, agent.critic.q1, agent.critic.q2):
        set_head(network, [0.0] * network.head.bias.numel())
    result = agent.update(two_rows(), torch.ones(2))
    # As without the penalty (0.475), plus 0.5 * (logsumexp(0, 0) - 0) = 0.5 * log 2 per item and twin.
    assert result.loss == pytest.approx(0.475 + 0.5 * np.log(2.0))
    np.testing.assert_allclose(result.td_abs, [0.5, 0.0], atol=1e-7)  # priorities stay the TD errors


def test_the_cql_alpha_key_reaches_the_iql_loss_through_the_config():
    from system.config import load_config

    losses = {}
    for alpha in (0.0, 2.0):
        learner_config = load_config(
            None, ["learner.loss=iql", "learner.hidden_size=32", f"learner.cql_alpha={alpha}"]
        ).learner
        assert learner_config.iql.cql_alpha == alpha
        agent = make_agent(learner_config, (STATES,), ActionSpace(num_actions=3), CPU)
        for network in (agent.critic.q1, agent.critic.q2):
            set_head(network, [0.0, 0.0, 0.0])  # Q = 0 at all three actions: a penalty of log 3
        losses[alpha] = agent.update(two_rows(), torch.ones(2)).loss
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * np.log(3.0), rel=1e-5)


def q_after_training(critic: str, alpha: float, overrated: float) -> torch.Tensor:
    """[4 states, 3 actions] min of the twins after 300 updates on the chain's data, in a space with
    a third action the data never holds; `overrated` is added to that action's Q at the start (the
    discrete critic's head bias for it), as an untrained action's Q can be."""
    architecture = dataclasses.replace(SMALL, critic=critic)
    agent = make_agent(config("iql", architecture, iql=IQLConfig(cql_alpha=alpha)), (STATES,), ActionSpace(3), CPU)
    if overrated:
        for twin in (agent.critic.q1, agent.critic.q2, agent.critic_target.q1, agent.critic_target.q2):
            with torch.no_grad():
                twin.head.bias[2] += overrated
    train(agent, recorded_batch(), 300)
    with torch.no_grad():
        return agent.critic.twin_q(torch.eye(STATES)[:4]).min(dim=0).values


def test_the_conservative_penalty_brings_an_overrated_action_the_data_never_holds_below_the_datas():
    def gap(q: torch.Tensor) -> float:  # how far the unseen action rises above the data's, at worst
        return (q[:, 2] - q[:, :2].min(dim=1).values).max().item()

    assert gap(q_after_training("discrete", 0.0, overrated=5.0)) > 4  # plain IQL never touches it
    assert gap(q_after_training("discrete", 1.0, overrated=5.0)) < 0
    assert gap(q_after_training("action_embedding", 1.0, overrated=0.0)) < 0
