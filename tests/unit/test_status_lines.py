"""`qfleet status`'s lines: the learner's offline-loss figures only when reported; what an actor waits for."""

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
