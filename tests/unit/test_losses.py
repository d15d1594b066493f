"""The learner's targets and losses against small hand-computed cases."""

import math

import pytest
import torch

from learner import losses


def test_n_step_double_dqn_target_uses_the_online_argmax_and_the_target_value():
    reward = torch.tensor([1.0, 2.0, 0.5])
    # discount = gamma**n: 0.9**3 for a full 3-step window, 0 after a termination inside it, and
    # 0.9**2 for a window cut short by truncation (which still bootstraps).
    discount = torch.tensor([0.729, 0.0, 0.81])
    next_online = torch.tensor([[1.0, 3.0], [5.0, 0.0], [0.0, 2.0]])  # argmax: 1, 0, 1
    next_target = torch.tensor([[10.0, 20.0], [30.0, 40.0], [4.0, -6.0]])
    target = losses.double_q_target(reward, discount, next_online, next_target)
    expected = [1.0 + 0.729 * 20.0, 2.0, 0.5 + 0.81 * -6.0]
    torch.testing.assert_close(target, torch.tensor(expected))


def test_huber_and_mse_per_item():
    prediction, target = torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0.5, 2.0, 0.0])
    torch.testing.assert_close(losses.regression_loss(prediction, target, "huber"), torch.tensor([0.125, 1.5, 2.5]))
    torch.testing.assert_close(losses.regression_loss(prediction, target, "mse"), torch.tensor([0.25, 4.0, 9.0]))


def test_c51_projection_by_hand():
    support = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    next_probs = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0, 1.0]])
    reward = torch.tensor([0.5, 1.0, 3.0])
    discount = torch.tensor([1.0, 0.0, 0.5])
    projected = losses.categorical_projection(next_probs, reward, discount, support)
    # Row 0: atoms 1, 2 move to 1.5, 2.5: each splits half-half between neighbours.
    # Row 1: terminal (discount 0): all mass lands on r = 1 exactly.
    # Row 2: atom 4 moves to 3 + 0.5 * 4 = 5, clamped to v_max = 4.
    expected = torch.tensor([[0.0, 0.25, 0.5, 0.25, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(projected, expected)
    torch.testing.assert_close(projected.sum(-1), torch.ones(3))


def test_hl_gauss_target_sums_to_one_and_its_mean_is_the_clamped_target():
    edges = torch.linspace(-10.0, 10.0, 52)  # 51 bins
    centres = (edges[:-1] + edges[1:]) / 2
    width = float(edges[1] - edges[0])
    values = torch.tensor([-3.3, 0.0, 0.17, 4.9, 7.25])
    probs = losses.hl_gauss_target(values, edges, 0.75 * width)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    torch.testing.assert_close((probs * centres).sum(-1), values, atol=1e-4, rtol=0)
    # Out-of-support targets are clamped first: the same distribution as the edge itself.
    outside = losses.hl_gauss_target(torch.tensor([55.0, -1e6]), edges, 0.75 * width)
    at_edges = losses.hl_gauss_target(torch.tensor([10.0, -10.0]), edges, 0.75 * width)
    torch.testing.assert_close(outside, at_edges)
    # Sigma = 0.75 bin widths: ~49.5% of the mass within half a bin width of the target.
    middle = losses.hl_gauss_target(torch.tensor([float(centres[25])]), edges, 0.75 * width)
    assert float(middle[0, 25]) == pytest.approx(math.erf(0.5 / 0.75 / math.sqrt(2)), rel=1e-3)


def test_cross_entropy_and_expectation():
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    target = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(losses.cross_entropy(logits, target), torch.tensor([math.log(4.0)]))
    torch.testing.assert_close(losses.expectation(logits, torch.tensor([0.0, 4.0])), torch.tensor([3.0]))


def test_symlog_and_symexp_invert_each_other_and_compress_large_magnitudes():
    values = torch.tensor([-1e4, -100.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 110.0, 1e4], dtype=torch.float64)
    torch.testing.assert_close(losses.symexp(losses.symlog(values)), values)
    torch.testing.assert_close(
        losses.symlog(torch.tensor([0.0, math.e - 1, -(math.e - 1)])), torch.tensor([0.0, 1.0, -1.0])
    )
    assert float(losses.symlog(torch.tensor(1e4))) == pytest.approx(math.log(1e4 + 1))


def test_hl_gauss_over_symlog_bins_sums_to_one_and_reads_back_every_return():
    # The symlog candidate: 101 bins evenly spaced in symlog(value) over [-1e4, 1e4]: a two-hot-like
    # histogram of symlog(target) whose mean, symexp'd, is the target for CartPole's and Acrobot's
    # returns alike, with no per-task support.
    edges = torch.linspace(-math.log1p(1e4), math.log1p(1e4), 102)
    centres = (edges[:-1] + edges[1:]) / 2
    width = float(edges[1] - edges[0])
    returns = torch.tensor([-99.3, -62.5, -1.0, 0.0, 0.3, 17.0, 99.3])
    probs = losses.hl_gauss_target(losses.symlog(returns), edges, 0.75 * width)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7))
    torch.testing.assert_close(losses.symexp((probs * centres).sum(-1)), returns, rtol=1e-3, atol=1e-3)


def test_clamped_fraction_counts_the_targets_outside_the_support():
    targets = torch.tensor([-99.0, -5.0, 0.0, 50.0, 110.0, 111.0, float("inf"), 3.0])
    assert losses.clamped_fraction(targets, 0.0, 110.0) == 0.5  # -99, -5, 111 and inf; the edges are inside
    assert losses.clamped_fraction(targets[2:5], 0.0, 110.0) == 0.0
    assert losses.clamped_fraction(torch.zeros(0), 0.0, 1.0) == 0.0


@pytest.mark.parametrize("loss", ["c51", "hl_gauss"])
def test_a_distributional_target_reports_the_share_it_clamped_onto_a_narrow_support(loss):
    from learner import DistributionalConfig, LearnerConfig, make_q_loss

    config = LearnerConfig(loss=loss, distributional=DistributionalConfig(v_min=-1.0, v_max=1.0, num_bins=11))
    q_loss = make_q_loss(config, torch.device("cpu"))
    logits = torch.zeros(4, 2, 11)  # uniform over the atoms: every next value is 0
    reward = torch.tensor([0.5, -0.5, 3.0, -2.0])  # the last two leave [-1, 1]
    target = q_loss.target(logits, logits, reward, torch.full((4,), 0.99))
    assert target.clamped_fraction == pytest.approx(0.5)
    inside = q_loss.target(logits[:2], logits[:2], reward[:2], torch.full((2,), 0.99))
    assert inside.clamped_fraction == 0.0


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 7)])
def test_at_actions_takes_each_rows_action_with_the_values_and_gradients_of_indexing(shape):
    out = torch.randn(*shape, requires_grad=True)
    action = torch.tensor([2, 0, 1, 2, 2])
    weights = torch.randn(shape[:1] + shape[2:])
    (losses.at_actions(out, action) * weights).sum().backward()
    mine = out.grad.clone()
    out.grad = None
    indexed = out[torch.arange(len(action)), action]
    (indexed * weights).sum().backward()
    assert torch.equal(losses.at_actions(out, action), indexed)
    assert torch.equal(mine, out.grad)  # a repeated action (2) gets no more than its own rows' gradient
