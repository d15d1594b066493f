"""The offline losses (IQL, AWR, Best-of-N, filtered BC) against small hand-computed cases."""

import math

import pytest
import torch

from learner import offline_losses


def test_expectile_loss_weighs_v_below_q_by_tau_and_v_above_q_by_one_minus_tau():
    # difference = Q(s, a) - V(s): positive when V is below Q.
    difference = torch.tensor([2.0, -2.0, 0.5, 0.0])
    loss = offline_losses.expectile_loss(difference, 0.7)
    torch.testing.assert_close(loss, torch.tensor([0.7 * 4, 0.3 * 4, 0.7 * 0.25, 0.0]))


def test_expectile_one_half_is_half_the_squared_error():
    difference = torch.tensor([2.0, -2.0, 0.5])
    torch.testing.assert_close(offline_losses.expectile_loss(difference, 0.5), 0.5 * difference.square())


def test_q_target_bootstraps_from_the_next_state_value_and_not_through_a_termination():
    reward = torch.tensor([1.0, 0.5, -0.1])
    discount = torch.tensor([0.0, 0.81, 0.9])  # terminated; a 2-step window; one step
    next_value = torch.tensor([5.0, 2.0, -1.0])
    target = offline_losses.value_bootstrap_target(reward, discount, next_value)
    torch.testing.assert_close(target, torch.tensor([1.0, 0.5 + 0.81 * 2.0, -0.1 - 0.9]))


def test_awr_weights_are_exponentiated_advantages_clipped_at_max_weight():
    advantage = torch.tensor([0.0, 1.0, -1.0, 10.0, 1e4])
    weights = offline_losses.awr_weights(advantage, temperature=2.0, max_weight=100.0)
    expected = torch.tensor([1.0, math.exp(2.0), math.exp(-2.0), 100.0, 100.0])  # e**20 and e**20000 clip
    torch.testing.assert_close(weights, expected)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(offline_losses.awr_weights(advantage, 0.0, 100.0), torch.ones(5))  # plain BC


def test_log_likelihood_of_the_data_action():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]])  # pi = (1/4, 3/4), (4/5, 1/5)
    log_likelihood = offline_losses.log_likelihood(logits, torch.tensor([1, 1]))
    torch.testing.assert_close(log_likelihood, torch.tensor([math.log(0.75), math.log(0.2)]))


