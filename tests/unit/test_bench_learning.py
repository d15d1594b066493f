"""`qfleet bench learning`'s figures (threshold, held, final), tables, PNGs, task options, the peers'
hyper-parameters, skipped peers and --resume, without training anything (the real run:
tests/smoke/test_bench_learning_cli.py)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import pytest

from system.bench import learning
from system.bench.learning import Suite, identity, run_learning_bench, run_peer, run_qfleet
from system.bench.learning_plot import median_curve, plot_task
from system.bench.learning_results import median_or_never, summarise, task_table
from system.bench.learning_tasks import TASKS, parse_per_task


def evals(*points: tuple[int, float]) -> list[dict]:
    """Evaluations at (env steps, mean return), 1 s of wall time per 1,000 env steps."""
    return [{"env_steps": steps, "wall_s": steps / 1000, "mean_return": value} for steps, value in points]


def test_a_run_that_reaches_the_threshold_and_stays_there_is_held_from_its_first_hit():
    row = summarise(0, evals((1000, 20.0), (2000, 480.0), (3000, 500.0)), 475.0, 31.5)
    assert row["reached_env_steps"] == 2000 and row["reached_wall_s"] == 2.0
    assert row["held"] and row["held_from_env_steps"] == 2000 and row["min_after"] == 480.0
    assert row["final"] == 500.0 and row["evaluations"] == 3 and row["wall_s"] == 31.5


def test_a_run_that_drops_below_after_reaching_is_not_held_and_says_from_where_it_holds_again():
    row = summarise(1, evals((1000, 500.0), (2000, 300.0), (3000, 490.0), (4000, 500.0)), 475.0, None)
    assert row["reached_env_steps"] == 1000  # the first hit counts, not the last
    assert not row["held"] and row["min_after"] == 300.0
    assert row["held_from_env_steps"] == 3000 and row["final"] == 500.0


def test_a_run_whose_last_evaluation_is_below_holds_from_nowhere():
    row = summarise(2, evals((1000, 500.0), (2000, 474.9)), 475.0, 10.0)
    assert row["reached_env_steps"] == 1000 and not row["held"] and row["held_from_env_steps"] is None


def test_negative_thresholds_compare_by_value():  # Acrobot -100, Pendulum -200
    row = summarise(0, evals((5000, -500.0), (10000, -99.0), (15000, -80.0)), -100.0, 60.0)
    assert row["reached_env_steps"] == 10000 and row["held"]


def test_a_run_that_never_reaches_or_never_evaluated_has_no_figures_but_its_final():
    never = summarise(0, evals((1000, 10.0), (2000, 12.0)), 475.0, 5.0)
    assert never["reached_env_steps"] is None and never["reached_wall_s"] is None and never["min_after"] is None
    assert not never["held"] and never["final"] == 12.0
    died = summarise(1, [], 475.0, 3.0)
    assert died["final"] is None and died["evaluations"] == 0 and not died["held"]


@pytest.mark.parametrize(
    ("values", "median"),
    [([1000, None, 3000], 3000), ([1000, None, None], None), ([1000, 2000], 1500), ([1000, None], None), ([], None)],
)
def test_median_counts_never_as_more_than_any_figure(values, median):
    assert median_or_never(values) == median


def test_task_table_has_a_row_per_seed_and_each_systems_median():
    rows = {
        "qfleet": [
            summarise(0, evals((1000, 480.0), (2000, 500.0)), 475.0, 20.0),
            summarise(1, evals((1000, 10.0), (2000, 476.0)), 475.0, 21.0),
            summarise(2, evals((1000, 100.0), (2000, 200.0)), 475.0, 22.0),
        ],
        "sb3": [summarise(0, evals((1000, 100.0)), 475.0, 9.0)],
    }
    table = task_table("cartpole", 475.0, rows)
    assert "first eval >= 475 (env steps)" in table
    assert "| qfleet | 0 | 1,000 | 1 | yes | 480.0 | 500.0 | 2 | 20 | 0 |" in table
    assert "| qfleet | 2 | never | never | no | never | 200.0 | 2 | 22 | 0 |" in table
    assert "| qfleet | median | 2,000 | 2 | 2 of 3 | | 476.0 | | | |" in table
    assert "| sb3 | 0 | never |" in table and "| sb3 | median" not in table  # one seed: no median row


def test_a_run_with_skipped_scheduled_evaluations_is_held_unverified_and_the_table_says_how_many():
    row = summarise(0, evals((1000, 480.0), (3000, 500.0)), 475.0, 9.0, skipped_evals=1, scheduled_evals=3)
    assert row["held"] == "unverified"  # the evaluation at 2,000 might have been below
    never = summarise(1, evals((1000, 10.0)), 475.0, 9.0, skipped_evals=2, scheduled_evals=3)
    assert never["held"] is False  # never reached: nothing to verify
    table = task_table("cartpole", 475.0, {"qfleet": [row, never]})
    assert "| unverified (1 of 3 scheduled evals skipped) |" in table
    assert "| no (2 of 3 scheduled evals skipped) |" in table
    assert "| qfleet | median | never | never | 0 of 2 |" in table  # unverified does not count as held


def test_failed_runs_show_their_exit_and_count_as_missing_in_the_median_final():
    rows = {
        "sb3": [
            summarise(0, evals((1000, 480.0)), 475.0, 9.0),
            summarise(1, [], 475.0, 3.0, exit_code=1),
            summarise(2, [], 475.0, 3600.0, exit_code="timeout"),
        ]
    }
    table = task_table("cartpole", 475.0, rows)
    assert "| sb3 | 1 | never | never | no | never | never | 0 | 3 | 1 |" in table
    assert "| 0 | 3600 | timeout |" in table
    assert "| sb3 | median | never | never | 1 of 3 | | missing (2 of 3 missing) | | | |" in table
    one_missing = task_table("cartpole", 475.0, {"sb3": rows["sb3"][:2] + [rows["sb3"][0]]})
    assert "| 480.0 (1 of 3 missing) |" in one_missing  # the median of (missing, 480, 480)


def test_qfleets_wall_times_count_from_its_process_start_as_the_peers_do():
    from system.bench.learning import clock_offset

    startup = {"kind": "startup", "started_at": 1000.0, "phases": {"driver": 1.9}}
    progress = {"kind": "progress", "time": 1020.0, "wall_s": 18.0}  # the run clock began at 1002.0
    assert clock_offset([startup, {"kind": "eval", "wall_s": 5.0}, progress]) == pytest.approx(2.0)
    assert clock_offset([progress]) == 0.0  # no startup record (an older run): wall_s as recorded


def test_qfleets_evaluations_count_to_when_their_result_was_known_and_keep_their_schedule():
    from system.bench.learning import qfleet_evals, skipped_evals

    records = [
        {"kind": "startup", "started_at": 1000.0},
        {"kind": "progress", "time": 1020.0, "wall_s": 18.0},  # offset 2.0
        {"kind": "eval", "env_steps": 1010, "wall_s": 10.0, "seconds": 4.5, "mean_return": 9.0}
        | {"scheduled_env_steps": 1000},
        {"kind": "eval", "env_steps": 3000, "wall_s": 30.0, "seconds": 1.0, "mean_return": 12.0, "final": True},
    ]
    got = qfleet_evals(records)
    assert got == [
        {"env_steps": 1010, "wall_s": 16.5, "mean_return": 9.0, "scheduled_env_steps": 1000},
        {"env_steps": 3000, "wall_s": 33.0, "mean_return": 12.0},
    ]
    assert skipped_evals(got, 1000, 3000) == 1  # 2,000 is missing; 3,000 is the final one
    assert skipped_evals(got, 1000, 2000) == 0


def test_median_curve_interpolates_each_seed_onto_the_first_seeds_points_up_to_the_shortest():
    grid, median = median_curve(
        [
            evals((1000, 0.0), (2000, 10.0), (3000, 20.0)),
            evals((1500, 10.0), (2500, 30.0)),  # at 1000: 10 (held flat before its first), at 2000: 20
            evals((1000, 40.0), (2000, 40.0), (3000, 40.0)),
        ]
    )
    assert grid.tolist() == [1000.0, 2000.0]  # 3000 is past the shortest curve's end (2500)
    assert median.tolist() == [10.0, 20.0]
    assert median_curve([evals((1000, 1.0)), []])[0].size == 0


def test_plot_task_writes_a_png_with_every_system(tmp_path):
    png = tmp_path / "plots" / "cartpole.png"
    curves = {"qfleet": [evals((1000, 10.0), (2000, 500.0))] * 2, "sb3": [evals((1000, 5.0), (2000, 300.0)), []]}
    plot_task(png, "CartPole-v1", 475.0, curves)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_per_task_options_name_a_task_of_the_run_and_a_value():
    assert parse_per_task("--steps", ["cartpole=20000"], ["cartpole", "acrobot"], int) == {"cartpole": 20000}
    assert parse_per_task("--threshold", ["acrobot=-90.5"], ["acrobot"], float) == {"acrobot": -90.5}
    for bad, message in (
        ("cartpole", "expected TASK=VALUE"),
        ("cartpole=lots", "expected TASK=VALUE"),
        ("hopper=5", "'hopper' is not among the tasks"),
        ("cartpole=0", "must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_per_task("--steps", [bad], ["cartpole"], int)


def test_the_cli_offers_exactly_the_suites_tasks_and_systems():
    from system.bench.learning import SYSTEMS
    from system.cli.bench import LEARNING_SYSTEMS, LEARNING_TASKS

    assert LEARNING_TASKS == tuple(TASKS) and LEARNING_SYSTEMS == SYSTEMS
    assert {t.env_id for t in TASKS.values()} >= {"CartPole-v1", "Acrobot-v1", "Pendulum-v1", "Hopper-v5"}
    assert all(t.threshold_source and t.eval_every < t.env_steps for t in TASKS.values())


def test_sb3_peer_takes_the_zoos_entry_and_says_where_it_comes_from():
    from system.bench.sb3_learning_peer import hyperparameters

    algo, kwargs, source = hyperparameters("CartPole-v1", 50_000)
    assert algo == "DQN" and kwargs["train_freq"] == 256 and kwargs["gradient_steps"] == 128
    assert "hyperparams/dqn.yml CartPole-v1" in source
    algo, kwargs, source = hyperparameters("Hopper-v5", 100_000)
    assert algo == "SAC" and kwargs == {"learning_starts": 10_000} and "Hopper-v4" in source
    algo, kwargs, source = hyperparameters("MinAtar/Breakout-v0", 250_000)
    assert algo == "DQN" and kwargs["exploration_fraction"] == pytest.approx(0.4)  # 100k of 250k
    with pytest.raises(KeyError):
        hyperparameters("MountainCar-v0", 1000)


def _suite(tmp_path: pathlib.Path, **changes) -> Suite:
    task = dataclasses.replace(TASKS["cartpole"], env_steps=3000, eval_every=1000)
    suite = Suite((task,), ("qfleet", "sb3"), (0, 1), {"sb3": None, "rllib": None}, tmp_path, tmp_path / "r.json")
    return dataclasses.replace(suite, **changes)


def test_a_peer_without_its_interpreter_is_skipped_with_what_to_do(tmp_path):
    suite = _suite(tmp_path, peer_pythons={"sb3": str(tmp_path / "no-python")})
    assert run_peer("sb3", suite.tasks[0], 0, suite) == {
        "skipped": f"--sb3-python {tmp_path / 'no-python'}: no such interpreter"
    }
    # Not given: skipped, never run under qfleet's interpreter (which has ray/rllib but not RLlib's pins).
    suite = _suite(tmp_path)
    assert run_peer("rllib", suite.tasks[0], 0, suite) == {
        "skipped": "pass --rllib-python (the interpreter of a venv with requirements-bench-rllib.txt)"
    }


FAKE_PEER = """
import json, sys, time
request = json.loads(sys.argv[1])
print("a library's banner", flush=True)
print(json.dumps({"ready": True, "algo": "DQN"}), flush=True)
print(json.dumps({"env_steps": 1000, "wall_s": 1.0, "mean_return": 20.0}), flush=True)
print("{not json at all", flush=True)
print(json.dumps({"env_steps": request["env_steps"], "wall_s": 2.0, "mean_return": 480.0}), flush=True)
sys.exit(int(request["seed"]))
"""


def _fake_peer(tmp_path: pathlib.Path, monkeypatch, source: str) -> None:
    script = tmp_path / "fake_peer.py"
    script.write_text(source)
    monkeypatch.setitem(learning.PEERS, "sb3", ("fake", str(script), "--sb3-python", "fake pins"))


def test_a_peers_evaluations_are_read_as_they_come_and_a_garbage_line_goes_to_its_log(tmp_path, monkeypatch):
    _fake_peer(tmp_path, monkeypatch, FAKE_PEER)
    suite = _suite(tmp_path, peer_pythons={"sb3": sys.executable})
    run = run_peer("sb3", suite.tasks[0], 0, suite)
    assert run["exit_code"] == 0 and run["config"] == {"ready": True, "algo": "DQN"}
    assert [e["mean_return"] for e in run["evals"]] == [20.0, 480.0]
    assert "[stdout] {not json at all" in (tmp_path / "cartpole-sb3-seed0.log").read_text()
    assert run_peer("sb3", suite.tasks[0], 3, suite)["exit_code"] == 3  # a failing peer's exit is kept


def test_a_hung_peer_is_stopped_at_the_run_timeout_and_recorded_as_such(tmp_path, monkeypatch):
    _fake_peer(tmp_path, monkeypatch, "import time\nprint('starting', flush=True)\ntime.sleep(3600)\n")
    suite = _suite(tmp_path, peer_pythons={"sb3": sys.executable}, run_timeout_s=0.5)
    run = run_peer("sb3", suite.tasks[0], 0, suite)  # returns only once the child has been stopped
    assert run["exit_code"] == "timeout" and run["evals"] == []


def test_a_peer_whose_interpreter_lacks_the_package_is_skipped_by_the_peer_itself(tmp_path):
    pytest.importorskip("torch")  # qfleet's venv; stable-baselines3 is never one of its packages
    suite = _suite(tmp_path, peer_pythons={"sb3": sys.executable})
    run = run_peer("sb3", suite.tasks[0], 0, suite)
    assert run["skipped"] == f"stable-baselines3 does not import in {sys.executable}"
    assert run["exit_code"] == 0 and run["evals"] == []


def test_resume_keeps_finished_runs_and_still_writes_the_tables_json_and_png(tmp_path, capsys):
    suite = _suite(tmp_path, systems=("qfleet", "sb3"), seeds=(0,), resume=True, peer_pythons={"sb3": "/p/python"})
    task = suite.tasks[0]
    kept = [
        {"task": "cartpole", "system": "qfleet", "seed": 0, "env_steps": 3000, "exit_code": 0, "wall_s": 30.0}
        | {"evals": evals((1000, 100.0), (2000, 480.0), (3000, 500.0)), "identity": identity("qfleet", task, suite)},
        {"task": "cartpole", "system": "sb3", "seed": 0, "env_steps": 3000, "exit_code": 0, "wall_s": 20.0}
        | {"evals": evals((1000, 480.0), (3000, 400.0)), "identity": identity("sb3", task, suite)},
    ]
    suite.output.write_text(json.dumps({"runs": kept}))
    assert run_learning_bench(suite) == 0  # nothing left to run: no process started
    out = capsys.readouterr().out
    assert out.count("kept from") == 2
    assert "| qfleet | 0 | 2,000 | 2 | yes |" in out and "| sb3 | 0 | 1,000 | 1 | no |" in out
    assert json.loads(suite.output.read_text())["runs"] == kept
    assert (tmp_path / "cartpole.png").stat().st_size > 0 and "| sb3 | 0 |" in (tmp_path / "results.md").read_text()


def test_resume_reruns_runs_made_with_other_settings_and_keeps_earlier_tasks_in_the_report(tmp_path, capsys):
    suite = _suite(tmp_path, systems=("sb3",), seeds=(0,), resume=True)  # no --sb3-python now
    cartpole, acrobot = suite.tasks[0], dataclasses.replace(TASKS["acrobot"], env_steps=2000, eval_every=1000)
    earlier = dataclasses.replace(suite, tasks=(acrobot,), peer_pythons={"sb3": "/p/python"})
    runs = [
        {"task": "cartpole", "system": "sb3", "seed": 0, "env_steps": 3000, "exit_code": 0, "wall_s": 20.0}
        | {"evals": evals((3000, 480.0)), "identity": identity("sb3", cartpole, earlier)},  # another interpreter
        {"task": "acrobot", "system": "qfleet", "seed": 0, "env_steps": 2000, "exit_code": 0, "wall_s": 20.0}
        | {"evals": evals((2000, -90.0)), "identity": identity("qfleet", acrobot, earlier)},
    ]
    tasks = {"acrobot": dataclasses.asdict(acrobot)}
    suite.output.write_text(json.dumps({"tasks": tasks, "runs": runs}))
    assert run_learning_bench(suite) == 0
    out = capsys.readouterr().out
    assert "kept from" not in out and "cartpole sb3: skipped: pass --sb3-python" in out
    written = json.loads(suite.output.read_text())
    assert set(written["tasks"]) == {"acrobot", "cartpole"} and runs[1] in written["runs"]
    assert runs[0] not in written["runs"]
    results = (tmp_path / "results.md").read_text()
    assert "### acrobot" in results and "| qfleet | 0 | 2,000 |" in results


FAKE_TRAIN = """
import json, pathlib, sys
run_dir = pathlib.Path(sys.argv[sys.argv.index("--run-dir") + 1])
if "--fail" in sys.argv:
    sys.exit(2)
