"""Digi-Q's heads: Q(s, a) with the action as an input (hand-computed, one batched pass equal to
per-action calls) and the factored UI policy (a proper distribution over the flat space, sampled at
its probabilities, ranked by Best-of-N, published like any other policy)."""

import numpy as np
import pytest
import torch

from actors import UIActionSpace
from learner import (
    ActionEmbeddingQ,
    ActionLayout,
    ActionSpace,
    ArchitectureConfig,
    FactoredPolicy,
    IQLConfig,
    LearnerConfig,
    OptimizerConfig,
    Policy,
    ScreenGrid,
    SpatialQ,
    action_descriptors,
    decode_weights,
    encode_weights,
    make_agent,
    tap_corners,
)
from learner.offline_losses import sample_candidates

CPU = torch.device("cpu")
UI_SPACE = UIActionSpace(2, 3, swipes=("up", "down"), texts=("hi",), text_slots=2, keys=("enter",), complete=True)
"""13 actions: 6 taps, 2 swipes, 3 types, 1 key, complete."""
TINY = ActionLayout(kinds=("tap", "key"), kind_of=(0, 0, 1), points=((0.25, 0.5), (0.75, 0.5), (0.0, 0.0)))
"""Two taps and a key."""


def test_a_ui_action_space_gives_its_kinds_and_tap_points_to_the_learner():
    layout = UI_SPACE.layout()
    assert layout.kinds == ("tap", "swipe", "type", "key", "complete")
    assert layout.kind_of == (0,) * 6 + (1, 1, 2, 2, 2, 3, 4)
    assert layout.points[:3] == ((1 / 6, 0.25), (0.5, 0.25), (5 / 6, 0.25))  # row 0, cols 0..2
    assert layout.points[5] == (5 / 6, 0.75) and layout.points[6] == (0.0, 0.0)
    keys_only = UIActionSpace(1, 1, keys=("enter", "tab")).layout()
    assert keys_only.kinds == ("tap", "key")  # kinds without actions are left out


def test_action_descriptors_are_the_kind_one_hot_the_tap_point_and_the_place_within_the_kind():
    expected = [
        [1, 0, 0.25, 0.5, 0.25],  # first of two taps: place (0 + 0.5) / 2
        [1, 0, 0.75, 0.5, 0.75],
        [0, 1, 0.0, 0.0, 0.5],  # the only key
    ]
    torch.testing.assert_close(action_descriptors(TINY, 3), torch.tensor(expected))
    assert action_descriptors(None, 3).shape == (3, 0)


def test_a_layout_of_another_size_than_the_space_is_refused():
    with pytest.raises(ValueError, match="2 actions but a layout of 3"):
        ActionSpace(num_actions=2, layout=TINY)
    with pytest.raises(ValueError, match=r"kinds \['key'\] have no action"):
        ActionLayout(kinds=("tap", "key"), kind_of=(0,), points=((0.5, 0.5),))


@pytest.mark.parametrize(
    ("kinds", "points", "message"),
    [
        (("tap", "tap"), ((0.5, 0.5), (0.5, 0.5)), r"name a kind twice"),
        (("tap", "key"), ((1.5, 0.5), (0.0, 0.0)), r"actions \[0\] are not in \[0, 1\]\^2"),
        (("tap", "key"), ((0.5, 0.5), (0.0, -0.1)), r"actions \[1\] are not in \[0, 1\]\^2"),
        (("tap", "key"), ((float("nan"), 0.5), (0.0, 0.0)), r"actions \[0\] are not in \[0, 1\]\^2"),
    ],
)
def test_a_layout_with_a_kind_named_twice_or_a_point_off_the_screen_is_refused(kinds, points, message):
    with pytest.raises(ValueError, match=message):
        ActionLayout(kinds=kinds, kind_of=(0, 1), points=points)
    ActionLayout(kinds=("tap", "key"), kind_of=(0, 1), points=((1.0, 0.0), (0.0, 0.0)))  # the edges are on it


