"""The learner's update made cheaper with the same maths: fused Adam follows torch's for-loop Adam,
skipping the clip's multiply by 1 leaves the gradients `clip_grad_norm_` would leave, and a value
head's unreshaped output is the reshaped one."""

import copy
import math

import pytest
import torch

from learner import ActionSpace, ArchitectureConfig, LearnerConfig, adam, make_agent
from learner.optimization import step


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def batch_loss(net: torch.nn.Module, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 4, generator=generator), torch.randn(16, 2, generator=generator) * scale
    return ((net(x) - y) ** 2).mean()


@pytest.mark.parametrize(
    ("max_grad_norm", "scale"),
    [(0.05, 1.0), (1e6, 1.0), (None, 1.0), (1.0, 30.0)],
    ids=["clipping", "far-below-the-limit", "no-limit", "large-gradients"],
)
def test_step_leaves_exactly_the_parameters_clip_grad_norm_leaves(max_grad_norm, scale):
    reference, ours = network(), network()
    reference_adam = torch.optim.Adam(reference.parameters(), lr=1e-2)
    our_adam = torch.optim.Adam(ours.parameters(), lr=1e-2)
    parameters = list(ours.parameters())
    for seed in range(20):
        reference_adam.zero_grad(set_to_none=True)
        batch_loss(reference, seed, scale).backward()
        grads = [p.grad for p in reference.parameters()]
        expected_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(reference.parameters()), max_grad_norm)
        reference_adam.step()

        norm = step(our_adam, batch_loss(ours, seed, scale), parameters, max_grad_norm)

        assert norm == pytest.approx(expected_norm, rel=1e-6)
        for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
            assert torch.equal(mine, theirs)


def one_sgd_step(net: torch.nn.Module, limit: float | None, loss_scale: float, clip) -> None:
    """One SGD step (lr 1, so that a clip factor below 1 shows in the parameters) on the scaled loss."""
    sgd = torch.optim.SGD(net.parameters(), lr=1.0)
    loss = batch_loss(net, 0) * loss_scale
    if clip is None:
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        if limit is not None:
            torch.nn.utils.clip_grad_norm_(list(net.parameters()), limit)
        sgd.step()
    else:
        clip(sgd, loss, net.parameters(), limit)  # a generator, as `net.parameters()` gives


def unscaled_norm() -> float:
    net = network()
    batch_loss(net, 0).backward()
    return float(torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]))


@pytest.mark.parametrize(
    ("norm_over_limit", "limit", "clipped"),
    [
        (None, "norm + 5e-7", True),  # factor (norm + 5e-7) / (norm + 1e-6): just below 1
        (1.2, None, True),  # the limit at the unscaled norm / 1.2
        (0.9985, 1e-5, True),  # norm + 1e-6 is above the limit: torch scales by ~0.91
        (0.984, 3e-5, True),  # by ~0.95
        (0.9, 1e-5, False),  # 1e-5 / (0.9e-5 + 1e-6) = 1 exactly
        (0.5, 1.0, False),
    ],
    ids=[
        "a-hair-above-the-norm",
        "a-sixth-below-the-norm",
        "tiny-limit-0.9985",
        "tiny-limit-0.984",
        "tiny-limit-0.9",
        "half",
    ],
)
def test_step_near_the_limit_scales_by_torchs_own_factor(norm_over_limit, limit, clipped):
    """Wherever clip_grad_norm_'s factor may be below 1 it is torch's, not assumed to be 1."""
    norm = unscaled_norm()
    if limit == "norm + 5e-7":
        loss_scale, limit = 1.0, norm + 5e-7
    elif limit is None:
        loss_scale, limit = 1.0, norm / norm_over_limit
    else:  # scale the loss so that the norm is `norm_over_limit` of the limit
        loss_scale = norm_over_limit * limit / norm
    reference, unclipped, ours = network(), network(), network()
    one_sgd_step(reference, limit, loss_scale, clip=None)
    one_sgd_step(unclipped, None, loss_scale, clip=None)
    one_sgd_step(ours, limit, loss_scale, clip=step)

    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    differs = [not torch.equal(a, b) for a, b in zip(reference.parameters(), unclipped.parameters(), strict=True)]
    assert any(differs) == clipped  # where torch scales, the case really is one it scales


def test_a_nan_gradient_turns_every_parameter_nan_as_clip_grad_norm_does():
    """One NaN gradient makes the global norm NaN; torch then scales every gradient by NaN."""
    reference, ours = network(), network()

    def loss(net: torch.nn.Module) -> torch.Tensor:
        return batch_loss(net, 0) + net[2].bias[0] * float("nan")

    reference_sgd = torch.optim.SGD(reference.parameters(), lr=1.0)
    loss(reference).backward()
    torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 1.0)
    reference_sgd.step()

    norm = step(torch.optim.SGD(ours.parameters(), lr=1.0), loss(ours), ours.parameters(), 1.0)

    assert math.isnan(norm)
    assert all(torch.isnan(p).all() for p in reference.parameters())  # what torch does
    assert all(torch.isnan(p).all() for p in ours.parameters())


