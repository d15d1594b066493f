"""`qfleet train CONFIG`: the whole system for one run, from one command.

With no `redis.url` and no `ray.address` (the embedded default) everything runs on this machine:
a redis-server child on a free loopback port, `ray.init()`, then as Ray actors `train.num_shards`
replay shards, the learner and `actors.num_actors` env actors. With both set, the same wiring runs
on a Ray cluster. The order of things:

    check the config (env spaces, sizes, memory) -> nothing has started if it is wrong
    run directory (config.yaml, run.json) -> Redis -> Ray -> shards -> learner -> actors
    loop: supervise actors, read episodes, evaluate every eval_every_steps, record metrics.jsonl,
          print progress, until total_env_steps, Ctrl-C/SIGTERM, or a component fails
    stop actors (they flush) -> learner (publishes, checkpoints) -> final evaluation -> shards
    (checkpoint) -> Ray -> Redis; state.json; learning curve and summary

The UTD is held in both directions: the learner's global limiter makes it wait for data, and the
shards' limiters (derived from learner.updates_per_env_step) make actors wait for the learner, so
env steps and updates advance together whatever the speed of either side.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import re
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass

from actors import UnsupportedEnvError, describe_env
from system.config import RunConfig, load_config
from system.config.dataclass_args import ConfigError
from system.local.signals import stop_on_signals
from system.observe.discovery import DISCOVERY_EVERY_S
from system.train.run_dir import RunDir

log = logging.getLogger("qfleet.train")

RECORD_EVERY_S = 1.0
"""Seconds between progress records in metrics.jsonl."""

RATE_WINDOW_S = 10.0
"""Env steps/s in progress lines and records: over this many seconds."""

RECENT_EPISODES = 100
"""The "recent return" is the mean over this many latest episodes."""


class TrainError(RuntimeError):
    """A component of the run failed; the run was stopped (checkpoints written where possible)."""


@dataclass
class Plan:
    """A checked run, before anything starts."""

    config: RunConfig
    run: RunDir
    name: str
    state: dict
    """Counters of the run so far (empty for a fresh run)."""
    obs_shape: tuple[int, ...]
    action_space: object
    spec: object


def _default_run_dir(config: RunConfig) -> pathlib.Path:
    if config.train.run_name:
        return pathlib.Path("runs") / config.train.run_name
    env = re.sub(r"[^A-Za-z0-9.-]+", "-", config.env.id).strip("-").lower()
    return pathlib.Path("runs") / f"{env}-{time.strftime('%Y%m%d-%H%M%S')}"


def _memory_available() -> int | None:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan(config_path: str | None, overrides: list[str], run_dir: str | None, resume: str | None) -> Plan:
    """Resolves and checks everything a run needs; nothing is started or written.

    Raises:
        ConfigError: a bad value (named), an unknown env, a replay that cannot fit in memory, a
            run directory that already holds a run (fresh runs), or one that holds none (resume).
    """
    if resume is not None:
        if config_path is not None:
            raise ConfigError("--resume RUN_DIR takes the run's own config.yaml: give no CONFIG with it")
        run = RunDir(resume)
        config = run.load_config(overrides)
        state = run.read_json("state.json") or {}
        done = int(state.get("env_steps", 0))
        if done >= config.train.total_env_steps:
            raise ConfigError(
                f"train.total_env_steps={config.train.total_env_steps}: the run already did {done:,} env steps; "
                f"go further with --set train.total_env_steps=N (N > {done})"
            )
        train = dataclasses.replace(config.train, run_dir=str(run.path))
        config = dataclasses.replace(config, train=train)
    else:
        config = load_config(config_path, overrides, {"train.run_dir": run_dir})
        run = RunDir(config.train.run_dir or _default_run_dir(config))
        if run.exists():
            raise ConfigError(
                f"train.run_dir={str(run.path)!r} already holds a run: continue it with --resume {run.path}, "
                "or choose another --run-dir"
            )
        state = {}
    name = config.train.run_name or re.sub(r"[^A-Za-z0-9_.-]+", "-", run.path.resolve().name)
    config = _reachable_metrics(_seeded(config))
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=str(run.path), run_name=name))
    try:
        spaces = describe_env(config.env)
    except UnsupportedEnvError as exc:
        raise ConfigError(str(exc)) from None
    _check(config, spaces.spec)
    return Plan(config, run, name, state, spaces.obs_shape, spaces.action_space, spaces.spec)


def _evaluates_in_driver(config: RunConfig) -> bool:
    """Whether the driver can run the env itself for evaluations (not an Android emulator)."""
    from actors.envs import ANDROID_ID

    android = config.env.android
    return not (config.env.id == ANDROID_ID and android is not None and android.simulator == "emulator")


def _reachable_metrics(config: RunConfig) -> RunConfig:
    """On a cluster, /metrics left on loopback move to the node's address (Prometheus runs elsewhere)."""
    if config.ray.address is None:
        return config
    actors, train = config.actors, config.train
    if actors.metrics_host == "127.0.0.1":
        actors = dataclasses.replace(actors, metrics_host="node")
    if train.metrics_host == "127.0.0.1":
        train = dataclasses.replace(train, metrics_host="node")
    return dataclasses.replace(config, actors=actors, train=train)


