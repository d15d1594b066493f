"""The learner's update made cheaper with the same maths: fused Adam follows torch's for-loop Adam,
skipping the clip's multiply by 1 leaves the gradients `clip_grad_norm_` would leave, and a value
head's unreshaped output is the reshaped one."""

import copy

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


def test_step_near_the_limit_scales_by_torchs_own_factor():
    """Just below max_grad_norm the clip factor is computed by torch, not assumed to be 1."""
    reference, ours = network(), network()
    batch_loss(reference, 0).backward()
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()]))
    limit = norm * 1.0002  # within UNCLIPPED_BELOW of the norm
    reference_sgd = torch.optim.SGD(reference.parameters(), lr=1.0)
    torch.nn.utils.clip_grad_norm_(list(reference.parameters()), limit)
    reference_sgd.step()

    step(torch.optim.SGD(ours.parameters(), lr=1.0), batch_loss(ours, 0), list(ours.parameters()), limit)

    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.equal(mine, theirs)


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


def test_a_dqn_agent_resumes_the_adam_state_of_a_for_loop_checkpoint():
    """Checkpoints written before the fused kernel load, and training continues as the for-loop
    Adam would (on the kernel the checkpoint names)."""
    config = LearnerConfig(architecture=ArchitectureConfig(hidden_size=32), seed=1)
    space = ActionSpace(num_actions=2)
    old = make_agent(config, (4,), space, torch.device("cpu"))
    old.optimizer = torch.optim.Adam(old.parameters, lr=config.optimizer.lr)  # as written before
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
    saved = copy.deepcopy(old.state_dict())

    resumed = make_agent(config, (4,), space, torch.device("cpu"))
    resumed.load_state_dict(saved)
    for agent in (old, resumed):
        agent.update(batch, torch.ones(16))
    for mine, theirs in zip(resumed.online.parameters(), old.online.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


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
