"""Where a resumed learner of a run with an offline dataset starts: its checkpoint's phase mark and
the run's state.json, and which wins when they disagree (system/services/phases.py); the mark a
real learner writes into its checkpoints and reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner import ActionSpace, ArchitectureConfig, Learner, LearnerConfig, PhaseMark
from replay import Sample, TorchBatch
from system.services.phases import PhaseDecision, decide_phase

OFFLINE, ONLINE = "offline", "online"


@pytest.mark.parametrize(
    ("case", "args", "expected"),  # expected: phase, offline updates made, left, online from, UTD from
    [
        ("a new run starts offline", (2000, False, 0, PhaseMark(OFFLINE, 0), None), (OFFLINE, 0, 2000, None, 2000)),
        (
            "stopped mid offline phase: the checkpoint's updates count",
            (2000, False, 1500, PhaseMark(OFFLINE, 1500), OFFLINE),
            (OFFLINE, 1500, 500, None, 2000),
        ),
        (
            "killed mid offline phase, state.json not written yet",
            (2000, False, 700, PhaseMark(OFFLINE, 700), None),
            (OFFLINE, 700, 1300, None, 2000),
        ),
        (
            "offline-only, stopped mid phase: finishes its updates",
            (300, True, 120, PhaseMark(OFFLINE, 120), OFFLINE),
            (OFFLINE, 120, 180, None, 300),
        ),
        (
            "offline-only, all updates made",
            (300, True, 300, PhaseMark(OFFLINE, 300), OFFLINE),
            ("finished", 300, 0, None, 300),
        ),
        (
            "the offline phase's last checkpoint: online begins there",
            (2000, False, 2000, PhaseMark(OFFLINE, 2000), OFFLINE),
            (ONLINE, 2000, 0, 2000, 2000),
        ),
        (
            "stopped online: never offline again, even with offline.updates raised",
            (5000, False, 9000, PhaseMark(ONLINE, 2000, 2000), ONLINE, 2000),
            (ONLINE, 2000, 0, 2000, 2000),
        ),
        (
            "state.json online, the checkpoint older and offline: online wins",
            (2000, False, 1800, PhaseMark(OFFLINE, 1800), ONLINE, 2000),
            (ONLINE, 1800, 0, 1800, 1800),
        ),
        (
            "checkpoint online, state.json older and offline: online wins",
            (2000, False, 2600, PhaseMark(ONLINE, 2000, 2000), OFFLINE),
            (ONLINE, 2000, 0, 2000, 2000),
        ),
        (
            "offline.updates raised while still offline: the phase goes on to the new number",
            (3000, False, 2000, PhaseMark(OFFLINE, 2000), OFFLINE),
            (OFFLINE, 2000, 1000, None, 3000),
        ),
        (
            "a checkpoint without a mark (older qfleet): its updates count as offline ones",
            (2000, False, 1200, None, OFFLINE),
            (OFFLINE, 1200, 800, None, 2000),
        ),
        (
            "without a mark, past offline.updates: online from offline.updates",
            (2000, False, 5000, None, ONLINE, 2000),
            (ONLINE, 2000, 0, 2000, 2000),
        ),
        (
            "a fresh network continuing from update 1500 makes every offline update",
            (2000, False, 1500, PhaseMark(OFFLINE, 0), OFFLINE),
            (OFFLINE, 0, 2000, None, 3500),
        ),
        ("no offline phase configured", (0, False, 0, PhaseMark(OFFLINE, 0), None), (ONLINE, 0, 0, 0, 0)),
    ],
)
def test_the_resumed_phase_follows_the_later_record_and_the_checkpoints_offline_updates(case, args, expected):
    decision = decide_phase(*args)
    utd_from = decision.utd_from(args[2])  # where the learner's UTD starts counting (online updates only)
    assert (
        decision.phase,
        decision.offline_updates,
        decision.offline_left,
        decision.online_from,
        utd_from,
    ) == expected, case


def test_a_disagreement_that_skips_offline_updates_is_explained():
    decision = decide_phase(2000, False, 1800, PhaseMark(OFFLINE, 1800), ONLINE, 2000)
    assert "state.json had the run online" in decision.note and "1,800 of offline.updates=2,000" in decision.note
    assert decide_phase(2000, False, 1500, PhaseMark(OFFLINE, 1500), OFFLINE).note == ""


def test_a_decision_gives_the_mark_its_checkpoints_carry():
    assert PhaseDecision(OFFLINE, 10, 5, None).mark() == PhaseMark(OFFLINE, 10)
    assert PhaseDecision("finished", 300, 0, None).mark() == PhaseMark(OFFLINE, 300)
    assert PhaseDecision(ONLINE, 300, 0, 320).mark() == PhaseMark(ONLINE, 300, 320)


@pytest.mark.parametrize("entry", [None, "offline", {"phase": "later", "offline_updates": 1}, {"phase": "offline"}])
def test_a_missing_or_malformed_mark_reads_as_none(entry):
    assert PhaseMark.from_state({} if entry is None else {"phase": entry}) is None


SMALL = LearnerConfig(
    batch_size=16,
    learning_starts=1,
    checkpoint_every=1_000_000,
    checkpoint_every_s=None,
    device="cpu",
    architecture=ArchitectureConfig(hidden_size=16),
)


def random_batch(rng: np.random.Generator) -> TorchBatch:
    arrays = {
        "obs": rng.normal(size=(16, 4)).astype(np.float32),
        "action": rng.integers(0, 2, 16),
        "reward": rng.normal(size=16).astype(np.float32),
        "next_obs": rng.normal(size=(16, 4)).astype(np.float32),
        "discount": np.full(16, 0.97, np.float32),
    }
    keys, probabilities, weights = np.arange(16, dtype=np.uint64), np.full(16, 1 / 16), np.ones(16, np.float32)
    sample = Sample(arrays, keys, probabilities, weights, table_size=16, priority_mass=16.0)
    data = {name: torch.from_numpy(array) for name, array in arrays.items()}
    return TorchBatch(data, torch.from_numpy(weights), keys, probabilities, sample)


def test_a_learner_counts_its_offline_updates_into_the_checkpoint_and_reads_them_back(tmp_path):
    rng = np.random.default_rng(0)
    learner = Learner(SMALL, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    learner.phase_mark = PhaseMark(OFFLINE, 0)
    for _ in range(7):
        learner.step(random_batch(rng))
    learner.checkpoint()
    resumed = Learner(SMALL, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    assert resumed.updates == 7 and resumed.resumed_mark == PhaseMark(OFFLINE, 7)

    resumed.phase_mark = PhaseMark(ONLINE, 7, 7)  # online updates leave the offline count alone
    for _ in range(3):
        resumed.step(random_batch(rng))
    resumed.checkpoint()
    again = Learner(SMALL, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    assert again.updates == 10 and again.resumed_mark == PhaseMark(ONLINE, 7, 7)


def test_a_run_without_an_offline_phase_writes_no_mark(tmp_path):
    learner = Learner(SMALL, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    learner.step(random_batch(np.random.default_rng(1)))
    assert "phase" not in torch.load(learner.checkpoint(), weights_only=True)
    assert Learner(SMALL, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path).resumed_mark is None
