"""Agents learn known values; resets really re-initialise; SAC's ensemble behaves as specified."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from learner import (
    ACTING_HEADS,
    AGENTS,
    ActionSpace,
    Agent,
    ArchitectureConfig,
    DistributionalConfig,
    LearnerConfig,
    OptimizerConfig,
    ResetConfig,
    SACAgent,
    SACConfig,
    TargetConfig,
    acting_head,
    make_agent,
)

GAMMA = 0.9


def chain_dataset():
    """A 5-state chain: action 1 moves right, 0 moves left (floor 0); entering state 4 pays 1 and
    terminates. Q*(s, right) = gamma**(3-s); Q*(s, left) = gamma**(1 + 3 - max(s-1, 0))."""
    obs, action, reward, next_obs, discount = [], [], [], [], []
    for s in range(4):
        for a in (0, 1):
            nxt = s + 1 if a == 1 else max(s - 1, 0)
            obs.append(np.eye(5)[s])
            next_obs.append(np.eye(5)[nxt])
            action.append(a)
            reward.append(1.0 if nxt == 4 else 0.0)
            discount.append(0.0 if nxt == 4 else GAMMA)
    q_star = np.array([[GAMMA ** (1 + 3 - max(s - 1, 0)), GAMMA ** (3 - s)] for s in range(4)])
    batch = {
        "obs": torch.tensor(np.array(obs), dtype=torch.float32),
        "action": torch.tensor(action),
        "reward": torch.tensor(reward, dtype=torch.float32),
        "next_obs": torch.tensor(np.array(next_obs), dtype=torch.float32),
        "discount": torch.tensor(discount, dtype=torch.float32),
    }
    return batch, q_star


CHAIN_SUPPORT = DistributionalConfig(v_min=-0.5, v_max=1.5, num_bins=41)
WIDE_SYMLOG_SUPPORT = DistributionalConfig(v_min=-1e4, v_max=1e4, num_bins=101, value_transform="symlog")
"""The symlog candidate of issue #23: one fixed wide range for every task."""


@pytest.mark.parametrize(
    ("loss", "support"),
    [("dqn", CHAIN_SUPPORT), ("c51", CHAIN_SUPPORT), ("hl_gauss", CHAIN_SUPPORT), ("hl_gauss", WIDE_SYMLOG_SUPPORT)],
    ids=["dqn", "c51", "hl_gauss", "hl_gauss-symlog-1e4"],
)
def test_learns_the_chain_mdp_to_its_known_q_star(loss, support):
    config = LearnerConfig(
        loss=loss,
        architecture=ArchitectureConfig(hidden_size=64),
        optimizer=OptimizerConfig(lr=3e-3, max_grad_norm=None),
        target=TargetConfig(update="hard", every=50),
        distributional=support,
        seed=1,
    )
    agent = make_agent(config, (5,), ActionSpace(num_actions=2), torch.device("cpu"))
    assert isinstance(agent, Agent)
    batch, q_star = chain_dataset()
    ones = torch.ones(8)
    for update in range(1, 1501):
        agent.update(batch, ones)
        agent.after_update(update)
    with torch.no_grad():
        q = agent.q_values(agent.online, torch.eye(5)[:4]).numpy()
    np.testing.assert_allclose(q, q_star, atol=0.05)