def test_action_embedding_q_by_hand():
    architecture = ArchitectureConfig(hidden_size=2, num_layers=1, action_embedding_dim=1)
    q = ActionEmbeddingQ((2,), ActionSpace(2), architecture)
    with torch.no_grad():
        linear = q.torso.net[0]
        linear.weight.copy_(torch.eye(2))
        linear.bias.zero_()  # state = relu(obs)
        q.embedding.weight.copy_(torch.tensor([[1.0], [2.0]]))
        q.action_encoder.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        q.action_encoder.bias.zero_()  # a0 -> [1, -1], a1 -> [2, -2]
        q.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        q.hidden.bias.zero_()
        q.head.weight.copy_(torch.tensor([[1.0, 1.0]]))
        q.head.bias.fill_(0.5)
    obs = torch.tensor([[3.0, -1.0], [0.0, 4.0]])
    # s0 = [3, 0]: a0 relu([4, -1]) = [4, 0] -> hidden [4, 0] -> 4.5; a1 relu([5, -2]) -> 5.5.
    # s1 = [0, 4]: a0 relu([1, 3]) -> hidden [1, 6] -> 7.5; a1 relu([2, 2]) -> hidden [2, 4] -> 6.5.
    torch.testing.assert_close(q(obs), torch.tensor([[4.5, 5.5], [7.5, 6.5]]))
    torch.testing.assert_close(q.q_at(obs, torch.tensor([1, 0])), torch.tensor([5.5, 7.5]))


@pytest.mark.parametrize("layout", [None, UI_SPACE.layout()], ids=["embedding", "embedding+structure"])
def test_the_batched_pass_equals_one_call_per_action(layout):
    torch.manual_seed(0)
    q = ActionEmbeddingQ((8,), ActionSpace(UI_SPACE.n, layout=layout), ArchitectureConfig(hidden_size=16))
    obs = torch.randn(5, 8)
    every = q(obs)
    assert every.shape == (5, UI_SPACE.n)
    for action in range(UI_SPACE.n):
        torch.testing.assert_close(every[:, action], q.q_at(obs, torch.full((5,), action)))
    candidates = torch.randint(0, UI_SPACE.n, (5, 4))  # Q at N actions per state, as Best-of-N asks
    torch.testing.assert_close(q.q_at(obs, candidates), every.gather(1, candidates))
    assert "descriptors" not in q.state_dict()  # derived from the layout, never published


@pytest.mark.parametrize("critic", ["discrete", "action_embedding"])
def test_the_critics_score_the_actions_asked_for_as_the_full_pass_does(critic):
    space = ActionSpace(num_actions=UI_SPACE.n, layout=UI_SPACE.layout())
    agent = make_agent(factored_config(architecture=ArchitectureConfig(hidden_size=8, critic=critic)), (4,), space, CPU)
    obs, action = torch.randn(6, 4), torch.randint(0, UI_SPACE.n, (6,))
    candidates = torch.randint(0, UI_SPACE.n, (6, 3))
    with torch.no_grad():
        every = agent.critic.twin_q(obs)  # [2, B, A]
        torch.testing.assert_close(agent.critic.twin_q_at(obs, action), every[:, torch.arange(6), action])
        torch.testing.assert_close(agent.critic.twin_q_at(obs, candidates), every.gather(2, candidates.expand(2, 6, 3)))


def test_a_taps_point_is_an_input_of_its_q():
    """With the layout, the descriptor is an input: moving a tap's point changes its Q, and only its."""
    torch.manual_seed(0)
    q = ActionEmbeddingQ((4,), ActionSpace(3, layout=TINY), ArchitectureConfig(hidden_size=8))
    obs = torch.randn(2, 4)
    before = q(obs)
    moved = ActionLayout(kinds=TINY.kinds, kind_of=TINY.kind_of, points=((0.9, 0.9), *TINY.points[1:]))
    q.descriptors = action_descriptors(moved, 3)
    after = q(obs)
    assert not torch.allclose(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, 1:], after[:, 1:])


