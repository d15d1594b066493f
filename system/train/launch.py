"""Starting a run's components in order: Redis -> Ray -> driver /metrics -> shards -> offline
shards (a run with a dataset) -> learner -> evaluations, then (`start_actors`, after an offline
phase) actors; in a fresh online run without an offline dataset (`fresh_online_start`) the
actors' processes, then the learner's, start beside the shards'.
What started is in `Components` at once, so a failure part way (or Ctrl-C) stops exactly what
runs. Each phase is stamped in `Components.startup` (system/train/startup.py).

Every start makes fresh replay credentials (a token and a self-signed certificate, in memory only):
the shards get them with the private key, the learner and the actors without it, all as Ray
constructor arguments (kept in Ray's token-protected GCS, so restarted actors get them again; not
in a runtime_env, whose variables Ray logs). Nothing of them goes to run.json, config.yaml or a log.

The embedded Redis's password goes into this process's QFLEET_REDIS_PASSWORD before Ray starts
(local Ray workers inherit it), the local Ray gets a token of its own (`init_ray`), and both are
saved in the user's private secrets folder (`system.local.secrets`) for other qfleet commands;
run.json names that file ("secrets_id") and shows Redis URLs with `redact_url`.

The embedded default first starts a watchdog (`system.local.watchdog`): if this process dies
without stopping, what it started (redis-server, Ray and its agents, the hosts) goes within seconds.
The learner is restartable (LEARNER_MAX_RESTARTS): a restarted one resumes from its newest good
checkpoint, above the versions and updates the run reached.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from replay import ReplayCredentials, generate_credentials, redact_url
from system.config import RunConfig
from system.errors import TrainError
from system.local.redis_server import RedisProcess
from system.local.secrets import (
    REDIS_PASSWORD_ENV,
    RunSecrets,
    new_secrets_id,
    save_run_secrets,
    without_redacted_password,
)
from system.local.watchdog import Watchdog
from system.observe.discovery import discover, register_driver, unregister_driver, write_targets
from system.train.evaluate import RunEvaluations
from system.train.metrics import TrainMetrics
from system.train.plan import Plan, evaluates_in_driver, offline_shard_settings, shard_config
from system.train.records import LearnerEventRecord, RunCounters
from system.train.start_errors import error_header, named_together, redacted
from system.train.startup import StartupClock

if TYPE_CHECKING:
    from actors import ActorFleet

log = logging.getLogger(__name__)

LEARNER_MAX_RESTARTS = 5
"""Times Ray restarts a learner whose process died, within one session."""


class EpisodeFeed:
    """Episodes that actors finished, read from the run's Redis stream from now on; malformed
    entries are skipped, logged once and counted (`malformed`)."""

    def __init__(self, redis_url: str, run: str):
        from actors import ActorRegistry

        self.registry = ActorRegistry(redis_url, run)
        self._after, _ = self.registry.read_episodes("$", count=1)

    def read(self) -> list[dict]:
        """Episodes since the previous read (dicts: return, length, actor, policy_version, ...)."""
        self._after, episodes = self.registry.read_episodes(self._after, count=10_000)
        return episodes

    @property
    def malformed(self) -> int:
        """Malformed stream entries skipped so far."""
        return self.registry.malformed.total

    def close(self) -> None:
        self.registry.close()


class PrometheusTargets:
    """The run's Prometheus file_sd targets (RUN_DIR/prometheus/targets.json) and the driver's
    discovery key; both best effort (the next round tries again)."""

    def __init__(self, plan: Plan, redis_url: str, driver_metrics: str):
        self.path = plan.run.path / "prometheus" / "targets.json"
        self.redis_url, self.run, self.driver_metrics = redis_url, plan.name, driver_metrics

    def write(self) -> None:
        try:
            if self.driver_metrics:
                register_driver(self.redis_url, self.run, self.driver_metrics)
            write_targets(self.path, discover(self.redis_url, self.run, self.driver_metrics))
        except Exception as exc:
            log.debug("Prometheus targets not updated: %s", exc)

    def clear(self) -> None:
        """Nothing left to scrape: an empty file, and the driver's key removed."""
        if not self.path.exists():
            return
        try:
            write_targets(self.path, [])
            if self.driver_metrics:
                unregister_driver(self.redis_url, self.run)
        except Exception as exc:
            log.debug("Prometheus targets not updated: %s", exc)