def test_sac_with_six_batched_critics_learns_a_one_step_bandit():
    config = LearnerConfig(
        loss="sac",
        architecture=ArchitectureConfig(hidden_size=64),
        optimizer=OptimizerConfig(lr=3e-3),
        sac=SACConfig(ensemble_size=6, ensemble_subset=2),
        seed=0,
    )
    agent = make_agent(config, (1,), ActionSpace(low=(-1.0,), high=(1.0,)), torch.device("cpu"))
    assert isinstance(agent, Agent)
    q = agent.critic(torch.zeros(7, 1), torch.zeros(7, 1))
    assert q.shape == (6, 7)  # six critics, one batched pass
    # A one-step bandit: reward peaks at a = 0.5; discount 0 (terminal).
    for _ in range(600):
        action = torch.rand(128, 1) * 2 - 1
        batch = {
            "obs": torch.zeros(128, 1),
            "action": action,
            "reward": 1.0 - 4.0 * (action[:, 0] - 0.5) ** 2,
            "next_obs": torch.zeros(128, 1),
            "discount": torch.zeros(128),
        }
        result = agent.update(batch, torch.ones(128))
        agent.after_update(1)
    with torch.no_grad():
        best, _ = agent.actor(torch.zeros(1, 1), deterministic=True)
    assert abs(float(best) - 0.5) < 0.15
    assert result.td_abs.shape == (128,)


def member_critic(ensemble, member: int) -> torch.nn.Sequential:
    """Member `member` of an EnsembleCritic as a plain torch MLP (nn.Linear, nn.LayerNorm, ReLU), its
    weights copied: the member-by-member computation the batched pass must equal."""
    layers = []
    for linear, norm in ensemble.hidden_layers():
        plain = torch.nn.Linear(*linear.weight.shape[1:])
        plain.weight.data, plain.bias.data = linear.weight[member].T.clone(), linear.bias[member, 0].clone()
        layer_norm = torch.nn.LayerNorm(norm.weight.shape[-1])
        layer_norm.weight.data, layer_norm.bias.data = norm.weight[member, 0].clone(), norm.bias[member, 0].clone()
        layers += [plain, layer_norm, torch.nn.ReLU()]
    head = torch.nn.Linear(*ensemble.head.weight.shape[1:])
    head.weight.data, head.bias.data = ensemble.head.weight[member].T.clone(), ensemble.head.bias[member, 0].clone()
    return torch.nn.Sequential(*layers, head)


def test_the_batched_critic_ensemble_equals_its_members_computed_one_by_one():
    from learner.networks import EnsembleCritic

    torch.manual_seed(0)
    ensemble = EnsembleCritic(obs_dim=3, action_dim=2, hidden_size=16, num_layers=2, members=5)
    with torch.no_grad():  # non-default LayerNorm affines, so that a member mix-up would show
        for _, norm in ensemble.hidden_layers():
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)
    obs, action = torch.randn(9, 3), torch.randn(9, 2)
    batched = ensemble(obs, action)
    one_by_one = torch.stack([member_critic(ensemble, e)(torch.cat([obs, action], 1)).squeeze(-1) for e in range(5)])
    assert batched.shape == (5, 9)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)
    # REDQ's target evaluates only the members it draws: the same values as those rows of the full pass.
    members = torch.tensor([3, 1])
    torch.testing.assert_close(ensemble(obs, action, members=members), batched[members], rtol=1e-5, atol=1e-5)


def test_frozen_critics_pass_the_actor_loss_to_the_actions_without_weight_gradients():
    from learner.agents import frozen
    from learner.networks import EnsembleCritic

    critic = EnsembleCritic(obs_dim=3, action_dim=1, hidden_size=8, num_layers=2, members=4)
    action = torch.randn(6, 1, requires_grad=True)
    parameters = list(critic.parameters())
    with frozen(parameters):
        critic(torch.randn(6, 3), action).mean().backward()
    assert action.grad is not None and action.grad.abs().sum() > 0
    assert all(p.grad is None for p in parameters)
    assert all(p.requires_grad for p in parameters)  # the critic loss trains them again after the block


def test_soft_target_update_moves_the_target_tau_of_the_way_to_the_online_network_and_hard_copies():
    from learner.optimization import update_target

    online, target = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    with torch.no_grad():
        for p in online.parameters():
            p.fill_(1.0)
        for p in target.parameters():
            p.fill_(0.0)
    update_target(online, target, TargetConfig(update="soft", tau=0.1), updates=1)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in target.parameters())
    assert all(torch.equal(p, torch.ones_like(p)) for p in online.parameters())  # the online net is untouched
    update_target(online, target, TargetConfig(update="hard", every=3), updates=2)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in target.parameters())  # not due
    update_target(online, target, TargetConfig(update="hard", every=3), updates=3)
    assert all(torch.equal(p, torch.ones_like(p)) for p in target.parameters())