run_dir.mkdir()
records = [
    {"kind": "eval", "env_steps": 1000, "wall_s": 1.0, "seconds": 0.5, "mean_return": 7.0, "scheduled_env_steps": 1000},
    {"kind": "eval", "env_steps": 3000, "wall_s": 3.0, "seconds": 0.5, "mean_return": 9.0, "final": True},
]
(run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in records))
"""


def test_a_rerun_of_qfleet_never_reports_the_previous_runs_evaluations(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    real_start = learning.start_child
    monkeypatch.setattr(
        learning, "start_child", lambda command, **popen: real_start([sys.executable, str(script), *command], **popen)
    )
    old = tmp_path / "cartpole-qfleet-seed0"
    old.mkdir()
    stale = {"kind": "eval", "env_steps": 3000, "wall_s": 3.0, "mean_return": 500.0}
    (old / "metrics.jsonl").write_text(json.dumps(stale) + "\n")
    suite = _suite(tmp_path)
    run = run_qfleet(suite.tasks[0], 0, suite)
    assert run["exit_code"] == 0 and [e["mean_return"] for e in run["evals"]] == [7.0, 9.0]
    assert run["skipped_evals"] == 1  # the evaluation scheduled at 2,000 is missing
    (moved,) = tmp_path.glob("cartpole-qfleet-seed0.old-*")
    assert json.loads((moved / "metrics.jsonl").read_text()) == stale  # kept, aside
    failing = dataclasses.replace(suite, qfleet_overrides=("--fail",))  # exits 2 before writing anything
    run = run_qfleet(suite.tasks[0], 0, failing)
    assert run["exit_code"] == 2 and run["evals"] == []
    assert len(list(tmp_path.glob("cartpole-qfleet-seed0.old-*"))) == 2


def test_rllib_iterations_divide_the_schedule_and_its_models_initialisers_are_torchs():
    import torch

    from system.bench.rllib_learning_peer import CARTPOLE_DQN_MODEL, SAC_MODEL, iteration_steps

    assert iteration_steps(2500, 50_000) == 500  # CartPole: evaluations at 2,500, 5,000, ...
    assert iteration_steps(1000, 20_000) == 1000 and iteration_steps(25_000, 250_000) == 1000
    assert iteration_steps(2500, 51_000) == 500 and iteration_steps(2500, 50_300) == 100
    for model in (CARTPOLE_DQN_MODEL, SAC_MODEL):
        for key, name in model.items():
            if key.endswith("_initializer"):
                assert name.endswith("_") and callable(getattr(torch.nn.init, name))
    assert json.loads(json.dumps(SAC_MODEL)) == SAC_MODEL  # JSON settings (the results file)


def test_sb3_peer_skips_tasks_whose_env_package_is_missing_instead_of_crashing():
    from system.bench.sb3_learning_peer import env_package

    assert env_package("MinAtar/Breakout-v0") == "minatar" and env_package("Hopper-v5") == "mujoco"
    assert env_package("CartPole-v1") is None and env_package("Pendulum-v1") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--run-timeout", "0"], "--run-timeout: must be > 0"),
        (["--tasks", "cartpole,pong"], "--tasks: unknown 'pong'"),
        (["--systems", "qfleet,dopamine"], "--systems: unknown 'dopamine'"),
        (["--tasks", "cartpole,acrobot", "--config", "configs/cartpole.yaml"], "--config: give one task"),
        (["--steps", "acrobot=1000"], "'acrobot' is not among the tasks"),
        (["--threshold", "cartpole=high"], "expected TASK=VALUE"),
    ],
)
def test_bad_suite_options_are_refused_before_anything_runs(argv, message, tmp_path):
    import argparse

    from system.cli import bench
    from system.config import ConfigError

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "learning", "--out-dir", str(tmp_path / "out"), *argv])
    with pytest.raises(ConfigError, match=message):
        bench.run(args)
    assert not (tmp_path / "out").exists()


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_stopping_a_child_whose_leader_already_exited_kills_what_it_left_in_its_group(tmp_path):
    import time

    from system.bench.children import start_child, stop_child

    pid_file = tmp_path / "pid"
    with open(pid_file, "w") as out:  # the leader starts a server-like process in its group, then exits
        process = start_child(["sh", "-c", "sleep 600 & echo $!"], stdout=out)
        process.wait()
    left = int(pid_file.read_text())
    assert _running(left)
    assert stop_child(process, timeout_s=60) == 0
    deadline = time.monotonic() + 120  # SIGKILL is prompt; generous for a loaded machine
    while _running(left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(left)