def _seeded(config: RunConfig) -> RunConfig:
    seed = config.train.seed
    if seed is None:
        return config
    return dataclasses.replace(
        config,
        learner=dataclasses.replace(config.learner, seed=seed),
        actors=dataclasses.replace(config.actors, seed=seed),
        replay=dataclasses.replace(config.replay, seed=seed),
    )


def _check(config: RunConfig, spec) -> None:
    """Cross-section checks: what no single section can know."""
    train, replay, learner = config.train, config.replay, config.learner
    total_capacity = replay.capacity * train.num_shards
    if learner.learning_starts > total_capacity:
        raise ConfigError(
            f"learner.learning_starts={learner.learning_starts} exceeds the replay's room "
            f"(replay.capacity={replay.capacity} x train.num_shards={train.num_shards}): training could never start"
        )
    if learner.batch_size > learner.learning_starts:
        raise ConfigError(
            f"learner.batch_size={learner.batch_size} exceeds learner.learning_starts={learner.learning_starts}: "
            "the first batches would repeat items many times; raise learning_starts"
        )
    if (config.redis.url is None) != (config.ray.address is None):
        which = "redis.url" if config.redis.url is None else "ray.address"
        raise ConfigError(
            f"{which} is not set: on a Ray cluster (ray.address) the run needs a Redis every node reaches "
            "(redis.url), and the other way round; set both, or neither for the embedded default"
        )
    if config.ray.address is None and learner.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"learner.device={learner.device!r}: CUDA is not available on this machine")
    need = total_capacity * spec.item_nbytes()
    available = _memory_available()
    if config.ray.address is None and available is not None and need > 0.8 * available:
        raise ConfigError(
            f"replay.capacity={replay.capacity}: {train.num_shards} shard(s) need {need / 2**30:.1f} GiB "
            f"({spec.item_nbytes():,} bytes per item) and this machine has {available / 2**30:.1f} GiB available; lower it"
        )
    actors = config.actors
    lead = config.actors.num_actors * actors.insert_batch * (actors.max_inserts_in_flight + 1)
    if lead > 0.05 * train.total_env_steps:
        log.warning(
            "actors may run up to %s transitions ahead of the learner (num_actors x insert_batch x "
            "(max_inserts_in_flight + 1)), %.0f%% of train.total_env_steps: lower actors.insert_batch or "
            "actors.max_inserts_in_flight for a tighter UTD",
            f"{lead:,}", 100 * lead / train.total_env_steps,
        )  # fmt: skip
    defaults = type(replay)()
    for key in ("samples_per_insert", "min_size", "error_buffer", "checkpoint_dir", "redis_url"):
        if getattr(replay, key) != getattr(defaults, key):
            log.warning(
                "replay.%s is set by qfleet train itself; the configured %r is ignored", key, getattr(replay, key)
            )


