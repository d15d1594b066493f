"""Recording by steps and with a per-episode epsilon spread (`qfleet record --steps --epsilon-max`,
`qfleet bench offline --policy --record-steps --epsilon LO,HI`): each episode keeps the epsilon it
drew as it started, the recorder stamps that one, and the options refuse what they cannot do."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from system.datasets import EpisodeRecorder, PolicyActions, RecordSettings, record_episodes


class FixedPolicy:
    """Always action 0 of 4 when greedy (epsilon 0): every other action is exploration."""

    space = SimpleNamespace(num_actions=4, discrete=True)
    version = 7

    def act(self, obs, epsilon, rng):
        assert epsilon == 0.0  # the spread explores itself, per env
        return np.zeros(len(obs), np.int64)


def test_each_episode_keeps_the_epsilon_it_drew_as_it_started():
    actions = PolicyActions(FixedPolicy(), 0.1, np.random.default_rng(0), epsilon_max=0.9)
    obs = np.zeros((3, 2))
    actions.act(obs, [{}] * 3, np.ones(3, bool))
    first = [actions.episode_epsilon(i) for i in range(3)]
    assert all(0.1 <= e <= 0.9 for e in first) and len(set(first)) == 3
    actions.act(obs, [{}] * 3, np.array([False, True, False]))  # env 1 starts a new episode
    now = [actions.episode_epsilon(i) for i in range(3)]
    assert now[0] == first[0] and now[2] == first[2] and now[1] != first[1]


def test_an_episodes_random_actions_come_at_its_own_epsilon():
    actions = PolicyActions(FixedPolicy(), 0.0, np.random.default_rng(1), epsilon_max=1.0)
    obs = np.zeros((2, 2))
    actions.act(obs, [{}] * 2, np.ones(2, bool))
    actions._episode[:] = [0.0, 1.0]  # one greedy episode, one uniformly random one
    taken = np.stack([actions.act(obs, [{}] * 2, np.zeros(2, bool)) for _ in range(400)])
    assert (taken[:, 0] == 0).all()
    assert 0.6 < np.mean(taken[:, 1] != 0) < 0.9  # 3/4 of uniform draws are not the greedy action


def test_without_a_spread_the_policy_explores_at_the_fixed_epsilon():
    class Recording(FixedPolicy):
        def act(self, obs, epsilon, rng):
            self.epsilon = epsilon
            return np.zeros(len(obs), np.int64)

    policy = Recording()
    actions = PolicyActions(policy, 0.3, np.random.default_rng(0))
    actions.act(np.zeros((2, 2)), [{}] * 2, np.ones(2, bool))
    assert policy.epsilon == 0.3 and actions.episode_epsilon(1) == 0.3


def test_the_recorder_stamps_each_episodes_own_epsilon():
    written = []
    writer = SimpleNamespace(add=written.append)
    per_env = {0: 0.2, 1: 0.7}
    recorder = EpisodeRecorder(writer, np.zeros((2, 3)), actor_id=0, epsilon=per_env.__getitem__)
    done = np.array([True, True])
    recorder.add(np.array([0, 1]), np.ones(2), np.ones((2, 3)), np.zeros((2, 3)), done, ~done, ~done, 0)
    assert [e.metadata["epsilon"] for e in written] == [0.2, 0.7]


class ScheduledVector:
    """Two envs whose episodes last the given numbers of steps, in turn (reward 1 a step); every
    observation is the env's index, so a written episode names the env that played it."""

    num_envs = 2
    LENGTHS = ([2, 5, 1, 3, 2, 4], [4, 1, 3, 2, 5, 1])

    def __init__(self):
        self.infos = [{}, {}]
        self.episode, self.step_in_episode = [0, 0], [0, 0]

    def reset(self):
        return np.array([[0.0], [1.0]])

    def step(self, actions):
        ends = np.zeros(2, bool)
        for env in range(2):
            self.step_in_episode[env] += 1
            if self.step_in_episode[env] == self.LENGTHS[env][self.episode[env] % 6]:
                ends[env], self.step_in_episode[env] = True, 0
                self.episode[env] += 1
        obs = self.reset()
        return SimpleNamespace(
            obs=obs, reward=np.ones(2), final_obs=obs, terminated=ends, truncated=~ends & False, aborted=~ends & False
        )

    def close(self):
        pass


