"""`qfleet learner run`: the learner as its own process, until SIGTERM/Ctrl-C or --max-updates.

Reads the env section to learn the observation and action spaces, connects to the run's shards
through Redis, publishes weights to the run's parameter store, checkpoints into --checkpoint-dir
(resuming what is there), serves /metrics, and on SIGTERM finishes the current update, publishes,
checkpoints and exits 0.
"""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from actors import EnvConfig, UnsupportedEnvError, describe_env
from learner import ActionSpace, Learner, WeightStore, make_replay
from replay import ShardedCollector
from system.config import RunConfig
from system.config.dataclass_args import ConfigError
from system.local.signals import stop_on_signals

log = logging.getLogger("qfleet.learner")


def env_spaces(config: EnvConfig) -> tuple[tuple[int, ...], ActionSpace]:
    """(observation shape, action space) of the configured env (with its wrappers)."""
    try:
        spaces = describe_env(config)
    except UnsupportedEnvError as exc:
        raise ConfigError(str(exc)) from None
    return spaces.obs_shape, spaces.action_space


def run_learner(
    config: RunConfig,
    redis_url: str,
    run: str,
    checkpoint_dir: str | None,
    max_updates: int | None,
    metrics_port: int | None,
    log_every_s: float,
) -> int:
    obs_shape, space = env_spaces(config.env)
    stop = stop_on_signals(log, "stopping after this update (publish + checkpoint)")
    try:
        learner_replay = make_replay(config.learner, redis_url=redis_url, run=run)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    store = WeightStore(redis_url, run)
    learner = Learner(
        config.learner, learner_replay, obs_shape, space, run=run, weight_store=store,
        checkpoint_dir=checkpoint_dir, log_every_s=log_every_s,
    )  # fmt: skip
    learner.metrics.registry.register(ShardedCollector(learner_replay))
    server = None
    if metrics_port is not None:
        server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=learner.metrics.registry)
        metrics = f"http://127.0.0.1:{server.server_port}/metrics"
    else:
        metrics = "off"
    where = f"resumed at update {learner.updates}" if learner.resumed_from else "fresh"
    print(f"qfleet learner: run {run!r} on {learner.device} ({where}); metrics {metrics}", flush=True)
    summary = learner.run(max_updates=max_updates, stop=stop)
    log.info(
        "stopped at update %d (weights v%d, %.1f updates/s); checkpoint %s",
        summary.updates,
        summary.version,
        summary.updates_per_second,
        summary.checkpoint,
    )
    learner_replay.close()
    store.close()
    if server is not None:
        server.shutdown()
        server.server_close()
    return 0