@dataclass
class Components:
    """What a run started; a handle stays None until its component started."""

    info: dict
    """run.json: run name, host, pids, Redis URL, shard and learner addresses."""
    redis: RedisProcess | None = None
    """The embedded redis-server (None with redis.url)."""
    redis_url: str = ""
    """The URL components connect with (a password it carries is never shown: see run.json's)."""
    secrets_id: str | None = None
    """The run's file in the private secrets folder (None until saved, or nothing to save)."""
    ray: object | None = None
    """The `ray` module, once initialised."""
    metrics: TrainMetrics | None = None
    metrics_server: object | None = None
    """The driver's /metrics HTTP server (None with train.metrics_port unset)."""
    targets: PrometheusTargets | None = None
    shards: list = field(default_factory=list)
    """ShardHost actor handles."""
    offline_shards: list = field(default_factory=list)
    """ShardHost actor handles of the offline dataset's shards (a run with `offline.dataset`)."""
    offline_rows: list = field(default_factory=list)
    """Each offline shard's rows in Ray's object store, held for the whole run: Ray frees a
    constructor's argument once the actor has started unless someone holds it, and then a
    restarted offline shard could not load its rows again."""
    learner: object | None = None
    """The LearnerHost actor handle."""
    episodes: EpisodeFeed | None = None
    evaluations: RunEvaluations | None = None
    """Evaluations (None for emulator envs: the driver's machine rarely is an emulator host)."""
    fleet: ActorFleet | None = None
    watchdog: Watchdog | None = None
    """Ends what this run started if the driver dies (the embedded default only)."""
    replay_credentials: ReplayCredentials | None = field(default=None, repr=False)
    """This start's replay token, certificate and key (made by `launch`; never written anywhere)."""
    startup: StartupClock = field(default_factory=StartupClock)
    """When this session reached each phase of its start (`system.train.startup`)."""


def launch(plan: Plan, counters: RunCounters, stop: threading.Event, components: Components) -> None:
    """Starts everything but the actors into `components` (`start_actors` follows, after an
    offline phase if the run has one); returns early once `stop` is set.

    Raises:
        TrainError: a component could not start.
    """
    config, run = plan.config, plan.run
    clock = components.startup
    clock.mark("driver")
    components.replay_credentials = generate_credentials()
    if config.ray.address is None:
        components.watchdog = Watchdog.start()
        components.info["watchdog_pid"] = components.watchdog.pid
    # A resumed run's config.yaml shows a password of redis.url as ***: it comes from the environment.
    url = without_redacted_password(config.redis.url) if config.redis.url else None
    if url and url != config.redis.url and not os.environ.get(REDIS_PASSWORD_ENV):
        raise TrainError(
            f"redis.url {config.redis.url} keeps its password out of the run folder: set "
            f"{REDIS_PASSWORD_ENV} (on every node of the cluster) to resume"
        )
    components.redis_url = url or _start_redis(components)
    components.info["redis_url"] = redact_url(components.redis_url)
    clock.mark("redis")
    components.ray = _start_ray(config)
    clock.mark("ray")
    if config.ray.address is None:
        components.info["ray_address"] = components.ray.get_runtime_context().gcs_address
    _save_secrets(plan, components)
    _start_metrics(plan, components)
    run.write_json("run.json", components.info)
    if stop.is_set():
        return
    components.episodes = EpisodeFeed(components.redis_url, plan.name)  # before any actor reports one
    if not _start_shards_and_learner(plan, components, counters, stop):
        return
    _await_learner(plan, components, counters)
    run.write_json("run.json", components.info)
    if evaluates_in_driver(config):
        components.evaluations = RunEvaluations(config, components.redis_url, plan.name, counters)
    else:
        log.info("no driver evaluations for %s on emulators: follow the training returns", config.env.id)


def _start_shards_and_learner(plan: Plan, components: Components, counters: RunCounters, stop) -> bool:
    """Asks for the shards, then the offline shards and the learner, in `fresh_online_start`'s
    order (a fresh online run asks for its actors and its learner too before the shards serve:
    the actors first where all surely fit (`_all_fit`), else the learner first); False when `stop`
    was set on the way. The learner and the actors are asked for once, and are in `components` as
    soon as they are, so a shard that fails afterwards stops them with the rest."""
    run = plan.run
    _create_shards(plan, components)
    if fresh_online_start(plan) and not stop.is_set():
        # Neither needs anything of the shards' to build (an actor waits for a shard only before
        # its first step). The actors first where everything surely fits: Ray hands its prestarted worker
        # processes out in this order, and the first env step waits on an actor, not on the
        # learner. Ray also hands out CPUs in the order they are asked for: where not everything
        # fits, the learner first, so that the run goes on with fewer actors, not without a learner.
        _learner_gpus(plan, components)  # a config error before anything starts
        if _all_fit(plan, components):
            start_actors(plan, counters, components)
            _create_learner(plan, components, counters)
        else:
            _create_learner(plan, components, counters)
            start_actors(plan, counters, components)
    _await_shards(components)
    run.write_json("run.json", components.info)
    for start in (_start_offline_shards, _create_learner):
        if stop.is_set():
            return False
        start(plan, components, counters)
        run.write_json("run.json", components.info)
    return True