def test_record_episodes_writes_each_episode_with_the_epsilon_it_was_played_with():
    """Not the next episode's (drawn as the env starts again) nor another env's: each written
    episode's epsilon is the one its env drew at that episode's first step."""

    class LoggedDraws(PolicyActions):
        draws: tuple[list[float], list[float]]  # per env, each episode's draw as it started

        def act(self, obs, infos, starts):
            actions = super().act(obs, infos, starts)
            for env in np.flatnonzero(starts):
                self.draws[env].append(self.episode_epsilon(env))
            return actions

    chooser = LoggedDraws(FixedPolicy(), 0.05, np.random.default_rng(3), epsilon_max=0.5)
    chooser.draws = ([], [])
    written = []
    writer = SimpleNamespace(add=written.append, steps=0, flush=lambda: None)
    settings = RecordSettings(episodes=9, epsilon=0.05, epsilon_max=0.5, progress_every_s=1e9)
    record_episodes(writer, lambda i, seed: ScheduledVector(), lambda i, vector: chooser, settings)
    assert len(written) >= 9
    for env in (0, 1):
        mine = [e for e in written if e.observations[0][0] == env]
        assert [len(e.actions) for e in mine] == ScheduledVector.LENGTHS[env][: len(mine)]
        assert [e.metadata["epsilon"] for e in mine] == chooser.draws[env][: len(mine)]
        assert len(chooser.draws[env]) - len(mine) in (0, 1)  # at most one unfinished episode after them
    assert len({e.metadata["epsilon"] for e in written}) == len(written)  # every episode drew its own


