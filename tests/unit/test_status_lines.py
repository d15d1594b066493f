"""`qfleet status`'s lines: the learner's offline-loss figures only when reported; what an actor waits for;
the random steps a fresh run's actors took before their policies (also in progress records and the summary)."""

from system.observe.status import _learner_line

BASE = {"updates": 1200, "updates_per_second": 40.0, "weights_version": 12, "achieved_utd": 0.5, "target_utd": 0.5}


def test_a_q_loss_learner_line_has_no_policy_figures():
    line = _learner_line({**BASE, "loss": 0.12, "q_mean": 3.4, "policy_loss": "", "imitation_weight": ""})
    assert "loss 0.12, q 3.4, on" in line and "policy loss" not in line


def test_an_offline_loss_learner_line_shows_the_published_policys_loss_and_imitation_weight():
    line = _learner_line({**BASE, "loss": 0.12, "q_mean": 3.4, "policy_loss": 0.69, "imitation_weight": 0.25})
    assert "q 3.4, policy loss 0.69, imitation weight 0.25, on" in line


def test_an_actor_waiting_for_a_replay_shard_is_shown_as_waiting_not_as_an_idle_actor():
    # issue #22: an actor of a wrong --run showed "0 env steps" and nothing else
    from actors import STATE_ACTING, STATE_AWAITING_REPLAY
    from system.observe.status import _actor_line

    report = {"host": "h", "pid": 7, "env_steps": 0, "episodes": 0, "policy_version": 0, "epsilon": 0.4}
    waiting = _actor_line(0, {**report, "state": STATE_AWAITING_REPLAY})
    assert "waiting for a replay shard of the run (are its shards up, is --run right?)" in waiting
    assert "waiting" not in _actor_line(0, {**report, "state": STATE_ACTING})


def test_an_actors_random_steps_before_its_policy_have_their_own_column():
    # a fresh run's actors step at random while their policies build (actors.random_before_policy)
    from system.observe.status import _actor_line

    report = {"host": "h", "pid": 7, "env_steps": 5000, "episodes": 20, "policy_version": 3, "epsilon": 0.4}
    line = _actor_line(0, {**report, "env_restarts": 2, "random_steps": "1234", "transitions_lost": 9})
    assert "            2   1,234     9  " in line  # env restarts, random, lost
    assert "            0       0     0  " in _actor_line(0, report)  # an older actor's report has none


def test_the_random_steps_of_a_fresh_runs_actors_reach_the_progress_records_and_the_summary(tmp_path):
    from system.config import load_config
    from system.observe.report import summary_table
    from system.train.records import ProgressRecord
    from system.train.run_dir import RunDir

    values = (1.0, 2.0, 600, 0.0, 3, None, None, 10, 5.0, 0.0, 0, 0.5, 1, 0, 0, 2, 0, 0, 0)
    record = ProgressRecord(*values, random_steps=480).to_json()
    assert record["random_steps"] == 480
    run = RunDir(tmp_path / "run")
    run.write_config(load_config("configs/cartpole.yaml", []))
    run.append_records([record, ProgressRecord(*values).to_json()])
    assert "| env steps at random before the actors' policies | 480 |" in summary_table(run)
