"""The start-up breakdown of `qfleet train` (system/train/startup.py) and `qfleet bench startup`'s
reading of it (system/bench/startup.py), on hand-made stamps and records."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from system.bench.startup import (
    StartupBenchError,
    median_phases,
    read_startup,
    run_startup_bench,
    train_command,
)
from system.config import ConfigError
from system.observe.status import startup_line
from system.services.learner import LearnerDescription
from system.train.driver import record_unfinished_startup
from system.train.launch import _await_learner
from system.train.run_dir import RunDir
from system.train.startup import PHASE_NAMES, StartupClock, startup_text
from system.train.supervise import record_startup

PHASES_OF_A_RUN = dict(zip(PHASE_NAMES, (1.1, 1.4, 3.3, 3.9, 5.1, 4.4, 4.6, 5.6, 4.8, 5.0, 7.9), strict=True))


def test_a_phase_is_stamped_in_seconds_since_the_process_started_and_keeps_its_earliest_stamp():
    clock = StartupClock(started_at=1000.0)
    clock.mark("redis", at=1001.5)
    clock.mark("redis", at=1003.0)  # a later stamp of a phase already reached changes nothing
    clock.mark_earliest("envs", [1004.0, None, 1002.25])
    clock.mark_earliest("first_update", [None])  # nothing known yet: not reached
    assert clock.reached == {"redis": 1.5, "envs": 2.25}
    assert not clock.complete()
    record = clock.record().to_json()
    assert record["kind"] == "startup" and record["started_at"] == 1000.0
    assert list(record["phases"]) == list(PHASE_NAMES)  # every phase, in order, None where not reached
    assert record["phases"]["redis"] == 1.5 and record["phases"]["first_update"] is None


def test_the_clock_is_complete_once_every_phase_is_reached():
    clock = StartupClock(started_at=0.0)
    for name, seconds in PHASES_OF_A_RUN.items():
        assert not clock.complete()
        clock.mark(name, at=seconds)
    assert clock.complete() and clock.record().phases == PHASES_OF_A_RUN


def test_the_actor_phases_are_the_earliest_any_actor_reported_and_unreported_ones_stay_open():
    from actors import ActorStartup

    clock = StartupClock(started_at=1000.0)
    late = ActorStartup(created_at=1001.0, envs_at=1003.0, ready_at=1004.0, first_step_at=1005.0, policy_at=1006.0)
    early = ActorStartup(created_at=1001.0, envs_at=1002.0, ready_at=1004.5)  # no step reported yet
    clock.mark_actors([late, early])
    # no first insert yet; the policy as the actor that adopted it first reported it (after random steps)
    assert clock.reached == {"envs": 2.0, "actors": 4.0, "policy": 6.0, "first_env_step": 5.0}


def test_an_offline_only_run_is_complete_without_the_actor_phases():
    clock = StartupClock(started_at=0.0)
    for name in ("driver", "redis", "ray", "shards", "learner"):
        clock.mark(name, at=PHASES_OF_A_RUN[name])
    assert not clock.complete(with_actors=False)
    clock.mark("first_update", at=7.9)
    assert clock.complete(with_actors=False) and not clock.complete()


def test_a_session_that_reached_neither_an_env_step_nor_an_update_records_its_phases_but_prints_nothing(capsys):
    clock = StartupClock(started_at=0.0)
    clock.mark("driver", at=1.1)
    assert record_startup(clock).phases["driver"] == 1.1 and clock.recorded
    assert capsys.readouterr().out == ""
    clock = StartupClock(started_at=0.0)
    clock.mark("first_env_step", at=4.8)
    record_startup(clock)
    assert "started in 4.8 s to the first env step" in capsys.readouterr().out


def test_a_start_up_record_that_cannot_be_written_is_logged_not_raised(tmp_path, caplog):
    clock = StartupClock(started_at=0.0)
    checked = SimpleNamespace(run=RunDir(tmp_path / "gone"))  # its folder does not exist
    record_unfinished_startup(checked, SimpleNamespace(startup=clock))
    assert any("start-up record not written" in r.getMessage() for r in caplog.records)


def test_an_unknown_phase_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown start-up phase 'dashboard'.*first_update"):
        StartupClock(started_at=0.0).mark("dashboard")


def test_the_process_start_is_when_the_process_was_spawned_not_when_it_asked():
    """A child process stamps its own start: after the parent spawned it, before its imports ended."""
    code = (
        "import time; from system.train.startup import process_started_at; "
        "asked = time.time(); print(process_started_at(), asked)"
    )
    spawned = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    started, asked = map(float, out.stdout.split())
    tick = 1.0 / os.sysconf("SC_CLK_TCK")  # /proc's start time is in clock ticks
    assert spawned - 2 * tick <= started <= asked


def test_the_printed_line_names_every_phase_in_order_and_dashes_what_was_not_reached():
    line = startup_text({**PHASES_OF_A_RUN, "first_update": None})
    assert line.startswith("started in 4.8 s to the first env step, - s to the first update: driver 1.1, redis 1.4")
    positions = [line.index(name.replace("_", " ") + " ") for name in PHASE_NAMES]
    assert positions == sorted(positions)
    assert line.endswith("first update - (s since the command began)")


def _run_dir_with(tmp_path, *phase_sets) -> RunDir:
    run = RunDir(tmp_path)
    run.append_records([{"kind": "progress", "env_steps": 0}])
    run.append_records([{"kind": "startup", "started_at": 0.0, "phases": phases} for phases in phase_sets])
    return run


def test_the_bench_reads_the_latest_sessions_startup_record(tmp_path):
    _run_dir_with(tmp_path, {**PHASES_OF_A_RUN, "redis": 9.0}, PHASES_OF_A_RUN)
    assert read_startup(tmp_path) == PHASES_OF_A_RUN
    assert startup_line(RunDir(tmp_path)).startswith("start-up: started in 4.8 s to the first env step")


def test_status_shows_the_latest_whole_startup_record_past_a_line_cut_short_by_a_crash(tmp_path):
    run = _run_dir_with(tmp_path, PHASES_OF_A_RUN)
    with open(run.metrics_path, "a") as metrics:
        metrics.write('{"kind":"startup","started_at":0.0,"phases":{"driver":9')  # the crash cut it here
    assert startup_line(run).startswith("start-up: started in 4.8 s to the first env step")


def test_a_run_without_a_startup_record_is_a_bench_failure_naming_its_directory(tmp_path):
    RunDir(tmp_path).append_records([{"kind": "progress", "env_steps": 0}])
    with pytest.raises(StartupBenchError, match="no startup record") as failed:
        read_startup(tmp_path)
    assert failed.value.run_dir == tmp_path
    assert startup_line(RunDir(tmp_path)) == ""


def test_medians_are_per_phase_over_the_runs_that_reached_it():
    runs = [
        {**PHASES_OF_A_RUN, "ray": 3.0, "first_update": None},
        {**PHASES_OF_A_RUN, "ray": 5.0, "first_update": 8.0},
        {**PHASES_OF_A_RUN, "ray": 4.0, "first_update": 9.0},
    ]
    medians = median_phases(runs)
    assert list(medians) == list(PHASE_NAMES)
    assert medians["ray"] == 4.0 and medians["first_update"] == 8.5 and medians["redis"] == 1.4
    assert median_phases([{**PHASES_OF_A_RUN, "envs": None}])["envs"] is None


def test_a_bench_run_is_a_short_qfleet_train_with_its_own_run_directory(tmp_path):
    command = train_command("configs/cartpole.yaml", tmp_path / "run-0", 3000, ["actors.num_actors=1"])
    assert command[1:5] == ["-m", "system.cli", "train", "configs/cartpole.yaml"]
    assert command[command.index("--run-dir") + 1] == str(tmp_path / "run-0")
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert sets == ["train.total_env_steps=3000", "train.eval_every_steps=0", "actors.num_actors=1"]
    json.dumps(command)  # plain strings: nothing secret or odd on the command line


def test_the_learner_phase_is_when_the_learner_was_built_not_when_the_driver_heard_of_it():
    """The learner stamps its build and its first update itself: one observer for both."""
    clock = StartupClock(started_at=1000.0)
    described = LearnerDescription(
        device="cpu", pid=1, metrics="", resumed_from="", updates=0, version=0, built_at=1005.25
    )

    class Learner:
        class describe:
            @staticmethod
            def remote():
                return described

    ray = SimpleNamespace(
        get=lambda value, timeout=None: value,
        wait=lambda refs, num_returns, timeout: (refs[:num_returns], refs[num_returns:]),
    )
    components = SimpleNamespace(ray=ray, learner=Learner, startup=clock, info={})
    _await_learner(SimpleNamespace(), components, SimpleNamespace())
    assert clock.reached["learner"] == 5.25 and components.info["learner"]["built_at"] == 1005.25


def test_the_bench_refuses_redis_overrides_without_echoing_their_value(capsys):
    with pytest.raises(ConfigError, match=r"--set redis\.url: .*embedded Redis") as refused:
        run_startup_bench(1, None, 100, ["redis.url=redis://:hunter2@10.0.0.5:6379/0"], None)
    assert "hunter2" not in str(refused.value) and "hunter2" not in capsys.readouterr().out


def test_a_failed_bench_run_keeps_its_directory_and_log(tmp_path, capsys):
    missing = str(tmp_path / "no-such-config.yaml")  # qfleet train refuses it at once
    assert run_startup_bench(1, missing, 100, [], None) == 1
    err = capsys.readouterr().err
    kept = pathlib.Path(err.split("run directories kept in ")[1].split()[0])
    assert (kept / "run-0" / "train.log").read_text().strip()
    shutil.rmtree(kept)