def factored(layout: ActionLayout = TINY) -> FactoredPolicy:
    torch.manual_seed(0)
    return FactoredPolicy((4,), layout, ArchitectureConfig(hidden_size=8))


def set_factored(policy: FactoredPolicy, kind_logits: list[float], detail_logits: list[float]) -> None:
    """Makes pi the same at every state: its heads' weights zeroed, their biases the logits."""
    with torch.no_grad():
        for head, bias in ((policy.kind_head, kind_logits), (policy.head, detail_logits)):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(bias))


def test_the_factored_log_probabilities_are_a_distribution_over_the_flat_space():
    policy = factored(UI_SPACE.layout())
    log_pi = policy(torch.randn(6, 4) * 3)
    torch.testing.assert_close(log_pi.exp().sum(dim=1), torch.ones(6))
    kinds = policy.kind_log_probs(torch.zeros(1, 4)).exp()
    torch.testing.assert_close(kinds.sum(), torch.tensor(1.0))


def test_log_pi_is_log_p_kind_plus_log_p_action_given_kind():
    policy = factored()
    set_factored(policy, [0.0, np.log(3.0)], [0.0, np.log(3.0), 5.0])
    # p(kind) = [1/4, 3/4]; within taps [1/4, 3/4]; the key alone: 1 whatever its logit.
    expected = torch.tensor([[1 / 16, 3 / 16, 3 / 4]]).log()
    torch.testing.assert_close(policy(torch.zeros(1, 4)), expected)


def factored_config(**kwargs) -> LearnerConfig:
    architecture = ArchitectureConfig(hidden_size=8, critic="action_embedding", policy_head="factored")
    return LearnerConfig(**{"loss": "iql", "architecture": architecture, **kwargs})


def test_actors_sample_the_factored_policy_at_its_probabilities():
    space = ActionSpace(num_actions=3, layout=TINY)
    agent = make_agent(factored_config(), (4,), space, CPU)
    set_factored(agent.policy, [0.0, np.log(3.0)], [0.0, np.log(3.0), 0.0])
    probabilities = np.array([1 / 16, 3 / 16, 3 / 4])
    draws = 20_000
    sampler = Policy(factored_config(policy_acting="sample"), (4,), space)
    sampler.load(agent.policy_state(), version=1)
    actions = sampler.act(np.zeros((draws, 4), np.float32), epsilon=0.0, rng=np.random.default_rng(1))
    tolerance = 4 * np.sqrt(probabilities * (1 - probabilities) / draws)  # 4 standard errors
    assert np.all(np.abs(np.bincount(actions, minlength=3) / draws - probabilities) < tolerance)
    # Best-of-N's candidates (n = 1) come from the same distribution.
    torch.manual_seed(2)
    candidates = sample_candidates(agent.policy(torch.zeros(draws, 4)), 1).squeeze(1).numpy()
    assert np.all(np.abs(np.bincount(candidates, minlength=3) / draws - probabilities) < tolerance)
    greedy = Policy(factored_config(), (4,), space)
    greedy.load(agent.policy_state(), version=1)
    assert greedy.act(np.zeros((3, 4), np.float32), epsilon=0.0, rng=np.random.default_rng(1)).tolist() == [2, 2, 2]


def test_the_factored_policy_is_published_and_loaded_like_any_other():
    space = ActionSpace(num_actions=UI_SPACE.n, layout=UI_SPACE.layout())
    agent = make_agent(factored_config(), (4,), space, CPU)
    version, state = decode_weights(encode_weights(agent.policy_state(), version=7))
    policy = Policy(factored_config(), (4,), space, seed=5)
    policy.load(state, version)
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(policy.q_values(obs), agent.policy(torch.from_numpy(obs)).numpy(), rtol=1e-6)
    assert policy.version == 7 and {"kind_head.weight", "head.weight"} <= set(state)


