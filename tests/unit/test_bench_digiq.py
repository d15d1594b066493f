"""`qfleet bench digiq`'s bookkeeping: the results file a stopped run resumes from, its argument
checks and its targets, on hand-made cells (the pipeline itself runs in the MiniWoB subprocess tests)."""

from __future__ import annotations

import json

import pytest

from system.bench.digiq import FILTERED_BC, ONLINE, DigiqSettings, Results, TaskRun, digiq_cell, table
from system.cli import build_parser
from system.config import ConfigError


def solved(rate: float, **more) -> dict:
    return {"success_rate": rate, "successes": int(100 * rate), "episodes": 100, "eval_seed": 10_000, **more}


def test_a_rerun_with_the_same_file_and_settings_finds_the_cells_a_stopped_run_finished(tmp_path):
    out = tmp_path / "digiq.json"
    first = Results(out, DigiqSettings(updates=300))
    first.record("click-button", FILTERED_BC, solved(0.5))
    first.record("click-button", digiq_cell(4), solved(0.75))

    again = Results(out, DigiqSettings(updates=300))
    assert again.done("click-button", FILTERED_BC)["success_rate"] == 0.5
    assert again.done("click-button", digiq_cell(4))["successes"] == 75
    assert again.done("click-button", digiq_cell(16)) is None
    assert again.done("click-link", FILTERED_BC) is None
    again.record("click-link", FILTERED_BC, solved(0.25))  # keeps the earlier run's cells
    stored = json.loads(out.read_text())
    assert set(stored["tasks"]) == {"click-button", "click-link"}
    assert stored["settings"]["updates"] == 300
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed


def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path):
    out = tmp_path / "digiq.json"
    Results(out, DigiqSettings(updates=300, follow_p=0.5)).record("click-button", FILTERED_BC, solved(0.5))
    with pytest.raises(ConfigError, match=r"other settings \(follow_p, updates\)"):
        Results(out, DigiqSettings(updates=600, follow_p=0.7))


def test_the_table_gives_the_means_and_judges_the_issue_targets(tmp_path):
    results = Results(tmp_path / "digiq.json", DigiqSettings(best_of_n=(16,)))
    rows = (("click-button", 0.5, 0.7, 0.6, 0.8, 30.0), ("click-tab", 0.3, 0.4, 0.4, 0.3, 8.0))
    for task, bc, digiq, before, online, ratio in rows:
        results.record(task, "features dataset", {"success_rate": 0.6})
        results.record(task, FILTERED_BC, solved(bc, updates=500))
        results.record(task, digiq_cell(16), solved(digiq, updates=500))
        offline_phase = solved(before, updates=500)
        results.record(task, ONLINE, solved(online, updates=900, offline_phase=offline_phase))
        speed = {"features": {"updates_per_s": 8.0 * ratio}, "pixels": {"updates_per_s": 8.0}, "ratio": ratio}
        results.record(task, "updates/s", speed)
    text = table(results)
    assert (
        "| click-button | 0.60 | 0.50 (500 upd) | 0.70 (500 upd) | 0.60 (500 upd) | 0.80 (900 upd) "
        "| 240.0 | 8.00 | 30.0x |" in text
    )
    assert "| mean | 0.60 (2 tasks) | 0.40 (2 tasks) | 0.55 (2 tasks) | 0.50 (2 tasks) | 0.55 (2 tasks) |" in text
    assert "Digi-Q offline N=16 - filtered BC: +15.0 points over 2 tasks (>= 10: met)." in text
    # online against the same run's offline phase (0.6 -> 0.8, 0.4 -> 0.3), not the separate N=16 cell
    assert (
        "Online - its own offline phase (N=16, one run, 5,000 env steps): +5.0 points over 2 tasks (> 0: met)." in text
    )
    assert "19.0x median, 8.0x lowest (2 tasks; >= 10x: not met)" in text