def test_a_recording_stops_at_its_episodes_or_its_steps_whichever_comes_first():
    assert RecordSettings(steps=100).done(episodes=1, steps=100)
    assert not RecordSettings(steps=100).done(episodes=1000, steps=99)
    assert RecordSettings(episodes=5, steps=100).done(episodes=5, steps=3)
    assert not RecordSettings(episodes=5).done(episodes=4, steps=10_000)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "episodes=None: give --episodes or --steps"),
        ({"steps": 0}, "steps=0: must be >= 1"),
        ({"steps": 5, "epsilon": 0.5, "epsilon_max": 0.4}, "epsilon_max=0.4: must be in [epsilon, 1]"),
        ({"steps": 5, "epsilon_max": 1.5}, "epsilon_max=1.5"),
        ({"steps": 5, "behaviour": "instruction", "epsilon_max": 0.5}, "only with --behaviour network"),
    ],
)
def test_record_settings_refuse_what_they_cannot_do(settings, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        RecordSettings(**settings)


MINATAR_ONLINE = "configs/minatar_breakout_offline_online.yaml"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilon", "0.1,0.5"], "--epsilon, --record-steps: only with --policy"),
        (["--policy", "runs/x", "--epsilon", "0.1,0.5,0.9"], "one value, or LO,HI"),
        (["--policy", "runs/x", "--epsilon", "0.6,0.5", "--record-steps", "10"], "LO <= HI"),
        (["--policy", "runs/x", "--online"], "record the dataset first"),
        (["--config", "configs/minatar_breakout_offline_online.yaml", "--online"], "--scratch-config FILE"),
        (["--config", MINATAR_ONLINE, "--online", "--no-scratch"], "give --threshold"),
        (["--online", "--no-scratch", "--scratch-config", "configs/cartpole.yaml"], "give one"),
        (["--no-scratch"], "--no-scratch: only with --online"),
        (["--config", "configs/minatar_breakout_iql.yaml"], "give --policy RUN_DIR"),
        # the table's learners on a DQN's settings: the hard target copies that collapsed Best-of-N
        (["--config", MINATAR_ONLINE, "--dataset", "d-v0"], "learner.loss is 'hl_gauss'"),
        (["--online", "--best-of-n", "4"], "--best-of-n: not with --online"),
        (["--dataset", "d-v0", "--episodes", "10"], "--episodes with --dataset: nothing is recorded"),
        (["--config", "configs/minatar_breakout_iql.yaml", "--policy", "no/such/run"], "not a qfleet run directory"),
    ],
)
def test_bench_offline_refuses_recording_and_arm_options_that_do_not_fit(args, message, capsys):
    from system.cli import main

    assert main(["bench", "offline", *args, "--updates", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_online_with_another_config_takes_that_configs_budget_not_cartpoles(monkeypatch):
    from system.bench import offline
    from system.cli import main

    seen = {}
    monkeypatch.setattr(offline, "run_offline_bench", lambda *args: seen.setdefault("online", args[7]) and 0)
    args = ["bench", "offline", "--online", "--config", MINATAR_ONLINE, "--no-scratch", "--threshold", "16"]
    assert main(args) == 0
    budget = seen["online"]  # configs/minatar_breakout_offline_online.yaml's train.* and offline.updates
    assert (budget.total_env_steps, budget.eval_every_steps, budget.offline_updates) == (125_000, 12_500, 10_000)
    assert (budget.threshold, budget.config) == (16, MINATAR_ONLINE)
    seen.clear()
    assert main(["bench", "offline", "--online", "--no-scratch"]) == 0  # the default config: CartPole's figures
    assert (seen["online"].total_env_steps, seen["online"].offline_updates, seen["online"].threshold) == (
        50_000,
        2000,
        475,
    )


def test_bench_offline_refuses_a_policy_run_of_another_env_before_recording(tmp_path, capsys):
    from system.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("env:\n  id: CartPole-v1\n")
    data = tmp_path / "data"
    args = ["bench", "offline", "--config", "configs/minatar_breakout_iql.yaml", "--policy", str(run)]
    assert main([*args, "--record-steps", "50", "--datasets-dir", str(data), "--updates", "1"]) == 2
    err = capsys.readouterr().err
    assert "plays CartPole-v1" in err and "MinAtar/Breakout-v0" in err and "Traceback" not in err
    assert not data.exists()  # refused before anything was recorded


def test_bench_offline_policy_options_become_qfleet_records_settings():
    from system.cli.bench import _record_settings

    def parsed(**given):
        defaults = {"policy": "runs/x", "online": False, "epsilon": None, "record_steps": None, "episodes": None}
        return _record_settings(SimpleNamespace(**(defaults | given)))

    assert parsed(epsilon="0.05,0.5", record_steps=200_000) == RecordSettings(
        episodes=None, steps=200_000, epsilon=0.05, epsilon_max=0.5
    )
    assert parsed() == RecordSettings(episodes=300, epsilon=0.1)
    assert parsed(policy=None) is None


def test_bench_offline_records_from_a_runs_checkpoint_and_trains_every_learner_on_it(tmp_path, capsys):
    # A run directory as `qfleet train` leaves it (config.yaml, a learner checkpoint), on CartPole.
    import json

    import torch

    from learner import checkpoint, make_agent
    from learner.checkpoint import rng_state
    from system.cli import main
    from system.config import env_spaces, load_config
    from system.datasets import load_recorded_episodes

    config_text = "env:\n  id: CartPole-v1\n  num_envs: 2\nlearner:\n  hidden_size: 16\n  batch_size: 8\n"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config_text)
    config = load_config(run / "config.yaml", [])
    spaces = env_spaces(config.env)
    agent = make_agent(config.learner, spaces.obs_shape, spaces.action_space, torch.device("cpu"))
    state = {
        "agent": agent.state_dict(),
        "counters": {"version": 3, "updates": 30},
        "rng": rng_state(np.random.default_rng()),
    }
    checkpoint.save(run / "checkpoints", state, 30)
    learners_config = tmp_path / "learners.yaml"
    learners_config.write_text(config_text + "  loss: iql\n")  # the offline learners' own settings
    output = tmp_path / "table.json"
    args = ["bench", "offline", "--config", str(learners_config), "--policy", str(run), "--record-steps", "120"]
    args += ["--epsilon", "0.2,0.6", "--datasets-dir", str(tmp_path / "data"), "--dataset", "cp/bench-v0"]
    args += ["--updates", "3", "--eval-episodes", "1", "--best-of-n", "4", "--output", str(output)]
    assert main(args) == 0, capsys.readouterr().err
    recorded = load_recorded_episodes("cp/bench-v0", str(tmp_path / "data"))  # kept in --datasets-dir
    assert int(recorded.lengths.sum()) >= 120
    assert all(0.2 <= m["epsilon"] <= 0.6 and m["policy_version"] == 3 for m in recorded.metadata)
    result = json.loads(output.read_text())
    assert result["dataset_transitions"] == int(recorded.lengths.sum()) and result["config"] == str(learners_config)
    names = [r["learner"] for r in result["results"]]
    assert names == ["IQL + AWR", "IQL + Best-of-N (N=4)", "filtered BC (top 10%)"]