def set_q(network: ActionEmbeddingQ, values: list[float]) -> None:
    """Makes Q(s, a) = values[a] (>= 0) at every state: the state and the descriptors zeroed out,
    the first embedding unit carried through to the output."""
    with torch.no_grad():
        for module in (network.torso.net[-2], network.action_encoder, network.hidden, network.head):
            module.weight.zero_()
            module.bias.zero_()
        network.embedding.weight.zero_()
        network.embedding.weight[:, 0] = torch.tensor(values)
        network.action_encoder.weight[0, 0] = 1.0
        network.hidden.weight[0, 0] = 1.0
        network.head.weight[0, 0] = 1.0


def two_states() -> dict[str, torch.Tensor]:
    return {
        "obs": torch.eye(4)[:2],
        "action": torch.tensor([0, 2]),
        "reward": torch.tensor([0.0, 1.0]),
        "next_obs": torch.eye(4)[1:3],
        "discount": torch.tensor([0.9, 0.0]),
    }


@pytest.mark.parametrize(("value", "imitated"), [(1.0, True), (5.0, False)], ids=["beats-v", "below-v"])
def test_best_of_n_picks_the_argmax_q_candidate_and_imitates_it_only_when_it_beats_v(value, imitated):
    """n = A: every action is a candidate (distinct), so the choice is the argmax of Q, tap 1 (Q 2);
    its advantage 2 - V decides whether pi moves towards it."""
    iql = IQLConfig(extraction="best_of_n", n=3, replacement=False)
    learner_config = factored_config(iql=iql, optimizer=OptimizerConfig(lr=0.1))
    agent = make_agent(learner_config, (4,), ActionSpace(num_actions=3, layout=TINY), CPU)
    for network in (agent.critic_target.q1, agent.critic_target.q2):
        set_q(network, [0.0, 2.0, 1.0])
    with torch.no_grad():
        agent.critic.value.head.weight.zero_()
        agent.critic.value.head.bias.fill_(value)
    obs = two_states()["obs"]
    with torch.no_grad():
        before = agent.policy(obs).exp()
    result = agent.update(two_states(), torch.ones(2))
    with torch.no_grad():
        after = agent.policy(obs).exp()
    if imitated:
        assert result.imitation_weight == 1.0
        assert (after[:, 1] > before[:, 1]).all()  # towards tap 1 at both states
    else:
        assert result.imitation_weight == 0.0 and result.policy_loss == 0.0
        torch.testing.assert_close(after, before)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_best_of_n_takes_any_configured_n_with_the_factored_policy(n, monkeypatch):
    """Any N: the imitated action is one of pi's candidates, and pi takes a step exactly when some
    item's choice beats V (a threshold nothing beats leaves pi as it was)."""
    from learner import offline_losses

    chosen = []
    choose = offline_losses.best_candidate

    def spy(candidates, candidate_q, value, threshold):
        action, improves = choose(candidates, candidate_q, value, threshold)
        chosen.append((candidates, action, improves))
        return action, improves

    monkeypatch.setattr(offline_losses, "best_candidate", spy)
    space = ActionSpace(num_actions=UI_SPACE.n, layout=UI_SPACE.layout())
    torch.manual_seed(n)
    batch = {
        "obs": torch.randn(8, 4),
        "action": torch.randint(0, UI_SPACE.n, (8,)),
        "reward": torch.rand(8),
        "next_obs": torch.randn(8, 4),
        "discount": torch.full((8,), 0.9),
    }
    for threshold, steps in ((-1e9, True), (1e9, False)):
        iql = IQLConfig(extraction="best_of_n", n=n, advantage_threshold=threshold)
        agent = make_agent(factored_config(iql=iql), (4,), space, CPU)
        before = [p.detach().clone() for p in agent.policy.parameters()]
        result = agent.update(batch, torch.ones(8))
        candidates, action, improves = chosen.pop()
        assert candidates.shape == (8, n)
        assert all(a in row for a, row in zip(action.tolist(), candidates.tolist(), strict=True))
        assert bool(improves.all()) is steps and result.imitation_weight == float(improves.float().mean())
        moved = any(not torch.equal(b, p) for b, p in zip(before, agent.policy.parameters(), strict=True))
        assert moved is steps
        assert np.isfinite(result.loss) and np.isfinite(result.policy_loss) and result.td_abs.shape == (8,)