def test_polyak_average_leaves_one_minus_tau_to_the_k_of_the_distance_after_k_steps():
    from learner.optimization import polyak_average

    online, average = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    with torch.no_grad():
        for p in online.parameters():
            p.fill_(1.0)
        for p in average.parameters():
            p.fill_(-1.0)
    for _ in range(3):
        polyak_average(average, online, tau=0.1)
    expected = 1.0 - 2.0 * 0.9**3  # distance 2 at the start, 0.9^3 of it left: -0.458
    assert all(torch.allclose(p, torch.full_like(p, expected)) for p in average.parameters())
    assert all(torch.equal(p, torch.ones_like(p)) for p in online.parameters())  # the online net is untouched


def averaged_agent(tau: float | None, **settings) -> Agent:
    config = LearnerConfig(
        loss="hl_gauss",
        distributional=CHAIN_SUPPORT,
        architecture=ArchitectureConfig(hidden_size=16),
        policy_average_tau=tau,
        seed=0,
        **settings,
    )
    return make_agent(config, (5,), ActionSpace(num_actions=2), torch.device("cpu"))


def test_a_policy_average_agent_publishes_the_average_moved_tau_of_the_way_after_each_update():
    agent = averaged_agent(0.25)
    batch, _ = chain_dataset()
    published = agent.policy_state()
    initial = {k: v.clone() for k, v in agent.online.state_dict().items()}
    assert all(torch.equal(published[k], initial[k]) for k in initial)  # it starts at the online network
    for update in (1, 2):
        before = {k: v.clone() for k, v in agent.policy_state().items()}
        agent.update(batch, torch.ones(8))
        agent.after_update(update)
        online = agent.online.state_dict()
        for name, value in agent.policy_state().items():
            torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * online[name], msg=name)
    assert any(not torch.equal(agent.policy_state()[k], online[k]) for k in online)  # not the online network
    averaged = {id(p) for p in agent.policy_average.parameters()}
    assert not any(p.requires_grad for p in agent.policy_average.parameters())  # never trained by a gradient
    assert not averaged & {id(p) for group in agent.optimizer.param_groups for p in group["params"]}

    unaveraged = averaged_agent(None)
    unaveraged.update(batch, torch.ones(8))
    unaveraged.after_update(1)
    online = unaveraged.online.state_dict()
    assert all(torch.equal(v, online[k]) for k, v in unaveraged.policy_state().items())  # null: the online net


def test_a_checkpoint_keeps_the_policy_average_and_one_without_it_starts_it_at_the_online_network():
    agent = averaged_agent(0.25)
    batch, _ = chain_dataset()
    for update in range(1, 4):
        agent.update(batch, torch.ones(8))
        agent.after_update(update)
    restored = averaged_agent(0.25, batch_size=8)
    restored.load_state_dict(agent.state_dict())
    for name, value in agent.policy_state().items():
        torch.testing.assert_close(restored.policy_state()[name], value, msg=name)

    older = agent.state_dict()
    del older["policy_average"]  # a run from before policy_average_tau
    restored.load_state_dict(older)
    for name, value in agent.online.state_dict().items():
        torch.testing.assert_close(restored.policy_state()[name], value, msg=name)


def test_policy_average_tau_is_refused_outside_0_1_and_for_losses_without_a_q_network_policy():
    with pytest.raises(ValueError, match="policy_average_tau=0.0: must be in"):
        LearnerConfig(policy_average_tau=0.0)
    with pytest.raises(ValueError, match="policy_average_tau=0.005: needs loss 'dqn', 'c51' or 'hl_gauss'"):
        LearnerConfig(loss="sac", policy_average_tau=0.005)