def fresh_online_start(plan: Plan) -> bool:
    """Whether this session starts its processes side by side (`launch`): the actors' and the
    learner's beside the shards'. In a fresh online run they take seconds to load torch and build
    their networks, a fresh learner aligns no restored counts on the shards', no actor waits for
    anything of the learner's (there are no weights to act with before its first publish), and an
    actor waits for a serving shard before its first step (`actors.EnvActor`). A resumed run's
    learner aligns on its shards and its actors act with the weights it restores and publishes; a
    run with an offline dataset starts its actors after its offline phase: each after the other.
    A resume is known by `plan.resumed`, not by its state.json (a session may end before writing
    it)."""
    return not plan.resumed and plan.offline_data is None and not plan.offline_only


def start_actors(plan: Plan, counters: RunCounters, components: Components) -> None:
    """Starts the env actors (the online phase); nothing when they run already."""
    from actors import ActorFleet

    if components.fleet is not None:
        return

    config = plan.config
    budget = config.train.total_env_steps - counters.start_env_steps
    components.fleet = ActorFleet(
        config.env,
        config.actors,
        config.learner,
        components.redis_url,
        plan.name,
        max_env_steps=budget,
        # chunks end on the evaluation schedule, so that evaluations come at their env steps
        milestone_every=config.train.eval_every_steps if evaluates_in_driver(config) else None,
        milestone_offset=counters.start_env_steps,
        replay_credentials=components.replay_credentials.for_clients(),
        fresh_run=fresh_online_start(plan),  # no weights yet: the actors may act while building
    )
    components.fleet.start(env_checked=True)  # the plan built the env (`plan`)


def _start_redis(components: Components) -> str:
    from system.errors import RedisLaunchError

    try:
        # Persistent: if it dies, the supervisor starts it again on its port with its data.
        components.redis = RedisProcess(persistent=True).start()
    except RedisLaunchError as exc:
        raise TrainError(str(exc)) from None
    components.info["redis_pid"] = components.redis.proc.pid
    # Before Ray starts: local Ray workers (shards, learner, actors) inherit it.
    os.environ[REDIS_PASSWORD_ENV] = components.redis.password
    log.info("redis-server on %s (password in the run's secrets)", components.redis.url)
    return components.redis.url


def _save_secrets(plan: Plan, components: Components) -> None:
    """Saves what this run generated (the embedded Redis's password, the local Ray's token) in
    the user's private secrets folder, and names the file in run.json."""
    from system.local.ray_runtime import local_ray_token

    local_ray = plan.config.ray.address is None
    found = RunSecrets(
        redis_password=components.redis.password if components.redis is not None else None,
        ray_token=local_ray_token() if local_ray else None,
    )
    if found.redis_password is None and found.ray_token is None:
        return
    secrets_id = new_secrets_id(plan.name)
    try:
        save_run_secrets(secrets_id, plan.name, components.redis_url, found)
    except (OSError, ValueError) as exc:
        log.warning("run secrets not saved (other qfleet commands need QFLEET_REDIS_PASSWORD): %s", exc)
        return
    components.secrets_id = secrets_id
    components.info["secrets_id"] = secrets_id


def _cpus_needed(config: RunConfig) -> float:
    """The CPUs the run's actors and learner ask Ray for together."""
    return config.actors.num_actors * config.actors.num_cpus + config.train.learner_num_cpus


def _all_fit(plan: Plan, components: Components) -> bool:
    """Whether the actors and the learner surely all fit: on a local Ray this driver started (one
    node, nothing else running on it), in its CPUs, with no custom resources asked for (whose
    placement this cannot foresee). On a cluster (ray.address set) never: other jobs may hold
    CPUs, the CPUs are split across nodes (the actors go SPREAD, and may leave no node the
    learner's CPUs) and the actors may fill the GPU node's CPUs."""
    config = plan.config
    if config.ray.address is not None:
        return False
    if config.actors.resources or config.train.learner_resources:
        return False
    return components.ray.cluster_resources().get("CPU", 0) >= _cpus_needed(config)