def shard_config(config: RunConfig, shard_id: int, redis_url: str, name: str, run: RunDir):
    """Shard `shard_id`'s settings: registry, checkpoints in the run directory, and the limiter
    that makes writers wait for the learner.

    The shard's window is Reverb's SampleToInsertRatio with min_size 1 and an error buffer wide
    enough for `learning_starts` items on any single shard plus the learner's own sampling slack:
    actors fill the replay to learning_starts, then run at most that far ahead of the UTD.
    """
    from learner import sample_error_buffer

    learner = config.learner
    spi = learner.samples_per_insert
    return dataclasses.replace(
        config.replay,
        shard_id=shard_id,
        redis_url=redis_url,
        run=name,
        port=0,
        metrics_port=0,
        samples_per_insert=spi,
        min_size=1,
        error_buffer=spi * learner.learning_starts + sample_error_buffer(learner),
        checkpoint_dir=str(run.replay_checkpoints(shard_id)) if config.train.checkpoint_replay else None,
        checkpoint_every_s=None,
        seed=None if config.replay.seed is None else config.replay.seed + shard_id,
    )


class _Totals:
    """The run's counters: this session's plus what earlier sessions of a resumed run did."""

    def __init__(self, state: dict):
        self.env_steps0 = int(state.get("env_steps", 0))
        self.episodes0 = int(state.get("episodes", 0))
        self.wall0 = float(state.get("wall_s", 0.0))
        self.next_eval = int(state.get("next_eval", 0))
        self.evals = int(state.get("evals", 0))
        self.started = time.monotonic()
        self.returns: deque[float] = deque(maxlen=RECENT_EPISODES)
        self.episodes = 0
        self.last_eval: tuple[int, float] | None = state.get("last_eval") and tuple(state["last_eval"])

    def wall(self) -> float:
        return self.wall0 + time.monotonic() - self.started

    def state(self, env_steps: int) -> dict:
        return {
            "env_steps": env_steps,
            "episodes": self.episodes0 + self.episodes,
            "wall_s": round(self.wall(), 3),
            "next_eval": self.next_eval,
            "evals": self.evals,
            "last_eval": list(self.last_eval) if self.last_eval else None,
        }


def _progress_line(rec: dict, total: int) -> str:
    recent = "-" if rec["recent_return"] is None else f"{rec['recent_return']:.1f}"
    evaluated = "-" if rec.get("last_eval") is None else f"{rec['last_eval'][1]:.1f} @ {rec['last_eval'][0]:,}"
    return (
        f"[{rec['wall_s']:7.0f} s] env steps {rec['env_steps']:,}/{total:,} ({rec['env_steps_per_s']:,.0f}/s) | "
        f"episodes {rec['episodes']:,}, return {recent} (eval {evaluated}) | "
        f"updates {rec['updates']:,} ({rec['updates_per_s']:,.0f}/s), utd {rec['achieved_utd']:.3f}/{rec['target_utd']:g} | "
        f"replay {rec['replay_size']:,} | weights v{rec['weights_version']}"
    )


def run_train(config_path: str | None, overrides: list[str], run_dir: str | None, resume: str | None) -> int:
    """Entry of `qfleet train` after argument parsing; returns the exit code."""
    p = plan(config_path, overrides, run_dir, resume)
    config, run = p.config, p.run
    stop = stop_on_signals(
        log, "stopping in order: actors flush, the learner checkpoints, shards checkpoint (again: at once)", True
    )
    run.write_config(config)
    session = _Session(p, stop)
    what = f"resuming at {session.totals.env_steps0:,} env steps" if resume else "fresh"
    print(f"qfleet train: run {p.name!r} in {run.path} ({what}); {config.env.id}, "
          f"{config.actors.num_actors} actors x {config.env.num_envs} envs, {config.train.num_shards} shard(s), "
          f"until {config.train.total_env_steps:,} env steps", flush=True)  # fmt: skip
    code = session.run()
    from system.observe.report import write_report

    try:
        print(write_report(run), flush=True)
    except Exception as exc:  # the run is done and saved; a plotting problem is not fatal
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
    if session.error:
        print(f"qfleet train: {session.error}", file=sys.stderr, flush=True)
    done = session.env_steps >= config.train.total_env_steps
    hint = "" if done else f"; continue it with: qfleet train --resume {run.path}"
    print(f"qfleet train: {'finished' if done else 'stopped'} at {session.env_steps:,} env steps; "
          f"run directory {run.path}{hint}", flush=True)  # fmt: skip
    return code