def sac_agent(ensemble_size: int, ensemble_subset: int, **sac) -> SACAgent:
    config = LearnerConfig(
        loss="sac",
        architecture=ArchitectureConfig(hidden_size=16),
        sac=SACConfig(ensemble_size=ensemble_size, ensemble_subset=ensemble_subset, **sac),
        seed=0,
    )
    return make_agent(config, (3,), ActionSpace(low=(-2.0,), high=(2.0,)), torch.device("cpu"))


def constant_critics(critic, values: torch.Tensor) -> None:
    """Each member of `critic` returns its entry of `values` whatever the input (head weights 0)."""
    with torch.no_grad():
        critic.head.weight.zero_()
        critic.head.bias.copy_(values.view(-1, 1, 1))


@pytest.mark.parametrize(("ensemble_size", "ensemble_subset"), [(5, 2), (2, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_target_bootstraps_the_minimum_of_the_drawn_target_critics_minus_alpha_log_prob(
    ensemble_size, ensemble_subset, seed
):
    agent = sac_agent(ensemble_size, ensemble_subset, init_temperature=0.3)
    target_values = torch.tensor([4.0, -1.0, 2.5, 0.5, 3.0])[:ensemble_size]
    constant_critics(agent.critic_target, target_values)
    constant_critics(agent.critic, target_values + 100.0)  # the online critics are not bootstrapped from
    batch = {
        "reward": torch.randn(8),
        "next_obs": torch.randn(8, 3),
        "discount": torch.tensor([0.9, 0.9, 0.0, 0.5, 0.9, 0.9, 0.9, 0.25]),
    }
    alpha = agent.log_alpha.exp().detach()
    torch.manual_seed(seed)
    target = agent.td_target(batch, alpha)

    torch.manual_seed(seed)  # the same draws: a' ~ pi(s'), then the members
    with torch.no_grad():
        _, next_log_prob = agent.actor(batch["next_obs"])
    drawn = torch.randperm(ensemble_size)[:ensemble_subset] if ensemble_subset < ensemble_size else slice(None)
    assert next_log_prob.abs().min() > 1e-3  # alpha * log pi has a visible share of the target
    expected = batch["reward"] + batch["discount"] * (target_values[drawn].min() - alpha * next_log_prob)
    torch.testing.assert_close(target, expected)
    # The update regresses every online critic towards that target: td_abs is |mean Q - target|.
    full_batch = {**batch, "obs": torch.randn(8, 3), "action": torch.rand(8, 1)}
    torch.manual_seed(seed)
    result = agent.update(full_batch, torch.ones(8))
    online_mean = float((target_values + 100.0).mean())
    np.testing.assert_allclose(result.td_abs, (online_mean - expected).abs().numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("ensemble_size", "ensemble_subset", "actor_q", "expected"),
    [
        (2, 2, "auto", "min"),
        (10, 2, "auto", "mean"),
        (3, 3, "auto", "min"),
        (10, 2, "min", "min"),
        (2, 2, "mean", "mean"),
    ],
)
def test_sac_actor_follows_the_critics_minimum_like_sac_unless_the_target_draws_a_subset(
    ensemble_size, ensemble_subset, actor_q, expected
):
    agent = sac_agent(ensemble_size, ensemble_subset, actor_q=actor_q)
    values = torch.linspace(-2.0, 5.0, ensemble_size)
    constant_critics(agent.critic, values)
    obs, alpha = torch.randn(8, 3), torch.tensor(0.3)
    torch.manual_seed(0)
    loss, log_prob = agent.actor_loss(obs, alpha)
    q = values.min() if expected == "min" else values.mean()
    torch.testing.assert_close(loss, (alpha * log_prob - q).mean())


def test_sac_target_entropy_is_minus_action_dim_for_actions_scaled_to_unit_bounds():
    # SB3's -action_dim is of actions in [-1, 1]; the actor's log-probability is of env actions.
    pendulum = sac_agent(2, 2)  # bounds [-2, 2]: entropy log 2 higher than in [-1, 1]
    assert pendulum.target_entropy == pytest.approx(-1.0 + np.log(2.0))
    config = LearnerConfig(loss="sac", architecture=ArchitectureConfig(hidden_size=8))
    unit = make_agent(config, (3,), ActionSpace(low=(-1.0,) * 3, high=(1.0,) * 3), torch.device("cpu"))
    assert unit.target_entropy == pytest.approx(-3.0)


def test_sac_actor_step_leaves_the_critic_gradients_of_the_critic_step_unchanged():
    agent = sac_agent(3, 2)
    after_critic_step = []
    agent.critic_optimizer.register_step_post_hook(
        lambda optimizer, args, kwargs: after_critic_step.append([p.grad.clone() for p in agent.critic_parameters])
    )
    batch = {
        "obs": torch.randn(16, 3),
        "action": torch.rand(16, 1) * 4 - 2,
        "reward": torch.randn(16),
        "next_obs": torch.randn(16, 3),
        "discount": torch.full((16,), 0.9),
    }
    agent.update(batch, torch.ones(16))
    assert len(after_critic_step) == 1
    for parameter, grad in zip(agent.critic_parameters, after_critic_step[0], strict=True):
        assert torch.equal(parameter.grad, grad)
        assert parameter.requires_grad


def test_frozen_restores_each_parameters_own_requires_grad():
    from learner.agents import frozen

    trained, fixed = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2), requires_grad=False)
    with frozen([trained, fixed]):
        assert not trained.requires_grad and not fixed.requires_grad
    assert trained.requires_grad and not fixed.requires_grad


class FirstLayoutEnsembleCritic(torch.nn.Module):
    """EnsembleCritic as the first SAC checkpoints saved it (before `members`): the layout an old
    run's checkpoint holds."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_size: int, num_layers: int, members: int):
        from learner.networks import EnsembleLayerNorm, EnsembleLinear

        super().__init__()
        layers = []
        for i in range(num_layers):
            in_dim = obs_dim + action_dim if i == 0 else hidden_size
            layers += [EnsembleLinear(members, in_dim, hidden_size), EnsembleLayerNorm(members, hidden_size)]
            layers.append(torch.nn.ReLU())
        self.body = torch.nn.Sequential(*layers)
        self.head = EnsembleLinear(members, hidden_size, 1)
        self.members = members

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs.flatten(1).float(), action.float()], dim=-1)
        return self.head(self.body(x.unsqueeze(0).expand(self.members, *x.shape))).squeeze(-1)


def test_a_critic_and_its_adam_state_saved_in_the_first_layout_load_and_train_on(tmp_path):
    from learner.networks import EnsembleCritic

    torch.manual_seed(0)
    obs, action, target = torch.randn(16, 3), torch.randn(16, 1), torch.randn(16)

    def train(critic, optimizer) -> None:
        optimizer.zero_grad()
        ((critic(obs, action) - target) ** 2).mean().backward()
        optimizer.step()

    old = FirstLayoutEnsembleCritic(3, 1, 16, 2, members=3)
    old_optimizer = torch.optim.Adam(old.parameters(), lr=1e-2)
    for _ in range(3):
        train(old, old_optimizer)
    torch.save({"critic": old.state_dict(), "optimizer": old_optimizer.state_dict()}, tmp_path / "old.pt")

    saved = torch.load(tmp_path / "old.pt", weights_only=True)
    new = EnsembleCritic(3, 1, 16, 2, members=3)
    new_optimizer = torch.optim.Adam(new.parameters(), lr=1e-2)
    new.load_state_dict(saved["critic"])
    new_optimizer.load_state_dict(saved["optimizer"])  # positional: each moment must meet its own tensor
    torch.testing.assert_close(new(obs, action), old(obs, action))
    train(old, old_optimizer)
    train(new, new_optimizer)
    for name, value in old.state_dict().items():
        torch.testing.assert_close(new.state_dict()[name], value, msg=name)


def test_reset_reinitialises_parameters_and_optimizer_state():
    config = LearnerConfig(
        architecture=ArchitectureConfig(hidden_size=32),
        resets=ResetConfig(every=10, modules="head"),
        policy_average_tau=0.5,
        seed=3,
    )
    agent = make_agent(config, (5,), ActionSpace(num_actions=2), torch.device("cpu"))
    batch, _ = chain_dataset()
    for update in range(1, 10):
        agent.update(batch, torch.ones(8))
        assert not agent.after_update(update)
    agent.update(batch, torch.ones(8))
    head_before = agent.online.head.weight.detach().clone()
    torso_before = [p.detach().clone() for p in agent.online.torso.parameters()]
    assert all(p in agent.optimizer.state for p in agent.online.head.parameters())

    assert agent.after_update(10)  # the 10th update resets the head
    assert not torch.allclose(agent.online.head.weight, head_before)
    for before, after in zip(torso_before, agent.online.torso.parameters(), strict=True):
        torch.testing.assert_close(before, after.detach())  # the torso is kept
    assert all(p not in agent.optimizer.state for p in agent.online.head.parameters())
    assert all(p in agent.optimizer.state for p in agent.online.torso.parameters())
    torch.testing.assert_close(agent.target.head.weight, agent.online.head.weight)
    torch.testing.assert_close(agent.policy_average.head.weight, agent.online.head.weight)  # restarts with it

    agent.reset("all")
    assert not agent.optimizer.state


def test_loss_that_does_not_fit_the_action_space_is_refused():
    with pytest.raises(ValueError, match="learner.loss='sac' needs a continuous"):
        make_agent(LearnerConfig(loss="sac"), (4,), ActionSpace(num_actions=2), torch.device("cpu"))
    with pytest.raises(ValueError, match="learner.loss='dqn' needs a discrete"):
        make_agent(LearnerConfig(), (4,), ActionSpace(low=(-1.0,), high=(1.0,)), torch.device("cpu"))


def test_config_refuses_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="v_max"):
        DistributionalConfig(v_min=1.0, v_max=0.0)
    with pytest.raises(ValueError, match="ensemble_subset"):
        SACConfig(ensemble_size=4, ensemble_subset=5)
    with pytest.raises(ValueError, match="target_update_every"):
        TargetConfig(every=0)
    assert dataclasses.replace(LearnerConfig(), updates_per_env_step=0.5).samples_per_insert == 128.0


def test_every_discrete_loss_has_an_acting_head_and_a_continuous_one_is_refused():
    assert set(ACTING_HEADS) == {loss for loss, agent in AGENTS.items() if agent.discrete}
    for loss in ACTING_HEADS:
        head = acting_head(LearnerConfig(loss=loss, distributional=CHAIN_SUPPORT))
        out = torch.zeros(3, 2 * head.bins)
        assert head.values(out.view(3, 2, head.bins) if head.bins > 1 else out).shape == (3, 2)
    with pytest.raises(ValueError, match="learner.loss='sac' needs a continuous"):
        acting_head(LearnerConfig(loss="sac"))
    with pytest.raises(ValueError, match="'auto' is derived from the env by `qfleet train`"):
        acting_head(LearnerConfig(loss="hl_gauss"))  # an unresolved support names what resolves it


def test_actors_policy_does_not_import_the_agents():
    # learner.Policy is imported by every actor process: it needs the acting heads, not the
    # agents, their optimizers and the offline learners.
    code = "import sys, learner.policy; print(sorted(m for m in sys.modules if m.startswith('learner.')))"
    modules = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "learner.agents" not in modules and "learner.offline_agents" not in modules
    assert "learner.acting" in modules
