"""`qfleet status`'s learner line: the offline losses' policy figures appear only when reported."""

from system.observe.status import _learner_line

BASE = {"updates": 1200, "updates_per_second": 40.0, "weights_version": 12, "achieved_utd": 0.5, "target_utd": 0.5}


def test_a_q_loss_learner_line_has_no_policy_figures():
    line = _learner_line({**BASE, "loss": 0.12, "q_mean": 3.4, "policy_loss": "", "imitation_weight": ""})
    assert "loss 0.12, q 3.4, on" in line and "policy loss" not in line


def test_an_offline_loss_learner_line_shows_the_published_policys_loss_and_imitation_weight():
    line = _learner_line({**BASE, "loss": 0.12, "q_mean": 3.4, "policy_loss": 0.69, "imitation_weight": 0.25})
    assert "q 3.4, policy loss 0.69, imitation weight 0.25, on" in line
