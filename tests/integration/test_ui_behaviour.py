"""The instruction-following behaviour policy in real headless Chromium (miniwob/<task>-v1): at p = 1
it solves the tasks it has rules for, at p = 0 it never follows, and `qfleet record --behaviour
instruction` writes a dataset that loads as offline transitions with p and each episode's success."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from actors import EnvConfig, InstructionBehaviour, describe_env
from actors.envs import EnvVector
from system.datasets import DatasetSource, dataset_info, load_transitions, read_episode_metadata

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists("/usr/bin/chromedriver"), reason="chromium-driver is not installed"),
]


def play(task: str, follow_p: float, episodes: int, max_steps: int = 10, seed: int = 0) -> list[dict]:
    """`episodes` episodes of the behaviour on one env (the default 12x10 tap grid); per episode,
    whether it succeeded and how many steps followed the instruction."""
    vector = EnvVector(EnvConfig(id=f"miniwob/{task}-v1", num_envs=1, max_episode_steps=max_steps), seed=seed)
    behaviour = InstructionBehaviour(task, vector.envs[0].unwrapped.ui_actions, 1, follow_p, seed=seed)
    results, starts = [], np.ones(1, bool)
    try:
        vector.reset()
        while len(results) < episodes:
            step = vector.step(behaviour.act(None, vector.infos, starts))
            starts = step.terminated | step.truncated | step.aborted
            if starts[0]:
                metadata = behaviour.episode_metadata(0)
                success = bool(step.terminated[0]) and step.reward[0] > 0
                results.append({"success": success, **metadata})
    finally:
        vector.close()
    return results


@pytest.mark.parametrize("task", ["click-button", "enter-text"])
def test_following_every_step_solves_at_least_nine_episodes_in_ten(task):
    results = play(task, follow_p=1.0, episodes=10)
    assert sum(r["success"] for r in results) >= 9, results
    assert all(r["random_steps"] == 0 for r in results)  # every step had a rule's action
    if task == "enter-text":  # tap the field, type the target, tap Submit
        assert all(r["followed_steps"] == 3 for r in results if r["success"])


def test_never_following_acts_at_random_at_the_random_rate():
    # enter-text: a typed target needs the field focused, slot 0 (1 in 129 actions) and then Submit
    # within 5 steps; a uniform policy solves it in far fewer than 1 episode in 1,000.
    results = play("enter-text", follow_p=0.0, episodes=4, max_steps=5)
    assert not any(r["success"] for r in results)
    assert all(r["followed_steps"] == 0 and r["random_steps"] >= 1 for r in results)
    # click-button: random taps end an episode on the first button they hit, the right one about a
    # third of the time (0.35 over 20 episodes in docs/browser.md); 7 or more of 8 would be p = 1's rate.
    results = play("click-button", follow_p=0.0, episodes=8, max_steps=10)
    assert sum(r["success"] for r in results) <= 6 and all(r["followed_steps"] == 0 for r in results)


def test_qfleet_record_writes_a_dataset_per_task_with_p_and_success_that_loads(tmp_path, capsys):
    from system.cli import main

    args = ["record", "miniwob/{task}-p1-v0", "--behaviour", "instruction", "--follow-p", "1"]
    args += ["--env", "miniwob/click-button-v1", "--env", "miniwob/focus-text-v1", "--episodes", "3"]
    args += ["--set", "env.num_envs=1", "--set", "env.max_episode_steps=10", "--datasets-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "success 1.00; dataset miniwob/click-button-p1-v0" in out, out
    for task in ("click-button", "focus-text"):
        dataset = f"miniwob/{task}-p1-v0"
        data = tmp_path / dataset / "data"
        recorded_by = json.loads((data / "metadata.json").read_text())["qfleet"]
        assert recorded_by["follow_p"] == 1.0 and recorded_by["env_id"] == f"miniwob/{task}-v1"
        assert recorded_by["policy"] == {"behaviour": "instruction", "follow_p": 1.0, "rule": True}
        episodes = [read_episode_metadata(data, dataset, e) for e in range(3)]
        assert all(e["success"] is True and e["follow_p"] == 1.0 and e["epsilon"] == 0.0 for e in episodes)
        spaces = describe_env(EnvConfig(id=f"miniwob/{task}-v1"))
        source = DatasetSource(dataset, datasets_dir=str(tmp_path))
        loaded = load_transitions(source, spaces.spec, spaces.action_space, n_step=1, gamma=0.99)
        assert loaded.episodes == 3 and loaded.size == sum(e["total_steps"] for e in episodes)
        assert (loaded.transitions["reward"][loaded.transitions["discount"] == 0] == 1.0).all()  # solved ends
        assert dataset_info(dataset, tmp_path).successes == (3, 3)


def test_record_refuses_an_instruction_behaviour_without_a_miniwob_env_or_with_epsilon(tmp_path, capsys):
    from system.cli import main

    base = ["record", "x/y-v0", "--behaviour", "instruction", "--episodes", "2", "--datasets-dir", str(tmp_path)]
    assert main([*base, "--env", "CartPole-v1"]) == 2
    assert "--behaviour instruction: env.id='CartPole-v1' is not a MiniWoB task" in capsys.readouterr().err
    assert main([*base, "--env", "miniwob/click-button-v1", "--epsilon", "0.3"]) == 2
    assert "--epsilon=0.3: behaviour instruction acts at random" in capsys.readouterr().err
    two = ["--env", "miniwob/click-button-v1", "--env", "miniwob/enter-text-v1"]
    assert main([*base, *two]) == 2
    assert "2 envs need one dataset each: put {task} in DATASET_ID" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