def test_the_action_embedding_critic_and_factored_policy_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="critic='action_embedding': needs loss 'iql'"):
        LearnerConfig(loss="dqn", architecture=ArchitectureConfig(critic="action_embedding"))
    with pytest.raises(ValueError, match="policy_head='factored': needs loss 'iql' or 'filtered_bc'"):
        LearnerConfig(loss="hl_gauss", architecture=ArchitectureConfig(policy_head="factored"))
    with pytest.raises(ValueError, match="policy_acting='sample': needs loss 'iql' or 'filtered_bc'"):
        LearnerConfig(loss="dqn", policy_acting="sample")
    with pytest.raises(ValueError, match=r"learner.policy_head='factored' needs a UI action space.*Discrete\(2\)"):
        make_agent(factored_config(), (4,), ActionSpace(num_actions=2), CPU)


GRID = ScreenGrid(offset=3, rows=2, cols=3, channels=2)
"""A 2 x 3 screen grid of 2 channels after 3 global features: aligned with UI_SPACE's 2 x 3 taps."""


def grid_obs(cells: torch.Tensor, global_features: torch.Tensor) -> torch.Tensor:
    """Observations [B, 3 + 12]: the global features, then the [B, 2, 3, 2] cells row-major."""
    return torch.cat([global_features, cells.reshape(len(cells), -1)], dim=1)


def spatial_q(hidden: int = 8) -> SpatialQ:
    torch.manual_seed(0)
    space = ActionSpace(UI_SPACE.n, layout=UI_SPACE.layout(), screen=GRID)
    return SpatialQ((GRID.offset + GRID.size,), space, ArchitectureConfig(hidden_size=hidden))


def test_a_tap_on_a_grid_aligned_with_the_taps_reads_exactly_its_cell():
    corners, weights = tap_corners(UI_SPACE.layout(), GRID, UI_SPACE.n)
    for tap in range(6):  # tap i = row i // 3, col i % 3: its own cell, weight 1
        assert float(weights[tap][corners[tap] == tap].sum()) == pytest.approx(1.0)
    assert float(weights[6:].abs().sum()) == 0.0  # swipes, types, keys, complete read no cell
    cells = torch.arange(12, dtype=torch.float32).reshape(1, 2, 3, 2)
    local = spatial_q().local_features(grid_obs(cells, torch.zeros(1, 3)), torch.arange(UI_SPACE.n)[None, :])
    torch.testing.assert_close(local[0, :6], cells.reshape(6, 2))
    torch.testing.assert_close(local[0, 6:], torch.zeros(7, 2))


def test_a_tap_between_cell_centres_reads_their_bilinear_mix():
    between = ActionLayout(kinds=("tap",), kind_of=(0, 0), points=((1 / 3, 0.5), (0.0, 1.0)))
    corners, weights = tap_corners(between, GRID, 2)
    cells = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])  # one channel's values per cell
    flat = cells.reshape(-1)
    # (1/3, 1/2): col 0.5, row 0.5 -> the mean of cells (0,0), (0,1), (1,0), (1,1); (0, 1): cell (1, 0).
    assert float((flat[corners[0]] * weights[0]).sum()) == pytest.approx((1 + 2 + 8 + 16) / 4)
    assert float((flat[corners[1]] * weights[1]).sum()) == pytest.approx(8.0)


def test_a_taps_q_changes_with_its_own_cell_only():
    q = spatial_q()
    obs = grid_obs(torch.randn(4, 2, 3, 2), torch.randn(4, 3))
    with torch.no_grad():
        before = q(obs)
        changed = obs.clone()
        changed[:, GRID.offset + 4 * 2 : GRID.offset + 5 * 2] += 3.0  # cell 4: row 1, col 1
        after = q(changed)
    moved = (before - after).abs().amax(dim=0) > 1e-6
    assert moved.tolist() == [i == 4 for i in range(UI_SPACE.n)]