@pytest.mark.parametrize(
    "options, message",
    [
        (["--tasks", "click-button,book-flight"], "book-flight: the instruction-following behaviour has rules for"),
        (["--tasks", "click-tab,click-tab"], "a task is named twice"),
        (["--best-of-n", "1,x"], "--best-of-n '1,x': expected comma-separated integers"),
        (["--best-of-n", "0,4"], "every N must be >= 1"),
        (["--eval-episodes", "0"], "--eval-episodes 0: must be >= 1"),
        (["--follow-p", "1.5"], r"--follow-p 1.5: must be in \[0, 1\]"),
        (["--set", "learner.no_such_key=1"], "no_such_key"),
        (["--eval-episodes", "401"], "--eval-episodes 401: at most 100 rounds of --browsers 4"),
        (["--online-n", "8"], "--online-n 8: not among --best-of-n 1,4,16"),
        (["--set", "learner.best_of_n=4"], "--set learner.best_of_n: the bench sets learner.best_of_n itself"),
        (["--set", "learner.loss=iql"], "--set learner.loss: the bench sets"),
        (["--set", "env.features.path=x"], "--set env.features.path: the bench sets env.features itself"),
        (["--set", "offline.updates=9"], "--set offline.updates: the bench sets offline itself"),
        (["--updates", "500"], r"--updates 500: the first learner.policy_starts=1000 updates are pi's filtered-BC"),
        (["--updates", "1500", "--set", "learner.policy_starts=1500"], "--updates 1500.*policy_starts=1500"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(options, message, tmp_path):
    from system.bench.digiq import digiq_from_arguments

    args = build_parser().parse_args(["bench", "digiq", "--out", str(tmp_path / "x.json"), *options])
    with pytest.raises(ConfigError, match=message):
        digiq_from_arguments(args)


class ScriptedTask(TaskRun):
    """A task whose cells return at once, and raise where told (the real cells run browsers)."""

    def __init__(self, results, failing):
        super().__init__("click-button", results.settings, results, results.path.parent)
        self.failing, self.ran = failing, []

    def run_cell(self, cell):
        self.ran.append(cell)
        if cell in self.failing:
            raise RuntimeError(f"{cell}: exited 1")
        return solved(0.5)


def test_a_failed_learner_cell_skips_only_itself_and_a_failed_preparation_the_rest_of_its_task(tmp_path):
    settings = DigiqSettings(best_of_n=(1, 4), online_n=4)
    learner_fails = ScriptedTask(Results(tmp_path / "a.json", settings), {digiq_cell(1)})
    assert learner_fails.run() is False
    assert learner_fails.ran == list(settings.cells())  # every other cell still ran
    assert learner_fails.results.done("click-button", digiq_cell(1)) is None
    assert learner_fails.results.done("click-button", digiq_cell(4)) is not None

    encoder_fails = ScriptedTask(Results(tmp_path / "b.json", settings), {"encoder"})
    assert encoder_fails.run() is False
    assert encoder_fails.ran == ["pixels dataset", "encoder"]
    again = ScriptedTask(Results(tmp_path / "b.json", settings), set())  # the re-run retries from there
    again.prepared("pixels dataset").mkdir(parents=True)  # what the real pixels cell would have left
    assert again.run() is True and again.ran == list(settings.cells())[1:]


def test_a_finished_preparation_whose_files_are_gone_is_redone_with_everything_after_it(tmp_path):
    settings = DigiqSettings(best_of_n=(1,), online_n=1)
    first = ScriptedTask(Results(tmp_path / "a.json", settings), set())
    for cell in ("pixels dataset", "features dataset"):
        first.prepared(cell).mkdir(parents=True)
    first.paths.encoder.mkdir(parents=True)
    first.prepared("encoder").write_text("{}")
    assert first.run() is True
    first.prepared("encoder").unlink()  # the encoder was deleted since
    again = ScriptedTask(Results(tmp_path / "a.json", settings), set())
    assert again.run() is True
    assert again.ran == list(settings.cells())[1:]  # the pixels dataset is still there: kept


def test_secrets_in_overrides_are_redacted_in_the_results_file_and_the_log(tmp_path, monkeypatch):
    from system.bench.digiq import redact_word

    password_url = "redis.url=redis://:hunter2@10.0.0.1:6379/0"
    settings = DigiqSettings(overrides=(password_url, "replay.token=hunter2"))
    monkeypatch.setattr("sys.argv", ["qfleet", "bench", "digiq", "--set", password_url])
    out = tmp_path / "digiq.json"
    Results(out, settings).record("click-button", FILTERED_BC, solved(0.5))
    assert "hunter2" not in out.read_text()
    assert Results(out, settings).done("click-button", FILTERED_BC) is not None  # resumes with the same settings
    assert redact_word(password_url) == "redis.url=redis://:***@10.0.0.1:6379/0"
    assert redact_word("redis://:hunter2@h:1") == "redis://:***@h:1"
    assert redact_word("learner.batch_size=64") == "learner.batch_size=64"


def overrides_of(command: list[str]) -> dict[str, str]:
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_every_cell_trains_with_the_same_budget_and_data_and_its_label_is_its_n(tmp_path):
    import dataclasses

    from system.bench.digiq import CONFIG, ROOT, learner_settings, online_command
    from system.config import load_config

    settings = DigiqSettings(best_of_n=(1, 4), online_n=4, updates=1200, seed=3, overrides=("learner.hidden_size=64",))
    run = TaskRun("click-button", settings, Results(tmp_path / "d.json", settings), tmp_path)
    offline = {cell: run.config(learner_settings(cell, settings)) for cell in (FILTERED_BC, *map(digiq_cell, (1, 4)))}
    online = overrides_of(online_command(run.paths, settings))
    online_config = load_config(str(ROOT / CONFIG), [f"{k}={v}" for k, v in online.items()])
    for cell, config in [*offline.items(), (ONLINE, online_config)]:
        assert config.learner.batch_size == online_config.learner.batch_size, cell
        assert config.learner.architecture.hidden_size == 64, cell  # the user's --set reaches every cell
        assert config.train.seed == 3, cell
        assert config.env.features.path == str(run.paths.encoder), cell
    for n in (1, 4):
        assert offline[digiq_cell(n)].learner.iql.n == n
    assert online_config.learner.iql.n == settings.online_n
    assert online_config.offline.updates == settings.updates
    assert online_config.offline.dataset == run.paths.features_id
    assert offline[FILTERED_BC].learner.loss == "filtered_bc"

    features, pixels = run.throughput_configs()

    def leaves(value, prefix=""):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in leaves(item, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    mine, theirs = leaves(features), leaves(pixels)
    differ = {key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key)}
    assert differ and all(key == "learner.architecture.torso" or key.startswith("env.features.") for key in differ), (
        differ
    )


def test_a_set_cql_alpha_reaches_the_digiq_cells_and_the_online_run_but_not_filtered_bc(tmp_path):
    from system.bench.digiq import CONFIG, ROOT, learner_settings, online_command
    from system.config import load_config

    settings = DigiqSettings(best_of_n=(1, 4), online_n=4, overrides=("learner.cql_alpha=0.5",))
    run = TaskRun("click-button", settings, Results(tmp_path / "d.json", settings), tmp_path)
    for n in (1, 4):
        assert run.config(learner_settings(digiq_cell(n), settings)).learner.iql.cql_alpha == 0.5
    online = overrides_of(online_command(run.paths, settings))
    assert load_config(str(ROOT / CONFIG), [f"{k}={v}" for k, v in online.items()]).learner.iql.cql_alpha == 0.5
    filtered_bc = run.config(learner_settings(FILTERED_BC, settings)).learner  # no critic: refused if it kept 0.5
    assert (filtered_bc.loss, filtered_bc.iql.cql_alpha) == ("filtered_bc", 0.0)


def test_the_critic_ranking_counts_where_the_rewarded_action_has_the_highest_q_and_its_advantage_auc():
    import numpy as np

    from system.bench.digiq import critic_ranking

    q = np.array(
        [
            [0.1, 0.9, 0.2],  # rewarded, recorded 1: the highest (rank 0)
            [0.8, 0.3, 0.7],  # rewarded, recorded 2: one action above it (rank 1)
            [0.5, 0.4, 0.6],  # unrewarded, recorded 0
        ]
    )
    value = np.array([0.5, 0.5, 0.5])
    ranking = critic_ranking(q, value, np.array([1, 2, 0]), np.array([True, True, False]))
    assert ranking["rewarded_action_top1"] == 0.5
    assert ranking["rewarded_action_mean_rank"] == 0.5
    # advantages: rewarded 0.4, 0.2; unrewarded 0.0: both rewarded steps rank above it
    assert ranking["advantage_auc"] == 1.0
    assert ranking["q_max_mean"] == pytest.approx((0.9 + 0.8 + 0.6) / 3, abs=1e-4)

    swapped = critic_ranking(q, np.array([0.9, 0.9, 0.0]), np.array([1, 2, 0]), np.array([True, True, False]))
    assert swapped["advantage_auc"] == 0.0  # the unrewarded step's advantage (0.5) beats both (0.0, -0.2)


def test_the_critic_ranking_gives_a_flat_critic_no_credit_and_counts_tied_advantages_half():
    import numpy as np

    from system.bench.digiq import critic_ranking

    flat = critic_ranking(np.zeros((4, 3)), np.zeros(4), np.array([0, 1, 2, 0]), np.array([True, True, False, False]))
    assert flat["rewarded_action_top1"] == 0.0  # tied with every action: not the strictly highest
    assert flat["rewarded_action_mean_rank"] == 1.0  # (3 - 1) / 2: the middle of the three tied
    assert flat["advantage_auc"] == 0.5  # every pair tied
    q = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # advantages: rewarded 1.0, 0.0; unrewarded 0.0, 0.0, -1.0: pairs won 3 + 1, tied 2 of 6
    value = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    ranking = critic_ranking(q, value, np.array([0, 0, 0, 0, 0]), np.array([True, True, False, False, False]))
    assert ranking["rewarded_action_mean_rank"] == pytest.approx((0.5 + 1.0) / 2)
    assert ranking["advantage_auc"] == pytest.approx((4 + 0.5 * 2) / 6, abs=1e-4)
    rng = np.random.default_rng(0)  # the rank-based AUC is the pairwise one
    advantage, rewarded = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.3
    good, bad = advantage[rewarded], advantage[~rewarded]
    pairwise = (good[:, None] > bad[None, :]).mean() + 0.5 * (good[:, None] == bad[None, :]).mean()
    got = critic_ranking(advantage[:, None], np.zeros(200), np.zeros(200, dtype=int), rewarded)["advantage_auc"]
    assert got == pytest.approx(pairwise, abs=1e-4)


def test_skipped_cells_are_not_run_and_an_unknown_skip_is_refused():
    cells = DigiqSettings(skip=("online", "updates/s")).cells()
    assert cells[-1] == "Digi-Q offline N=16" and "updates/s" not in cells
    assert DigiqSettings(skip=("updates/s",)).cells()[-1] == "Digi-Q offline -> online"
    with pytest.raises(ConfigError, match="--skip encoder: only online, updates/s can be skipped"):
        DigiqSettings(skip=("encoder",))


def test_the_skipped_cells_resume_in_any_order_and_online_n_matters_only_with_an_online_cell(tmp_path):
    from system.bench.digiq import digiq_from_arguments

    out = tmp_path / "digiq.json"
    Results(out, DigiqSettings(skip=("updates/s", "online"))).record("click-button", FILTERED_BC, solved(0.5))
    again = Results(out, DigiqSettings(skip=("online", "updates/s", "online")))
    assert again.done("click-button", FILTERED_BC)["success_rate"] == 0.5
    assert json.loads(out.read_text())["settings"]["skip"] == ["online", "updates/s"]

    base = ["bench", "digiq", "--out", str(out), "--best-of-n", "1,4", "--online-n", "16"]
    _, settings = digiq_from_arguments(build_parser().parse_args([*base, "--skip", "updates/s,online"]))
    assert settings.skip == ("online", "updates/s") and ONLINE not in settings.cells()
    with pytest.raises(ConfigError, match="--online-n 16: not among --best-of-n 1,4"):
        digiq_from_arguments(build_parser().parse_args([*base, "--skip", "updates/s"]))