def test_best_of_n_picks_the_highest_q_candidate_and_masks_those_without_advantage():
    q = torch.tensor([[1.0, 5.0, 3.0], [2.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
    # Row 0: action 1 (Q 5) was not sampled, so the best candidate is action 2 (Q 3).
    candidates = torch.tensor([[0, 2, 2, 0], [1, 1, 2, 1], [2, 1, 0, 2]])
    value = torch.tensor([2.0, 0.5, 2.5])
    chosen, improves = offline_losses.best_of_n(candidates, q, value, threshold=0.0)
    assert chosen.tolist() == [2, 2, 2]
    assert improves.tolist() == [True, True, False]  # advantages 1, 0.5, -0.5
    _, improves = offline_losses.best_of_n(candidates, q, value, threshold=0.6)
    assert improves.tolist() == [True, False, False]
    _, improves = offline_losses.best_of_n(candidates, q, torch.tensor([3.0, 1.0, 2.0]), threshold=0.0)
    assert improves.tolist() == [False, False, False]  # an advantage of exactly the threshold is not enough


@pytest.mark.parametrize(
    ("returns", "top_k_percent", "kept"),
    [
        ([1, 5, 3, 5, 2, 0, 4, 7, 6, 8], 30, [7, 8, 9]),  # ceil(3.0) = 3 items: 8, 7, 6
        ([1, 5, 3, 5, 2, 0, 4, 7, 6, 8], 25, [7, 8, 9]),  # ceil(2.5) = 3
        ([1, 5, 3, 5, 2, 0, 4, 7, 6, 8], 1, [9]),  # at least one
        ([1, 5, 5, 5, 0], 40, [1, 2, 3]),  # two items, but ties with the lowest kept are all kept
        ([1, 5, 5, 5, 0], 100, [0, 1, 2, 3, 4]),  # plain behaviour cloning
        ([0, 0, 1, 0, 0, 0, 1, 0, 0, 0], 30, [2, 6]),  # 2 successes < 3 kept: not the failures tied at 0
        ([0, 1, 1, 1, 0, 1, 0, 0, 0, 0], 30, [1, 2, 3, 5]),  # 4 successes >= 3: ties above 0 all kept
        ([2, 2, 2, 2], 25, [0, 1, 2, 3]),  # all equal: plain behaviour cloning
    ],
)
def test_filtered_bc_keeps_the_top_k_percent_of_the_batch_by_episode_return(returns, top_k_percent, kept):
    mask = offline_losses.top_returns(torch.tensor(returns, dtype=torch.float32), top_k_percent)
    assert torch.nonzero(mask).flatten().tolist() == kept


def test_best_of_n_candidates_are_iid_draws_from_pi_by_default():
    torch.manual_seed(0)
    favourite = torch.log(torch.tensor([[0.99, 0.005, 0.003, 0.002]])).repeat(20_000, 1)
    candidates = offline_losses.sample_candidates(favourite, 4)
    assert candidates.shape == (20_000, 4)
    identical = (candidates == candidates[:, :1]).all(dim=1).float().mean()
    assert float(identical) == pytest.approx(0.99**4, abs=0.01)  # distinct draws would give 0
    frequencies = torch.bincount(candidates.flatten(), minlength=4).float() / candidates.numel()
    torch.testing.assert_close(frequencies, torch.tensor([0.99, 0.005, 0.003, 0.002]), atol=0.005, rtol=0)


def test_best_of_n_candidates_without_replacement_are_distinct_when_n_is_at_most_the_number_of_actions():
    torch.manual_seed(0)
    peaked = torch.tensor([[20.0, 0.0, 0.0, 0.0]]).repeat(500, 1)  # pi(a0) ~ 1
    candidates = offline_losses.sample_candidates(peaked, 3, replacement=False)
    assert candidates.shape == (500, 3)
    assert all(len(set(row)) == 3 for row in candidates.tolist())  # with replacement: mostly [0, 0, 0]
    assert (candidates[:, 0] == 0).all()  # the first is a plain draw from pi
    assert sorted(offline_losses.sample_candidates(peaked, 4, replacement=False)[0].tolist()) == [0, 1, 2, 3]
    more = offline_losses.sample_candidates(peaked, 6, replacement=False)  # n > A: with replacement
    assert more.shape == (500, 6) and ((more >= 0) & (more < 4)).all()


@pytest.mark.parametrize("replacement", [True, False])
def test_best_of_n_first_candidate_is_drawn_from_pi(replacement):
    torch.manual_seed(1)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(20_000, 1)
    first = offline_losses.sample_candidates(logits, 2, replacement=replacement)[:, 0]
    frequencies = torch.bincount(first, minlength=3).float() / len(first)
    torch.testing.assert_close(frequencies, torch.tensor([0.6, 0.3, 0.1]), atol=0.015, rtol=0)


def test_best_of_n_can_hold_the_data_action_in_its_first_slot():
    torch.manual_seed(2)
    logits = torch.zeros(100, 5)
    data_action = torch.arange(100) % 5
    candidates = offline_losses.sample_candidates(logits, 3, data_action, replacement=False)
    assert candidates.shape == (100, 3)
    assert torch.equal(candidates[:, 0], data_action)
    assert all(row[1] != row[2] for row in candidates.tolist())  # the n - 1 sampled are distinct
    iid = offline_losses.sample_candidates(logits, 3, data_action)
    assert iid.shape == (100, 3) and torch.equal(iid[:, 0], data_action)
    only_data = offline_losses.sample_candidates(logits, 1, data_action)
    assert torch.equal(only_data[:, 0], data_action)


def test_the_conservative_penalty_is_logsumexp_of_q_minus_q_at_the_data_action():
    q = torch.tensor([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]])  # logsumexp: log 4
    penalty = offline_losses.conservative_penalty(q, torch.tensor([2, 0]))
    torch.testing.assert_close(penalty, torch.tensor([math.log(2.0), math.log(4.0)]))


def test_the_conservative_penalty_pushes_q_down_by_softmax_and_up_at_the_data_action():
    q = torch.tensor([[0.0, 0.0, math.log(2.0)]], requires_grad=True)  # softmax: 0.25, 0.25, 0.5
    offline_losses.conservative_penalty(q, torch.tensor([0])).sum().backward()
    # d/dQ_a = softmax(Q)_a - 1[a = a_data]: the data action rises, the others fall, the
    # highest (overrated) one most.
    torch.testing.assert_close(q.grad, torch.tensor([[0.25 - 1.0, 0.25, 0.5]]))


def test_the_conservative_penalty_is_per_twin_and_item():
    q = torch.stack([torch.zeros(2, 4), torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])])
    penalty = offline_losses.conservative_penalty(q, torch.tensor([0, 1]))
    expected_twin2_item0 = math.log(math.exp(3.0) + 3.0) - 3.0
    torch.testing.assert_close(
        penalty, torch.tensor([[math.log(4.0), math.log(4.0)], [expected_twin2_item0, math.log(4.0)]])
    )