def test_the_spatial_critic_scores_candidates_as_its_full_pass_does():
    q = spatial_q()
    obs = grid_obs(torch.randn(5, 2, 3, 2), torch.randn(5, 3))
    with torch.no_grad():
        every = q(obs)
        for action in range(UI_SPACE.n):
            torch.testing.assert_close(every[:, action], q.q_at(obs, torch.full((5,), action)))
        candidates = torch.randint(0, UI_SPACE.n, (5, 4))
        torch.testing.assert_close(q.q_at(obs, candidates), every.gather(1, candidates))
    assert not any(name in q.state_dict() for name in ("corners", "corner_weights", "descriptors"))


def test_with_a_screen_grid_the_policy_and_v_read_the_global_features_only():
    space = ActionSpace(num_actions=UI_SPACE.n, layout=UI_SPACE.layout(), screen=GRID)
    config = factored_config(architecture=ArchitectureConfig(hidden_size=8, critic="spatial", policy_head="factored"))
    agent = make_agent(config, (GRID.offset + GRID.size,), space, CPU)
    obs = grid_obs(torch.randn(3, 2, 3, 2), torch.randn(3, 3))
    other_grid = grid_obs(torch.randn(3, 2, 3, 2), obs[:, :3])
    with torch.no_grad():
        torch.testing.assert_close(agent.policy(obs), agent.policy(other_grid))
        torch.testing.assert_close(agent.critic.v(obs), agent.critic.v(other_grid))
        assert not torch.allclose(
            agent.critic.twin_q_at(obs, torch.zeros(3, dtype=torch.long)),
            agent.critic.twin_q_at(other_grid, torch.zeros(3, dtype=torch.long)),
        )
    batch = {
        "obs": obs,
        "action": torch.tensor([0, 4, 9]),
        "reward": torch.tensor([1.0, 0.0, 0.0]),
        "next_obs": other_grid,
        "discount": torch.tensor([0.0, 0.9, 0.9]),
    }
    result = agent.update(batch, torch.ones(3))
    assert np.isfinite(result.loss) and result.td_abs.shape == (3,)


def test_the_spatial_critic_is_refused_without_a_screen_grid():
    with pytest.raises(ValueError, match="critic='spatial': needs loss 'iql'"):
        LearnerConfig(loss="dqn", architecture=ArchitectureConfig(critic="spatial"))
    config = factored_config(architecture=ArchitectureConfig(hidden_size=8, critic="spatial"))
    with pytest.raises(ValueError, match="needs observations with a screen grid"):
        make_agent(config, (4,), ActionSpace(num_actions=UI_SPACE.n, layout=UI_SPACE.layout()), CPU)


@pytest.mark.parametrize(
    ("layout", "message"),
    [(None, "no layout"), (ActionLayout(kinds=("key",), kind_of=(0, 0), points=((0.0, 0.0),) * 2), "no tap kind")],
)
def test_the_spatial_critic_is_refused_where_no_action_taps_the_screen(layout, message):
    from system.config import ConfigError, check_learner_for_env

    space = ActionSpace(num_actions=2, layout=layout, screen=GRID)
    with pytest.raises(ValueError, match=rf"learner.critic='spatial' reads the screen grid .*{message}"):
        SpatialQ((GRID.offset + GRID.size,), space, ArchitectureConfig(hidden_size=8))
    config = factored_config(architecture=ArchitectureConfig(hidden_size=8, critic="spatial"))
    missing = "no UI action layout" if layout is None else "no tap actions"
    with pytest.raises(ConfigError, match=rf"learner.critic='spatial' needs .*has {missing}"):
        check_learner_for_env(config, space, "qfleet-test/NoTaps-v0")