class _Session:
    """One `qfleet train` session: starts the components, runs the loop, stops them in order."""

    def __init__(self, plan: Plan, stop):
        self.plan, self.stop = plan, stop
        self.config, self.dir, self.name = plan.config, plan.run, plan.name
        self.totals = _Totals(plan.state)
        if self.totals.next_eval == 0:
            self.totals.next_eval = self.config.train.eval_every_steps
        self.env_steps = self.totals.env_steps0
        self.info: dict = {"run": plan.name, "host": socket.gethostname(), "driver_pid": os.getpid(),
                           "started_at": time.time()}  # fmt: skip
        self.error: str | None = None
        self.redis = self.ray = self.fleet = self.learner = self.evaluator = None
        self.shards: list = []
        self._latest: dict | None = None

    def run(self) -> int:
        """Starts everything, trains, stops everything; returns the exit code."""
        code = 0
        try:
            self._start()
            if not self.stop.is_set():
                self._loop()
        except TrainError as exc:
            self.error, code = str(exc), 1
        except ConfigError:
            raise
        except Exception as exc:  # anything else: stop in order all the same, then report it
            log.exception("qfleet train failed")
            self.error, code = f"{type(exc).__name__}: {exc}", 1
        finally:
            self._shutdown()
        return 1 if self.error else code

    # -- start ---------------------------------------------------------------------------------

    def _start(self) -> None:
        from actors import ActorFleet, ActorRegistry
        from learner import WeightStore
        from system.train.evaluate import BackgroundEvaluator, Evaluator

        config = self.config
        redis_url = self.config.redis.url or self._start_redis()
        self.info["redis_url"] = redis_url
        self._start_ray()
        self._start_metrics()
        self.dir.write_json("run.json", self.info)
        steps = [self._start_shards, self._start_learner]
        for step in steps:
            if self.stop.is_set():
                return
            step(redis_url)
            self.dir.write_json("run.json", self.info)
        self.store = WeightStore(redis_url, self.name)
        self.episodes = ActorRegistry(redis_url, self.name)
        self.episodes_after, _ = self.episodes.read_episodes("$", count=1)
        # Evaluations run in a thread of this process, on the weights the learner publishes; not
        # for emulator envs, which need an emulator host (the driver's machine rarely is one).
        if _evaluates_in_driver(config):
            self.evaluator = BackgroundEvaluator(
                Evaluator(
                    config.env,
                    config.learner,
                    config.train.eval_episodes,
                    config.train.eval_epsilon,
                    seed=10_000 + config.actors.seed,
                )  # fmt: skip
            )
        else:
            log.info("no driver evaluations for %s on emulators: follow the training returns", config.env.id)
        if self.stop.is_set():
            return
        self.fleet = ActorFleet(config.env, config.actors, config.learner, redis_url, self.name)
        self.fleet.start()

    def _start_redis(self) -> str:
        from system.local.redis_server import RedisLaunchError, RedisProcess

        try:
            self.redis = RedisProcess().start()
        except RedisLaunchError as exc:
            raise TrainError(str(exc)) from None
        self.info["redis_pid"] = self.redis.proc.pid
        log.info("redis-server on %s", self.redis.url)
        return self.redis.url

    def _start_ray(self) -> None:
        import ray

        from system.local.ray_runtime import init_ray

        config = self.config
        self.ray = ray
        if config.ray.address is None:
            need = config.actors.num_actors * config.actors.num_cpus + config.train.learner_num_cpus
            init_ray(None, num_cpus=config.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(need)))
        else:
            init_ray(config.ray.address)

    def _start_metrics(self) -> None:
        from prometheus_client import start_http_server

        from system.train.metrics import TrainMetrics

        train = self.config.train
        self.metrics = TrainMetrics(self.name)
        self.metrics.target_env_steps.set(train.total_env_steps)
        self.metrics_address = None
        if train.metrics_port is not None:
            bind = self.ray.util.get_node_ip_address() if train.metrics_host == "node" else train.metrics_host
            try:
                self._http, _ = start_http_server(train.metrics_port, addr=bind, registry=self.metrics.registry)
            except OSError as exc:
                raise TrainError(f"train.metrics_port: cannot listen on {bind}:{train.metrics_port}: "
                                 f"{exc.strerror}") from None  # fmt: skip
            host = socket.gethostname() if bind == "0.0.0.0" else bind
            self.metrics_address = f"{host}:{self._http.server_port}"
            self.info["metrics"] = self.metrics_address
            log.info("driver metrics %s; Prometheus targets in %s", self.metrics_address, self.targets_path)

    @property
    def targets_path(self):
        return self.dir.path / "prometheus" / "targets.json"

    def _write_targets(self, final: bool = False) -> None:
        from system.observe.discovery import discover, register_driver, unregister_driver, write_targets

        redis_url = self.info["redis_url"]
        try:
            if final:
                write_targets(self.targets_path, [])
                if self.metrics_address:
                    unregister_driver(redis_url, self.name)
                return
            if self.metrics_address:
                register_driver(redis_url, self.name, self.metrics_address)
            write_targets(self.targets_path, discover(redis_url, self.name, self.metrics_address or ""))
        except Exception as exc:  # discovery is best effort: the next round tries again
            log.debug("Prometheus targets not updated: %s", exc)

    def _start_shards(self, redis_url: str) -> None:
        from system.train.hosts import ShardHost

        remote = self.ray.remote(ShardHost)
        on_cluster = self.config.ray.address is not None
        for shard_id in range(self.config.train.num_shards):
            settings = shard_config(self.config, shard_id, redis_url, self.name, self.dir)
            options = {"num_cpus": 0, "max_restarts": -1, "name": f"qfleet-{self.name}-shard-{shard_id}"}
            self.shards.append(remote.options(**options).remote(self.plan.spec, settings, on_cluster))
        described = self.ray.get([h.describe.remote() for h in self.shards], timeout=300)
        for d in described:
            restored = f", restored {d['size']:,} items" if d["restored_from"] else ""
            log.info("shard %d serving at %s%s", d["shard_id"], d["address"], restored)
            for message in d["refused_checkpoints"]:
                log.warning("shard %d: %s", d["shard_id"], message)
        self.info["shards"] = described

    def _start_learner(self, redis_url: str) -> None:
        from system.train.hosts import LearnerHost

        config, train = self.config, self.config.train
        gpus = train.learner_num_gpus
        if gpus is None:
            has_gpu = self.ray.cluster_resources().get("GPU", 0) >= 1
            gpus = 1 if has_gpu and config.learner.device != "cpu" else 0
        if config.learner.device.startswith("cuda") and gpus == 0:
            raise TrainError(f"learner.device={config.learner.device!r}: the Ray cluster has no GPU for the learner")
        options = {
            "num_cpus": train.learner_num_cpus,
            "num_gpus": gpus,
            "resources": dict(train.learner_resources or {}),
            "max_restarts": 0,
            "name": f"qfleet-{self.name}-learner",
        }
        metrics_host = "node" if config.ray.address is not None else "127.0.0.1"
        self.learner = self.ray.remote(LearnerHost).options(**options).remote(
            config, self.plan.obs_shape, self.plan.action_space, redis_url, self.name,
            str(self.dir.checkpoints), max(1, int(train.learner_num_cpus)), metrics_host,
        )  # fmt: skip
        described = self.ray.get(self.learner.describe.remote(), timeout=600)
        where = f"resumed at update {described['updates']:,}" if described["resumed_from"] else "fresh"
        log.info("learner on %s (%s); metrics %s", described["device"], where, described["metrics"] or "off")
        self.info["learner"] = described

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        from actors import FleetError

        train, totals = self.config.train, self.totals
        last_record = last_line = last_state = last_targets = time.monotonic()
        self._write_targets()
        # Actors report once per chunk (about a second): the rate is taken over a 10 s window.
        window: deque[tuple[float, int]] = deque([(last_record, self.env_steps)])
        while not self.stop.is_set():
            try:
                stats = self.fleet.poll(timeout=0.25)
            except FleetError as exc:
                raise TrainError(str(exc)) from None
            self.env_steps = totals.env_steps0 + stats.env_steps
            records = self._episodes()
            self._maybe_evaluate()
            records += self._evaluations()
            now = time.monotonic()
            if now - last_record >= RECORD_EVERY_S:
                window.append((now, self.env_steps))
                while len(window) > 2 and now - window[1][0] >= RATE_WINDOW_S:
                    window.popleft()
                rate = (self.env_steps - window[0][1]) / max(now - window[0][0], 1e-9)
                record = self._progress_record(stats, rate)
                records.append(record)
                last_record = now
                if now - last_line >= train.log_every_s:
                    print(_progress_line(record, train.total_env_steps), flush=True)
                    last_line = now
            self.dir.append_records(records)
            if now - last_targets >= DISCOVERY_EVERY_S:
                self._write_targets()
                last_targets = now
            if now - last_state >= 10.0:
                self.dir.write_json("state.json", totals.state(self.env_steps))
                last_state = now
            if self.env_steps >= train.total_env_steps:
                log.info("reached %s env steps", f"{self.env_steps:,}")
                break

    def _episodes(self) -> list[dict]:
        totals = self.totals
        self.episodes_after, episodes = self.episodes.read_episodes(self.episodes_after, count=10_000)
        if not episodes:
            return []
        for e in episodes:
            totals.returns.append(float(e["return"]))
        totals.episodes += len(episodes)
        return [{
            "kind": "episodes", "wall_s": round(totals.wall(), 3), "env_steps": self.env_steps,
            "returns": [e["return"] for e in episodes], "lengths": [e["length"] for e in episodes],
            "actors": [e["actor"] for e in episodes], "policy_versions": [e["policy_version"] for e in episodes],
        }]  # fmt: skip

    def _maybe_evaluate(self) -> None:
        totals, every = self.totals, self.config.train.eval_every_steps
        if self.evaluator is None or not every or self.env_steps < totals.next_eval:
            return
        totals.next_eval = (self.env_steps // every + 1) * every
        fetched = self.store.fetch(0)
        if fetched is None:  # no weights published yet: evaluate at the next threshold
            return
        version, state = fetched
        tag = {"env_steps": self.env_steps, "wall_s": round(totals.wall(), 3), "weights_version": version}
        if not self.evaluator.submit(tag, state, version):  # the previous ones are still running: skip this one
            log.info("evaluation at %s env steps skipped: the evaluator is still busy", f"{self.env_steps:,}")

    def _evaluations(self) -> list[dict]:
        if self.evaluator is None:
            return []
        return [self._eval_record(tag, result, False) for tag, result in self.evaluator.results()]

    def _eval_record(self, tag: dict, result, final: bool) -> dict:
        self.totals.evals += 1
        self.totals.last_eval = (tag["env_steps"], result.mean)
        print(
            f"eval{' (final)' if final else ''} at {tag['env_steps']:,} env steps (weights v{tag['weights_version']}): "
            f"return {result.mean:.1f} +- {result.std:.1f} over {len(result.returns)} episodes",
            flush=True,
        )
        return {"kind": "eval", **tag, "final": final, "mean_return": result.mean, "std_return": result.std,
                "returns": result.returns, "lengths": result.lengths, "seconds": round(result.seconds, 3)}  # fmt: skip

    def _progress_record(self, stats, steps_per_second: float) -> dict:
        ray, totals = self.ray, self.totals
        learner = ray.get(self.learner.progress.remote(), timeout=60)
        if learner["error"]:
            raise TrainError(f"the learner failed: {learner['error']}")
        shards = ray.get([h.info.remote() for h in self.shards], timeout=60)
        record = {
            "kind": "progress",
            "wall_s": round(totals.wall(), 3),
            "time": round(time.time(), 3),
            "env_steps": self.env_steps,
            "env_steps_per_s": round(steps_per_second, 1),
            "episodes": totals.episodes0 + totals.episodes,
            "recent_return": sum(totals.returns) / len(totals.returns) if totals.returns else None,
            "last_eval": list(totals.last_eval) if totals.last_eval else None,
            "updates": learner["updates"],
            "updates_per_s": round(learner["updates_per_second"], 1),
            "achieved_utd": round(learner["achieved_utd"], 4),
            "target_utd": self.config.learner.updates_per_env_step,
            "weights_version": learner["version"],
            "replay_size": sum(s["size"] for s in shards),
            "replay_inserts": sum(s["inserts"] for s in shards),
            "actors": stats.actors,
            "actor_restarts": stats.actor_restarts,
            "env_restarts": stats.env_restarts,
            "transitions_lost": stats.transitions_lost,
        }
        self._latest = record
        self.metrics.update(record)
        return record

    # -- stop -----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stops in order: actors (they flush while the learner still samples), the learner
        (publish + checkpoint), a final evaluation, the shards (checkpoint), Ray, Redis."""
        ray = self.ray
        if self.fleet is not None:
            try:
                stats = self.fleet.stop()
                self.env_steps = max(self.env_steps, self.totals.env_steps0 + stats.env_steps)
                log.info("actors stopped: %s transitions inserted, %s lost",
                         f"{stats.transitions_inserted:,}", f"{stats.transitions_lost:,}")  # fmt: skip
            except Exception as exc:
                self._failed("actors did not stop cleanly", exc)
        if self.learner is not None:
            try:
                summary = ray.get(self.learner.stop.remote(), timeout=900)
                if self._latest is not None:  # the last record carries the final counters
                    final = dict(self._latest, wall_s=round(self.totals.wall(), 3), time=round(time.time(), 3),
                                 env_steps=self.env_steps, updates=summary["updates"],
                                 weights_version=summary["version"], final=True)  # fmt: skip
                    self.dir.append_records([final])
                log.info("learner stopped at update %s (weights v%d); checkpoint %s",
                         f"{summary['updates']:,}", summary["version"], summary["checkpoint"] or "-")  # fmt: skip
                if summary["error"]:
                    self.error = self.error or f"the learner failed: {summary['error']}"
            except Exception as exc:
                self._failed("the learner did not stop cleanly", exc)
        if self.evaluator is not None:
            self._final_evaluation()
        for handle in self.shards:
            try:
                info = ray.get(handle.stop.remote(), timeout=900)
                log.info("shard stopped with %s items", f"{info['size']:,}")
            except Exception as exc:
                self._failed("a shard did not stop cleanly", exc)
        if self.evaluator is not None:
            self.evaluator.evaluator.close()
        for resource in ("store", "episodes"):
            if hasattr(self, resource):
                getattr(self, resource).close()
        self.dir.write_json("state.json", self.totals.state(self.env_steps))
        if self.targets_path.exists():
            self._write_targets(final=True)
        if getattr(self, "_http", None) is not None:
            self._http.shutdown()
            self._http.server_close()
        if ray is not None and self.config.ray.address is None:
            ray.shutdown()
        elif ray is not None:
            for handle in [*self.shards, self.learner]:
                if handle is not None:
                    ray.kill(handle)
            ray.shutdown()
        if self.redis is not None:
            self.redis.close()

    def _final_evaluation(self) -> None:
        records = [self._eval_record(tag, result, False) for tag, result in self.evaluator.close()]
        fetched = None
        try:
            fetched = self.store.fetch(0)
        except Exception as exc:
            log.warning("no final evaluation: %s", exc)
        last = self.totals.last_eval
        if fetched is not None and not (last and last[0] == self.env_steps):
            version, state = fetched
            tag = {"env_steps": self.env_steps, "wall_s": round(self.totals.wall(), 3), "weights_version": version}
            try:
                records.append(self._eval_record(tag, self.evaluator.evaluator.run(state, version), True))
            except Exception as exc:
                log.warning("final evaluation failed: %s: %s", type(exc).__name__, exc)
        self.dir.append_records(records)

    def _failed(self, what: str, exc: Exception) -> None:
        log.error("%s: %s", what, exc)
        self.error = self.error or f"{what}: {exc}"