def _start_ray(config: RunConfig):
    from system.errors import RayLaunchError
    from system.local.ray_runtime import init_ray

    # init_ray before `import ray` here: Ray reads its single-machine switch at import.
    try:
        if config.ray.address is None:
            need = _cpus_needed(config)
            init_ray(
                None,
                num_cpus=config.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(need)),
                worker_niceness=config.ray.worker_niceness,
            )
        else:
            init_ray(config.ray.address)
    except RayLaunchError as exc:
        raise TrainError(str(exc)) from None
    import ray

    return ray


def _start_metrics(plan: Plan, components: Components) -> None:
    from replay import start_metrics_server

    train = plan.config.train
    components.metrics = TrainMetrics(plan.name)
    components.metrics.target_env_steps.set(train.total_env_steps)
    address = ""
    if train.metrics_port is not None:
        bind = components.ray.util.get_node_ip_address() if train.metrics_host == "node" else train.metrics_host
        try:
            server = start_metrics_server(train.metrics_port, bind, components.metrics.registry)
        except OSError as exc:
            raise TrainError(
                f"train.metrics_port: cannot listen on {bind}:{train.metrics_port}: {exc.strerror}"
            ) from None
        components.metrics_server = server
        host = socket.gethostname() if bind == "0.0.0.0" else bind
        address = f"{host}:{server.server_port}"
        components.info["metrics"] = address
    components.targets = PrometheusTargets(plan, components.redis_url, address)
    if address:
        log.info("driver metrics %s; Prometheus targets in %s", address, components.targets.path)


def _create_shards(plan: Plan, components: Components) -> None:
    """Asks Ray for the run's shards (`_await_shards` waits until they serve)."""
    from system.train.hosts import ShardHost

    config, ray = plan.config, components.ray
    remote = ray.remote(ShardHost)
    on_cluster = config.ray.address is not None
    for shard_id in range(config.train.num_shards):
        settings = shard_config(config, shard_id, components.redis_url, plan.name, plan.run)
        options = {
            "num_cpus": 0,
            "resources": dict(config.train.shard_resources or {}),
            "scheduling_strategy": "SPREAD",  # on a cluster, a node lost takes as few shards as it can
            "max_restarts": -1,
            "name": f"qfleet-{plan.name}-shard-{shard_id}",
        }
        components.shards.append(
            remote.options(**options).remote(plan.spec, settings, on_cluster, credentials=components.replay_credentials)
        )


def _await_shards(components: Components) -> None:
    """Waits until every shard serves; logs where, and what each restored."""
    described = await_started(
        components.ray,
        {shard.describe.remote(): f"replay shard {i}" for i, shard in enumerate(components.shards)},
        SHARD_START_S,
        "not placed? train.shard_resources; `ray status`",
    )
    components.startup.mark("shards")
    for shard in described:
        restored = f", restored {shard.size:,} items" if shard.restored_from else ""
        log.info("shard %d serving at %s%s", shard.shard_id, shard.address, restored)
        for message in shard.refused_checkpoints:
            log.warning("shard %d: %s", shard.shard_id, message)
    components.info["shards"] = [asdict(shard) for shard in described]


SHARD_START_S = 300.0
"""How long the driver waits for its replay shards to serve."""
OFFLINE_SHARD_START_S = 600.0
"""How long it waits for its offline shards (each inserts its share of the dataset first)."""
LEARNER_START_S = 600.0
"""How long it waits for its learner to be built."""


def await_started(ray, describes: dict, timeout_s: float, not_placed: str) -> list:
    """Waits for Ray's answers to `describes` (a describe() reference -> what it describes,
    e.g. "replay shard 1"), in that order; sees a failure as soon as one comes, not after the
    others answer.

    Raises:
        TrainError: one failed to start ("... did not start: " with its exception's header line,
            which holds the cause, e.g. `OSError: replay server cannot listen on ...`; the full
            error goes to the log at DEBUG), or some had not answered within `timeout_s` (all
            of them named, with the `not_placed` hint).
    """
    from ray.exceptions import RayError

    pending = dict(describes)
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            late = named_together(list(pending.values()))
            raise TrainError(f"{late} did not start within {timeout_s:.0f} s ({not_placed})")
        name = pending.pop(ready[0])
        try:
            ray.get(ready[0])
        except RayError as exc:
            text = redacted(str(exc))
            log.debug("%s did not start:\n%s", name, text)
            raise TrainError(f"{name} did not start: {error_header(text) or type(exc).__name__}") from None
    return ray.get(list(describes))