def test_fused_adam_makes_the_for_loop_adams_updates():
    fused_net, loop_net = network(), network()
    fused, loop = adam(fused_net.parameters(), 1e-3), torch.optim.Adam(loop_net.parameters(), lr=1e-3)
    assert fused.param_groups[0]["fused"]
    for seed in range(50):
        for net, optimizer in ((fused_net, fused), (loop_net, loop)):
            optimizer.zero_grad()
            batch_loss(net, seed).backward()
            optimizer.step()
    moved = [
        (after - before).abs().max()
        for after, before in zip(loop_net.parameters(), network().parameters(), strict=True)
    ]
    assert min(moved) > 1e-3  # the updates compared are not all tiny
    for mine, theirs in zip(fused_net.parameters(), loop_net.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


CONFIG = LearnerConfig(architecture=ArchitectureConfig(hidden_size=32), seed=1)
SPACE = ActionSpace(num_actions=2)


def for_loop_checkpoint():
    """A CPU agent on the for-loop Adam (as written before `adam`) after 3 updates, its saved
    state, and the batch it trained on."""
    old = make_agent(CONFIG, (4,), SPACE, torch.device("cpu"))
    old.optimizer = torch.optim.Adam(old.parameters, lr=CONFIG.optimizer.lr)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "obs": torch.randn(16, 4, generator=generator),
        "action": torch.randint(0, 2, (16,), generator=generator),
        "reward": torch.randn(16, generator=generator),
        "next_obs": torch.randn(16, 4, generator=generator),
        "discount": torch.full((16,), 0.99),
    }
    for _ in range(3):
        old.update(batch, torch.ones(16))
    return old, copy.deepcopy(old.state_dict()), batch


def test_a_dqn_agent_resumes_the_adam_state_of_a_for_loop_checkpoint():
    """Checkpoints written before the fused kernel load onto it (not onto the slower for-loop kernel
    they name for good), and training continues as the for-loop Adam would, to float32 rounding."""
    old, saved, batch = for_loop_checkpoint()
    resumed = make_agent(CONFIG, (4,), SPACE, torch.device("cpu"))
    resumed.load_state_dict(saved)
    assert all(group["fused"] for group in resumed.optimizer.param_groups)
    assert all(kept["step"].dtype == torch.float32 for kept in resumed.optimizer.state.values())
    for _ in range(3):
        for agent in (old, resumed):
            agent.update(batch, torch.ones(16))
    assert all(int(kept["step"]) == 6 for kept in resumed.optimizer.state.values())  # the counts carried over
    for mine, theirs in zip(resumed.online.parameters(), old.online.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_for_loop_cpu_checkpoint_resumes_on_cuda_with_its_step_counts_on_the_gpu():
    """The fused CUDA kernel wants its step counts on its parameters' device; a CPU checkpoint's
    are CPU tensors (or numbers), which the kernel refuses: load_adam_state moves them."""
    _, saved, batch = for_loop_checkpoint()
    cuda = torch.device("cuda", 0)
    resumed = make_agent(CONFIG, (4,), SPACE, cuda)
    resumed.load_state_dict(saved)
    assert all(group["fused"] for group in resumed.optimizer.param_groups)
    resumed.update({key: value.to(cuda) for key, value in batch.items()}, torch.ones(16, device=cuda))
    steps = [kept["step"] for kept in resumed.optimizer.state.values()]
    assert steps and all(step.device == cuda and step.dtype == torch.float32 for step in steps)
    assert all(int(step) == 4 for step in steps)  # the counts carried over, and the update ran


@pytest.mark.parametrize("num_actions", [1, 4])
def test_a_value_head_gives_the_head_layers_outputs_and_gradients_unchanged(num_actions):
    """The one-value-per-action Q network returns its head's [B, A] directly (no view for
    autograd to track): the same values and gradients as the reshaped path of distributional heads."""
    from learner import build_q_network

    architecture = ArchitectureConfig(hidden_size=16, num_layers=2, layer_norm=False)
    torch.manual_seed(0)
    network = build_q_network((3, 2), num_actions, 1, architecture)
    obs = torch.randn(5, 3, 2)
    out = network(obs)
    reference = network.head(network.torso(obs)).view(-1, num_actions, 1).squeeze(-1)
    assert out.shape == (5, num_actions)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    (gradient,) = torch.autograd.grad(out.square().sum(), network.head.weight)
    (expected,) = torch.autograd.grad(reference.square().sum(), network.head.weight)
    torch.testing.assert_close(gradient, expected, rtol=0, atol=0)
