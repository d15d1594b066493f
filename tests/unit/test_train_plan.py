"""`qfleet train`'s plan: what it derives from a config before anything starts."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from learner import sample_error_buffer
from replay.rate_limiter import RateLimiter
from system.errors import ConfigError
from system.train import evaluates_in_driver, launch, plan, shard_config
from system.train.launch import fresh_online_start
from system.train.run_dir import RunDir


def limiter_of(settings) -> RateLimiter:
    return RateLimiter(settings.min_size, settings.samples_per_insert, settings.error_buffer)


def test_a_shard_takes_learning_starts_items_before_any_sample_then_holds_writers_to_the_utd(tmp_path):
    planned = plan("configs/cartpole.yaml", ["train.num_shards=2"], str(tmp_path / "run"), None)
    learner = planned.config.learner
    spi = learner.samples_per_insert
    slack = math.floor(sample_error_buffer(learner) / spi) + 1  # min_size 1: the first item is free
    for shard_id in (0, 1):
        settings = shard_config(planned.config, shard_id, "redis://127.0.0.1:1/0", planned.name, planned.run)
        assert settings.shard_id == shard_id and settings.run == planned.name
        assert settings.checkpoint_dir == str(tmp_path / "run" / "replay" / f"shard-{shard_id}")
        limiter = limiter_of(settings)
        # Either shard alone can fill the whole warm-up: actors never wait on a shard the learner
        # cannot sample yet (a deadlock if the actors all write to one shard).
        assert limiter.insertable(10**9, inserts=0, samples=0) == learner.learning_starts + slack
        # Afterwards a writer gets one item per `spi` sampled items: the UTD, enforced on actors.
        inserts = learner.learning_starts + slack
        assert limiter.insertable(10**9, inserts, samples=0) == 0
        assert limiter.insertable(10**9, inserts, samples=int(100 * spi)) == 100
        # ... and the learner may sample everything the ratio allows on that shard.
        assert limiter.sampleable(10**9, inserts, samples=0) >= inserts * spi


def test_planning_a_run_and_its_shards_leaves_torch_to_the_learner(tmp_path):
    """The driver plans the run and its shards' rate limiters without importing torch: the import
    takes seconds of CPU, and in `qfleet train` it would come before the shards are even asked for."""
    code = (
        "import sys\n"
        "from system.train import plan, shard_config\n"
        f"planned = plan('configs/cartpole.yaml', [], {str(tmp_path / 'run')!r}, None)\n"
        "shard_config(planned.config, 0, 'redis://127.0.0.1:1/0', planned.name, planned.run)\n"
        "print(sorted(name for name in sys.modules if name == 'torch' or name.startswith('torch.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout[:300]


def test_seed_names_and_existing_run_directories(tmp_path):
    planned = plan("configs/cartpole.yaml", ["train.seed=7"], str(tmp_path / "seeded"), None)
    assert (planned.config.learner.seed, planned.config.actors.seed, planned.config.replay.seed) == (7, 7, 7)
    assert planned.name == "seeded" and planned.config.train.run_dir == str(tmp_path / "seeded")
    assert planned.obs_shape == (4,) and planned.action_space.num_actions == 2
    RunDir(tmp_path / "seeded").write_config(planned.config)
    with pytest.raises(ConfigError, match="already holds a run: continue it with --resume"):
        plan("configs/cartpole.yaml", [], str(tmp_path / "seeded"), None)
    resumed = plan(None, ["train.total_env_steps=123"], None, str(tmp_path / "seeded"))
    assert resumed.config.train.total_env_steps == 123 and resumed.config.learner.seed == 7
    assert resumed.state == {}
    RunDir(tmp_path / "seeded").write_json("state.json", {"env_steps": 50_000})
    with pytest.raises(ConfigError, match="already did 50,000 env steps"):
        plan(None, ["train.total_env_steps=50000"], None, str(tmp_path / "seeded"))
    assert plan(None, ["train.total_env_steps=60000"], None, str(tmp_path / "seeded")).state["env_steps"] == 50_000


def test_on_a_cluster_metrics_leave_loopback_unless_configured(tmp_path):
    cluster = ["ray.address=auto", "redis.url=redis://10.0.0.1:6390/0"]
    planned = plan("configs/cartpole.yaml", cluster, str(tmp_path / "a"), None)
    # Prometheus runs on another machine: the driver and actors advertise their node's address.
    assert planned.config.actors.metrics_host == "node" and planned.config.train.metrics_host == "node"
    chosen = plan("configs/cartpole.yaml", [*cluster, "actors.metrics_host=0.0.0.0"], str(tmp_path / "b"), None)
    assert chosen.config.actors.metrics_host == "0.0.0.0"
    local = plan("configs/cartpole.yaml", [], str(tmp_path / "c"), None)
    assert local.config.actors.metrics_host == "127.0.0.1" and local.config.train.metrics_host == "127.0.0.1"


def test_android_configs_plan_without_launching_anything_and_emulator_runs_skip_driver_evaluations(tmp_path):
    fake = plan("configs/android_fake.yaml", [], str(tmp_path / "fake"), None)
    assert fake.obs_shape == (32, 32, 1) and fake.action_space.num_actions == 16 + 4 + 2 + 3 + 1
    assert evaluates_in_driver(fake.config)
    # The emulator config plans on a machine without any Android SDK: nothing is launched here,
    # the launch settings are checked on the emulator hosts, and the driver does not evaluate.
    cluster = ["ray.address=auto", "redis.url=redis://10.0.0.1:6390/0"]
    emulator = plan("configs/android_emulator.yaml", cluster, str(tmp_path / "emu"), None)
    assert emulator.config.actors.resources == {"android_emulator": 1.0}
    assert not evaluates_in_driver(emulator.config)


def test_a_factored_policy_on_an_env_without_kinds_of_action_is_refused_by_the_plan(tmp_path):
    overrides = ["learner.loss=iql", "learner.policy_head=factored"]
    with pytest.raises(ConfigError, match=r"learner.policy_head='factored'.*'CartPole-v1'.*Discrete\(2\)"):
        plan("configs/cartpole.yaml", overrides, str(tmp_path / "run"), None)
    assert not (tmp_path / "run").exists()
    assert plan("configs/cartpole.yaml", ["learner.loss=iql"], str(tmp_path / "run"), None).config.learner.loss == "iql"


def test_a_resumed_run_keeps_its_derived_support_and_refuses_to_change_it(tmp_path):
    overrides = ["env.id=Acrobot-v1", "learner.v_min=auto", "learner.v_max=auto"]
    planned = plan("configs/cartpole.yaml", overrides, str(tmp_path / "run"), None)
    support = planned.config.learner.distributional
    assert (support.v_min, support.v_max, support.derived) == (-110.0, 10.0, True)
    RunDir(tmp_path / "run").write_config(planned.config)
    resumed = plan(None, ["train.total_env_steps=60000"], None, str(tmp_path / "run"))
    assert resumed.config.learner.distributional == support  # read back, not probed again
    for key in ("learner.v_max=20", "learner.num_bins=101", "learner.distributional.value_transform=symlog"):
        with pytest.raises(ConfigError, match=f"--set {key.split('=')[0]}: a resumed run keeps the value support"):
            plan(None, [key], None, str(tmp_path / "run"))


@pytest.mark.parametrize(
    ("case", "beside"),
    [
        ("fresh online run", True),
        ("resumed run with a state.json", False),
        ("resumed run whose first session ended before its state.json", False),
        ("run with an offline dataset", False),
        ("offline-only run", False),
    ],
)
def test_processes_start_side_by_side_only_in_a_fresh_online_run(tmp_path, case, beside):
    planned = plan("configs/cartpole.yaml", [], str(tmp_path / "run"), None)
    if case.startswith("resumed"):
        planned.resumed = True  # as `plan(..., resume=RUN_DIR)` sets it
        planned.state = {"env_steps": 5000} if "with a state.json" in case else {}
    elif case == "run with an offline dataset":
        planned.offline_data = object()  # a loaded dataset
    elif case == "offline-only run":
        train = dataclasses.replace(planned.config.train, total_env_steps=0)
        planned.config = dataclasses.replace(planned.config, train=train)
    assert fresh_online_start(planned) is beside


def test_a_resume_is_planned_as_resumed_even_without_a_state_json(tmp_path):
    first = plan("configs/cartpole.yaml", [], str(tmp_path / "run"), None)
    assert not first.resumed
    first.run.path.mkdir(parents=True)
    first.run.write_config(first.config)
    resumed = plan(None, [], None, str(first.run.path))
    assert resumed.resumed and resumed.state == {} and not fresh_online_start(resumed)


def _record_start_order(monkeypatch, planned, fail_shards: bool = False, cluster: dict | None = None):
    """Runs launch's shards-and-learner step with its steps replaced by recorders, on a Ray
    cluster of `cluster`'s resources (default: CPUs for everything); returns the calls in order
    and the components (the learner handle is what a stop would stop)."""
    import threading
    from types import SimpleNamespace

    calls: list[str] = []

    def create_learner(plan_, components, counters):
        calls.append("learner")
        assert components.learner is None, "the learner is asked for twice"
        components.learner = "learner handle"

    def await_shards(components):
        calls.append("await shards")
        if fail_shards:
            raise RuntimeError("a shard failed to start")

    def start_actors(plan_, counters, components):
        calls.append("actors")
        assert components.fleet is None, "the actors are asked for twice"
        components.fleet = "fleet handle"

    monkeypatch.setattr(launch, "_create_shards", lambda plan_, components: calls.append("shards"))
    monkeypatch.setattr(launch, "start_actors", start_actors)
    monkeypatch.setattr(launch, "_await_shards", await_shards)
    monkeypatch.setattr(launch, "_start_offline_shards", lambda *args: calls.append("offline shards"))
    monkeypatch.setattr(launch, "_create_learner", lambda *a: None if a[1].learner else create_learner(*a))
    if cluster is None:
        cluster = {"CPU": launch._cpus_needed(planned.config)}
    components = SimpleNamespace(
        learner=None, fleet=None, info={}, ray=SimpleNamespace(cluster_resources=lambda: cluster)
    )
    planned.run.path.mkdir(parents=True, exist_ok=True)  # run.json is written after each step
    components.error = None
    try:
        launch._start_shards_and_learner(planned, components, None, threading.Event())
    except RuntimeError as exc:  # as the driver gets it
        components.error = exc
    assert fail_shards or components.error is None or isinstance(components.error, launch.TrainError)
    return calls, components


def test_a_fresh_runs_actors_and_learner_are_asked_for_beside_its_shards_and_a_resumed_ones_after(
    tmp_path, monkeypatch
):
    fresh = plan("configs/cartpole.yaml", [], str(tmp_path / "fresh"), None)
    calls, components = _record_start_order(monkeypatch, fresh)
    # The actors before the learner: they take Ray's prestarted workers, and the first env step waits on them.
    assert calls == ["shards", "actors", "learner", "await shards", "offline shards"]
    assert components.learner == "learner handle" and components.fleet == "fleet handle"

    resumed = plan("configs/cartpole.yaml", [], str(tmp_path / "resumed"), None)
    resumed.resumed = True
    calls, _ = _record_start_order(monkeypatch, resumed)
    assert calls == ["shards", "await shards", "offline shards", "learner"]

    with_dataset = plan("configs/cartpole.yaml", [], str(tmp_path / "dataset"), None)
    with_dataset.offline_data = object()
    calls, _ = _record_start_order(monkeypatch, with_dataset)
    assert calls == ["shards", "await shards", "offline shards", "learner"]


@pytest.mark.parametrize(
    ("case", "overrides", "cpus_short"),
    [
        ("ray.num_cpus below what the actors and the learner ask for", [], 0.5),
        ("more actors than the cluster has CPUs", ["actors.num_actors=64"], None),
        ("actors that ask for custom resources", ["actors.resources={actor_host: 1}"], 0),
        ("a learner that asks for custom resources", ["train.learner_resources={gpu_host: 1}"], 0),
        # other jobs, CPUs split across nodes (the actors go SPREAD), a GPU node's CPUs: unforeseeable
        (
            "a Ray cluster (ray.address set), however many CPUs it has",
            ["ray.address=auto", "redis.url=redis://redis-host:6379/0"],
            -1000,
        ),
    ],
)
def test_a_fresh_run_asks_for_its_learner_before_its_actors_where_not_all_can_be_placed(
    tmp_path, monkeypatch, case, overrides, cpus_short
):
    # Ray hands out CPUs in the order they are asked for: actors first would leave the learner none.
    fresh = plan("configs/cartpole.yaml", overrides, str(tmp_path / "fresh"), None)
    need = launch._cpus_needed(fresh.config)
    cpus = 8 if cpus_short is None else need - cpus_short
    assert cpus < need or cpus_short <= 0
    calls, components = _record_start_order(monkeypatch, fresh, cluster={"CPU": cpus})
    assert calls == ["shards", "learner", "actors", "await shards", "offline shards"]
    assert components.learner == "learner handle" and components.fleet == "fleet handle"


def test_a_fresh_run_whose_learner_needs_a_gpu_the_cluster_lacks_fails_before_its_actors_start(tmp_path, monkeypatch):
    fresh = plan("configs/cartpole.yaml", [], str(tmp_path / "fresh"), None)
    # (plan refuses cuda on a machine without it; on a cluster the driver's node may have none)
    learner = dataclasses.replace(fresh.config.learner, device="cuda")
    fresh.config = dataclasses.replace(fresh.config, learner=learner)
    calls, components = _record_start_order(monkeypatch, fresh, cluster={"CPU": 64})
    assert "learner.device='cuda': the Ray cluster has no GPU" in str(components.error)
    assert calls == ["shards"]  # neither the actors nor the learner were asked for


def test_a_shard_that_fails_after_a_fresh_runs_actors_and_learner_were_asked_for_leaves_them_to_stop(
    tmp_path, monkeypatch
):
    fresh = plan("configs/cartpole.yaml", [], str(tmp_path / "fresh"), None)
    calls, components = _record_start_order(monkeypatch, fresh, fail_shards=True)
    assert calls == ["shards", "actors", "learner", "await shards"]
    # shutdown stops what is in the components: the learner and the actors waiting for a shard
    assert components.learner == "learner handle" and components.fleet == "fleet handle"


def test_a_plain_resume_runs_on_to_the_runs_own_total_env_steps(tmp_path):
    first = plan("configs/cartpole.yaml", ["train.total_env_steps=12345"], str(tmp_path / "run"), None)
    first.run.path.mkdir(parents=True)
    first.run.write_config(first.config)
    resumed = plan(None, [], None, str(first.run.path))
    assert resumed.config.train.total_env_steps == 12345