def _start_offline_shards(plan: Plan, components: Components, counters: RunCounters) -> None:
    """The dataset's shards: each inserts its share before it serves (a Ray restart inserts it again)."""
    from system.datasets import shard_share
    from system.train.hosts import ShardHost

    loaded, config, ray = plan.offline_data, plan.config, components.ray
    if loaded is None:
        return
    remote = ray.remote(ShardHost)
    on_cluster = config.ray.address is not None
    begin = 0
    for index in range(config.offline.num_shards):
        share = shard_share(loaded.size, config.offline.num_shards, index)
        rows = ray.put({name: column[begin : begin + share] for name, column in loaded.transitions.items()})
        components.offline_rows.append(rows)
        begin += share
        settings = offline_shard_settings(config, loaded, index, components.redis_url, plan.name)
        options = {"num_cpus": 0, "max_restarts": -1, "name": f"qfleet-{plan.name}-offline-shard-{index}"}
        handle = remote.options(**options).remote(
            plan.offline_spec or plan.spec,
            settings,
            on_cluster,
            credentials=components.replay_credentials,
            items=rows,
        )
        components.offline_shards.append(handle)
    described = await_started(
        ray,
        {shard.describe.remote(): f"offline shard {i}" for i, shard in enumerate(components.offline_shards)},
        OFFLINE_SHARD_START_S,
        "not placed? `ray status`",
    )
    for shard in described:
        log.info(
            "offline shard %d serving %s dataset transitions at %s", shard.shard_id, f"{shard.size:,}", shard.address
        )
    components.info["offline_shards"] = [asdict(shard) for shard in described]


def _create_learner(plan: Plan, components: Components, counters: RunCounters) -> None:
    """Asks Ray for the learner (`_await_learner` waits until it is built); once."""
    from system.train.hosts import LearnerHost

    if components.learner is not None:
        return

    config, train, ray = plan.config, plan.config.train, components.ray
    options = {
        "num_cpus": train.learner_num_cpus,
        "num_gpus": _learner_gpus(plan, components),
        "resources": dict(train.learner_resources or {}),
        "max_restarts": LEARNER_MAX_RESTARTS,
        "name": f"qfleet-{plan.name}-learner",
    }
    components.learner = (
        ray.remote(LearnerHost)
        .options(**options)
        .remote(
            config,
            plan.obs_shape,
            plan.action_space,
            components.redis_url,
            plan.name,
            str(plan.run.checkpoints),
            num_threads=train.learner_threads,
            metrics_host="node" if config.ray.address is not None else "127.0.0.1",
            replay_credentials=components.replay_credentials.for_clients(),
            reached=plan.learner_reached,
        )
    )


def _learner_gpus(plan: Plan, components: Components) -> int | float:
    """The GPUs the learner asks Ray for: train.learner_num_gpus, else 1 where the cluster has one
    and learner.device is not "cpu".

    Raises:
        TrainError: learner.device is cuda and the learner gets no GPU.
    """
    config = plan.config
    gpus = config.train.learner_num_gpus
    if gpus is None:
        has_gpu = components.ray.cluster_resources().get("GPU", 0) >= 1
        gpus = 1 if has_gpu and config.learner.device != "cpu" else 0
    if config.learner.device.startswith("cuda") and gpus == 0:
        raise TrainError(f"learner.device={config.learner.device!r}: the Ray cluster has no GPU for the learner")
    return gpus


def _await_learner(plan: Plan, components: Components, counters: RunCounters) -> None:
    """Waits until the learner is built (it resumed, or starts fresh); logs and records how."""
    (described,) = await_started(
        components.ray,
        {components.learner.describe.remote(): "the learner"},
        LEARNER_START_S,
        "not placed? train.learner_num_cpus, learner_num_gpus, learner_resources; `ray status`",
    )
    components.startup.mark("learner", described.built_at)  # its own clock, as its first update's
    for message in described.refused_checkpoints:
        log.warning("learner checkpoint refused: %s", message)
    where = f"resumed at update {described.resumed_at:,}" if described.resumed_from else "fresh"
    if not described.resumed_from and described.resumed_at:
        where = f"fresh, counting on from update {described.resumed_at:,}"
    log.info("learner on %s (%s); metrics %s", described.device, where, described.metrics or "off")
    if described.updates_lost:  # the previous session ended without its stop checkpoint
        log.warning("learner: %s updates since its checkpoint were lost", f"{described.updates_lost:,}")
        counters.learner_updates_lost += described.updates_lost
        event = LearnerEventRecord(
            "resumed",
            counters.wall_s(),
            counters.env_steps,
            described.resumed_at,
            described.updates_lost,
            described.resumed_from,
        )
        plan.run.append_records([event.to_json()])
    components.info["learner"] = asdict(described)


def new_components(plan: Plan) -> Components:
    """Components with nothing started yet, and run.json's first fields."""
    info = {"run": plan.name, "host": socket.gethostname(), "driver_pid": os.getpid(), "started_at": time.time()}
    return Components(info=info)
