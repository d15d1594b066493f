"""A run's plan: the config resolved and checked, the run directory and the env's spaces, before
anything starts or is written. A bad config fails here, naming the key."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
import time
from dataclasses import dataclass
from typing import Any

from learner import ActionSpace
from replay import ReplayConfig, Spec, redact_url
from system.config import (
    OFFLINE,
    ONLINE,
    ConfigError,
    RunConfig,
    batch_mix,
    check_learner_for_env,
    check_value_support,
    env_spaces,
    load_config,
    offline_run_name,
    online_batch_items,
    resolve_value_support,
)
from system.config.insert_settings import LEAD_WARN_FRACTION, InsertSettings, derive_insert_settings
from system.config.lr_horizon import resolve_lr_horizon
from system.config.recipes import recipe_for
from system.train.run_dir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A checked run, before anything starts."""

    config: RunConfig
    run: RunDir
    name: str
    state: dict
    """Counters of the run so far (state.json; empty for a fresh run)."""
    obs_shape: tuple[int, ...]
    action_space: ActionSpace
    spec: Spec
    resumed: bool = False
    """A `--resume` of a run that started before (whether or not its state.json was written)."""
    learner_reached: Any = None
    """How far the run's learner got in earlier sessions (a `learner.LearnerReached`; None for a
    fresh run): a resumed learner continues above it."""
    fresh_learner: bool = False
    """A resume whose learner starts fresh (no good checkpoint, --fresh-learner given)."""
    learner_checkpoint: tuple[int, Any] | None = None
    """The newest good learner checkpoint's update count and `learner.PhaseMark` (None when it
    has no mark) of a resume; None: no good checkpoint."""
    offline_data: Any = None
    """The `offline` dataset's n-step transitions, read and validated (a
    `system.datasets.LoadedDataset`; None without one): loaded into the offline shards at every start."""
    offline_spec: Spec | None = None
    """The offline shards' columns: `spec`, plus `episode_return` when the loss ranks by it
    ("filtered_bc", or "iql" with `policy_warmup: filtered_bc` in an offline-only run); None without
    a dataset."""

    @property
    def offline_only(self) -> bool:
        """An offline-only run (train.total_env_steps 0): the offline phase, then no actors."""
        return is_offline_only(self.config)


def is_offline_only(config: RunConfig) -> bool:
    """Whether `config` is an offline-only run: train.total_env_steps 0 (with an offline dataset)."""
    return config.train.total_env_steps == 0


def plan(
    config_path: str | None,
    overrides: list[str],
    run_dir: str | None,
    resume: str | None,
    fresh_learner: bool = False,
    env_id: str | None = None,
) -> Plan:
    """Resolves and checks everything a run needs; nothing is started or written.

    Args:
        fresh_learner: a resume may start a fresh learner when no learner checkpoint is good.
        env_id: with no config file: train this env with the default recipe of its action space
            (`system.config.recipes`).

    Raises:
        ConfigError: a bad value (named), an unknown env, a replay that cannot fit in memory, a
            run directory that already holds a run (fresh runs), or one that holds none (resume);
            a resume whose learner trained but left no good checkpoint (without fresh_learner).
    """
    if fresh_learner and resume is None:
        raise ConfigError("--fresh-learner goes with --resume RUN_DIR (a new run's learner is fresh anyway)")
    if resume is not None:
        if env_id is not None:
            raise ConfigError("--resume RUN_DIR takes the run's own config.yaml: give no --env with it")
        if config_path is not None:
            raise ConfigError("--resume RUN_DIR takes the run's own config.yaml: give no CONFIG with it")
        refuse_support_overrides(overrides)
        run = RunDir(resume)
        config = run.load_config(overrides)
        state = run.read_json("state.json") or {}
        done = int(state.get("env_steps", 0))
        if done > 0 and is_offline_only(config):
            refuse_offline_only_after_online(config, state)
        if done >= config.train.total_env_steps and not is_offline_only(config):  # offline only: below
            raise ConfigError(
                f"train.total_env_steps={config.train.total_env_steps}: the run already did {done:,} env steps; "
                f"go further with --set train.total_env_steps=N (N > {done})"
            )
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=str(run.path)))
    else:
        base = None
        if env_id is not None:
            if config_path is not None:
                raise ConfigError(f"--env {env_id} trains the default recipe: give no CONFIG with it")
            base = recipe_for(env_id)
        config = load_config(config_path, overrides, {"train.run_dir": run_dir}, base=base)
        run = RunDir(config.train.run_dir or default_run_dir(config))
        if run.exists():
            raise ConfigError(
                f"train.run_dir={str(run.path)!r} already holds a run: continue it with --resume {run.path}, "
                "or choose another --run-dir"
            )
        state = {}
    name = config.train.run_name or re.sub(r"[^A-Za-z0-9_.-]+", "-", run.path.resolve().name)
    if name.endswith(".offline"):  # the shard registry's namespace of a run's offline shards
        raise ConfigError(
            f"run name {name!r}: a name ending in '.offline' would share the shard registry of the offline "
            f"shards of run {name.removesuffix('.offline')!r}; set train.run_name or choose another --run-dir"
        )
    config = reachable_metrics(seeded(config))
    train = dataclasses.replace(config.train, run_dir=str(run.path), run_name=name)
    config = dataclasses.replace(config, train=train)
    spaces = env_spaces(config.env)
    check(config, spaces.spec, spaces.action_space, resumed=resume is not None)
    if resume is None:
        check_warmup_phase(config)
    if resume is None or not config.learner.distributional.resolved:  # a run's config.yaml holds its numbers
        config = resolve_value_support(config)
    config = resolve_lr_horizon(config)  # a resumed run's config.yaml holds the horizon it started with
    checked = Plan(config, run, name, state, spaces.obs_shape, spaces.action_space, spaces.spec)
    if resume is not None:
        checked.resumed = True
        checked.learner_reached, checked.fresh_learner, checked.learner_checkpoint = learner_resume(
            run, fresh_learner, state
        )
        latest = None if checked.fresh_learner else checked.learner_checkpoint
        check_warmup_phase(config, latest[0] if latest else None)
        if checked.offline_only:
            refuse_finished_offline_only(checked)
    checked.offline_spec = offline_spec(config, spaces.spec)
    checked.offline_data = load_offline(config, spaces, checked.offline_spec)
    return checked


def refuse_finished_offline_only(checked: Plan) -> None:
    """An offline-only run resumes to finish its offline updates; one that made them all is done.

    Raises:
        ConfigError: the learner's phase (its checkpoint and the run's records,
            `system.services.phases`) is finished.
    """
    from learner import PhaseMark
    from system.services.phases import decide_phase

    config, reached = checked.config, checked.learner_reached
    latest = None if checked.fresh_learner else checked.learner_checkpoint
    updates, mark = latest if latest else (reached.updates, PhaseMark(OFFLINE, 0))
    decision = decide_phase(config.offline.updates, True, updates, mark, reached.phase, reached.online_from)
    if decision.phase == OFFLINE:
        return
    if decision.phase == ONLINE:
        refuse_offline_only_after_online(config, checked.state, decision.online_from)
    raise ConfigError(
        f"offline.updates={config.offline.updates}: this offline-only run's learner already made "
        f"{decision.offline_updates:,} offline updates; go further with --set offline.updates=N "
        f"(N > {decision.offline_updates}), or online with --set train.total_env_steps=N"
    )


def refuse_offline_only_after_online(config: RunConfig, state: dict, online_from: int | None = None) -> None:
    """A run that went online cannot continue offline-only (train.total_env_steps=0 on its resume):
    its learner trains online from now on (phases only go forward).

    Raises:
        ConfigError: always, with how to go further online.
    """
    done = int(state.get("env_steps", 0))
    if online_from is None:
        online_from = (state.get("online_from") or {}).get("updates")
    at = f" at update {online_from:,}" if online_from is not None else ""
    raise ConfigError(
        f"train.total_env_steps={config.train.total_env_steps}: this run went online{at} and already did "
        f"{done:,} env steps; it cannot become offline-only: go further with --set train.total_env_steps=N "
        f"(N > {done})"
    )


SUPPORT_KEYS = ("v_min", "v_max", "num_bins", "value_transform")
"""The value support's keys: the learner's checkpoint holds networks trained on them."""


def refuse_support_overrides(overrides: list[str]) -> None:
    """Refuses `--set` of a value-support key on `--resume`: the checkpointed distribution heads were
    trained on the run's support, and would read wrong values on another.

    Raises:
        ConfigError: an override names learner.v_min, v_max, num_bins or value_transform.
    """
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        name = key.rsplit(".", 1)[-1]
        if key.startswith("learner.") and name in SUPPORT_KEYS:
            raise ConfigError(
                f"--set {key}: a resumed run keeps the value support its learner was trained on "
                f"(learner.{', learner.'.join(SUPPORT_KEYS)}); start a new run to change it"
            )


OFFLINE_FIRST_SHARD_ID = 512
"""Offline shard i has id 512 + i (online shards are 0..train.num_shards-1): keys of a mixed batch
name their shard unambiguously, so priority updates route."""


def offline_spec(config: RunConfig, spec: Spec) -> Spec | None:
    """The offline shards' columns: `spec`, with `episode_return` for "filtered_bc" (which only an
    offline-only run may use: `check_offline`) and, in an offline-only run, for "iql" with
    `policy_warmup: filtered_bc` (mixed batches need the same columns from both sources, and
    actors' transitions have no episode return: run the offline phase alone, then `--resume` it
    online, as `qfleet bench digiq` does); None without a dataset."""
    if not config.offline.enabled:
        return None
    if config.learner.loss == "filtered_bc" or (warms_up_by_filtered_bc(config) and is_offline_only(config)):
        from system.datasets import with_episode_return

        return with_episode_return(spec)
    return spec


def load_offline(config: RunConfig, spaces, spec: Spec | None = None):
    """The `offline` dataset as n-step transitions (the actors' n and the learner's gamma) in
    `spec`'s columns (default: the env's), or None.

    Raises:
        DatasetError: a missing dataset, or one that does not match the env (named field).
    """
    offline = config.offline
    if not offline.enabled:
        return None
    from system.datasets import DatasetSource, load_transitions

    source = DatasetSource(offline.dataset, offline.datasets_dir, offline.num_shards, offline.selector)
    loaded = load_transitions(
        source, spec or spaces.spec, spaces.action_space, n_step=config.actors.n_step, gamma=config.learner.gamma
    )
    log.info(
        "offline dataset %s: %s transitions from %s episodes (read %.1f s, n-step %.1f s)",
        offline.dataset,
        f"{loaded.size:,}",
        f"{loaded.episodes:,}",
        loaded.read_s,
        loaded.nstep_s,
    )
    return loaded


def offline_shard_settings(config: RunConfig, loaded, shard: int, redis_url: str, name: str) -> ReplayConfig:
    """Offline shard `shard`'s settings: its share of the dataset exactly (never evicted), no rate
    limiter, no checkpoints, registered under the run's offline namespace (`offline_run_name`)."""
    from system.datasets import offline_shard_config

    base = dataclasses.replace(
        config.replay,
        redis_url=redis_url,
        run=offline_run_name(name),
        metrics_port=0,
        seed=None if config.replay.seed is None else config.replay.seed + OFFLINE_FIRST_SHARD_ID + shard,
    )
    return offline_shard_config(base, loaded.source, loaded.size, shard, first_shard_id=OFFLINE_FIRST_SHARD_ID)


def learner_resume(run: RunDir, fresh_learner: bool, state: dict | None = None):
    """How far the run's learner got (its records; `state`: its state.json, for the phase of a
    run with an offline dataset), and whether it must start fresh.

    Returns:
        (a `learner.LearnerReached`, True when no checkpoint is good but fresh_learner allows it,
        the newest good checkpoint's (update count, `learner.PhaseMark` or None), None without one).

    Raises:
        ConfigError: the learner trained but no checkpoint of it is good, without fresh_learner.
    """
    from learner import LearnerReached, PhaseMark, find_checkpoint

    progress = run.records("progress")
    last = progress[-1] if progress else {}
    fresh_starts = [r for r in run.records("learner") if r.get("event") == "fresh"]
    reached = LearnerReached(  # the last record: an earlier session's loss is not counted again
        updates=int(last.get("updates", 0)),
        version=max((int(r.get("weights_version", 0)) for r in progress), default=0),
        inserts=int(last.get("replay_inserts", 0)),
        fresh_from=int(fresh_starts[-1].get("updates", 0)) if fresh_starts else 0,
        phase=(state or {}).get("phase"),
        online_from=((state or {}).get("online_from") or {}).get("updates"),
    )
    found = find_checkpoint(run.checkpoints)
    newest = None
    if found.state is not None:
        newest = (int(found.state["counters"]["updates"]), PhaseMark.from_state(found.state))
    if found.path is not None or (reached.updates == 0 and not found.refused):
        return reached, False, newest  # a good checkpoint, or a learner that never trained
    why = "; ".join(found.refused) if found.refused else f"none in {run.checkpoints}"
    if aside := sorted(path.name for path in run.checkpoints.glob("*.refused")):
        why += f"; refused before and renamed: {', '.join(aside)}"
    if fresh_learner:  # the driver records the fresh start (and its loss): the learner counts none again
        reached = dataclasses.replace(reached, fresh_from=reached.updates)
    if not fresh_learner:
        raise ConfigError(
            f"no good learner checkpoint ({why}), and the run's learner had reached update {reached.updates:,}: "
            f"resuming would lose its training. Continue with a fresh learner (its counters go on from there, "
            f"the run records it): qfleet train --resume {run.path} --fresh-learner"
        )
    log.warning("no good learner checkpoint (%s): a fresh learner continues from update %d", why, reached.updates)
    return reached, True, None


def default_run_dir(config: RunConfig) -> pathlib.Path:
    """runs/RUN_NAME, or runs/ENV-DATE-TIME."""
    if config.train.run_name:
        return pathlib.Path("runs") / config.train.run_name
    env = re.sub(r"[^A-Za-z0-9.-]+", "-", config.env.id).strip("-").lower()
    return pathlib.Path("runs") / f"{env}-{time.strftime('%Y%m%d-%H%M%S')}"


def evaluates_in_driver(config: RunConfig) -> bool:
    """Whether the driver can run the env itself for evaluations (not an Android emulator)."""
    from actors import ANDROID_ID

    android = config.env.android
    return not (config.env.id == ANDROID_ID and android is not None and android.simulator == "emulator")


def reachable_metrics(config: RunConfig) -> RunConfig:
    """On a cluster, /metrics left on loopback move to the node's address (Prometheus runs elsewhere)."""
    if config.ray.address is None:
        return config
    actors, train = config.actors, config.train
    if actors.metrics_host == "127.0.0.1":
        actors = dataclasses.replace(actors, metrics_host="node")
    if train.metrics_host == "127.0.0.1":
        train = dataclasses.replace(train, metrics_host="node")
    return dataclasses.replace(config, actors=actors, train=train)


def seeded(config: RunConfig) -> RunConfig:
    """train.seed, when set, seeds the learner, the actors and the replay."""
    seed = config.train.seed
    if seed is None:
        return config
    return dataclasses.replace(
        config,
        learner=dataclasses.replace(config.learner, seed=seed),
        actors=dataclasses.replace(config.actors, seed=seed),
        replay=dataclasses.replace(config.replay, seed=seed),
    )


def _memory_available() -> int | None:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check(config: RunConfig, spec: Spec, action_space: ActionSpace, *, resumed: bool = False) -> None:
    """Cross-section checks: what no single section can know.

    Raises:
        ConfigError: a combination that cannot run (named).
    """
    train, replay, learner = config.train, config.replay, config.learner
    check_learner_for_env(learner, action_space, config.env.id)
    check_value_support(config)
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
    if warning := insert_lead_warning(config, resumed=resumed):
        log.warning("%s", warning)
    check_offline(config)
    defaults = type(replay)()
    for key in ("samples_per_insert", "min_size", "error_buffer", "checkpoint_dir", "redis_url"):
        if getattr(replay, key) != getattr(defaults, key):
            value = redact_url(replay.redis_url) if key == "redis_url" else getattr(replay, key)
            log.warning("replay.%s is set by qfleet train itself; the configured %r is ignored", key, value)


def insert_lead_warning(config: RunConfig, *, resumed: bool = False) -> str | None:
    """What to say when the actors' insert settings let them run out of proportion ahead of the
    learner (a lead above LEAD_WARN_FRACTION of the run); None when they fit, or are the ones
    `derive_insert_settings` gives this run (a default config never warns). `resumed`: the run's
    config.yaml holds its settings, so the advice is the values to `--set`, not keys to leave out."""
    train, actors = config.train, config.actors
    settings = InsertSettings(actors.insert_batch, actors.max_inserts_in_flight)
    lead = settings.lead(actors.num_actors, config.env.num_envs)
    if not train.total_env_steps or lead <= LEAD_WARN_FRACTION * train.total_env_steps:
        return None
    derived = derive_insert_settings(train.total_env_steps, config.learner.updates_per_env_step, actors.num_actors)
    if settings == derived:
        return None
    if resumed:
        advice = (
            f"a resume keeps the run's saved settings (config.yaml): --set actors.insert_batch={derived.insert_batch} "
            f"--set actors.max_inserts_in_flight={derived.max_inserts_in_flight} to size them for "
            f"{actors.num_actors} actors and this run"
        )
    else:
        advice = (
            f"leave actors.insert_batch and actors.max_inserts_in_flight out to derive them from the run "
            f"(here {derived.insert_batch} and {derived.max_inserts_in_flight}), or lower them for a tighter UTD"
        )
    return (
        f"actors may run up to {lead:,} transitions ahead of the learner (num_actors x insert_batch x "
        f"(max_inserts_in_flight + 1)), {100 * lead / train.total_env_steps:.0f}% of train.total_env_steps: {advice}"
    )


def warms_up_by_filtered_bc(config: RunConfig) -> bool:
    """Whether pi's first `learner.policy_starts` updates clone the batch's best transitions, ranked
    by `episode_return`."""
    iql = config.learner.iql
    return config.learner.loss == "iql" and iql.policy_warmup == "filtered_bc" and iql.policy_starts > 0


def check_warmup_phase(config: RunConfig, resumed_from: int | None = None) -> None:
    """An offline -> online run whose pi would warm up by filtered BC on mixed batches is refused
    before anything starts: the warm-up ranks the dataset's transitions by `episode_return`, a
    column only an offline-only run's batches carry (mixed batches need the same columns as actors'
    transitions). Its offline phase runs alone, then `--resume`s online: allowed when the resumed
    learner's checkpoint (`resumed_from`, its update count) is at or past `policy_starts`; a fresh
    run, a resume whose learner starts fresh (`resumed_from` None) or one checkpointed inside the
    warm-up would warm up on mixed batches.

    Raises:
        ConfigError: naming the keys and the commands.
    """
    if not (warms_up_by_filtered_bc(config) and config.offline.enabled) or is_offline_only(config):
        return
    policy_starts = config.learner.iql.policy_starts
    if resumed_from is not None and resumed_from >= policy_starts:
        return
    if resumed_from is None:
        where = "this run's learner would start the warm-up afresh on mixed batches"
    else:
        where = f"this run's learner checkpoint is at update {resumed_from:,}, inside the warm-up"
    raise ConfigError(
        f"learner.policy_warmup='filtered_bc' (until learner.policy_starts={policy_starts}) ranks the offline "
        f"dataset's transitions by episode_return, which only an offline-only run's batches carry, and {where}: "
        "finish the offline phase offline-only first (a new run with --set train.total_env_steps=0, or "
        "qfleet train --resume RUN_DIR --set train.total_env_steps=0), then qfleet train --resume RUN_DIR "
        "--set train.total_env_steps=N; or set learner.policy_warmup=none"
    )


def check_offline(config: RunConfig) -> None:
    """The `offline` section against the rest: a mix needs a dataset, names both sources, gives
    each at least one item of a batch; the online loss must learn from actors' transitions.

    Raises:
        ConfigError: naming the key.
    """
    offline, replay, learner = config.offline, config.replay, config.learner
    offline_only = is_offline_only(config)
    if offline_only and not (offline.enabled and offline.updates > 0):
        raise ConfigError(
            "train.total_env_steps=0 is an offline-only run: it needs offline.dataset and offline.updates > 0 "
            f"(got dataset {offline.dataset!r}, updates {offline.updates})"
        )
    if not offline.enabled:
        if learner.loss == "filtered_bc":
            raise ConfigError(
                "learner.loss='filtered_bc' imitates the transitions of the best episodes, ranked by each "
                "transition's episode_return, which actors' online transitions lack: it trains on an offline "
                "dataset only (offline.dataset with train.total_env_steps=0)"
            )
        if warms_up_by_filtered_bc(config):
            raise ConfigError(
                "learner.policy_warmup='filtered_bc' clones the best episodes of an offline dataset, ranked by "
                "each transition's episode_return, which actors' online transitions lack: set offline.dataset, "
                "or learner.policy_warmup=none"
            )
        if replay.mix is not None:
            raise ConfigError(
                f"replay.mix={replay.mix!r}: mixes an offline dataset into online batches; "
                "set offline.dataset, or leave replay.mix null"
            )
        return
    mix = batch_mix(offline, replay.mix)
    if set(mix) != {OFFLINE, ONLINE}:
        raise ConfigError(
            f"replay.mix={replay.mix!r}: with offline.dataset, give the fractions of both sources, "
            f"e.g. {{{OFFLINE}: 0.5, {ONLINE}: 0.5}}"
        )
    from replay import split_counts

    counts = split_counts(learner.batch_size, mix)
    if min(counts.values()) < 1:
        raise ConfigError(
            f"replay.mix={mix!r}: a batch of learner.batch_size={learner.batch_size} would hold {counts} items "
            "per source; each needs at least one"
        )
    if warms_up_by_filtered_bc(config) and offline.updates <= learner.iql.policy_starts:
        raise ConfigError(
            f"offline.updates={offline.updates}: with learner.policy_warmup='filtered_bc' the first "
            f"learner.policy_starts={learner.iql.policy_starts} updates are the warm-up; the offline phase must go "
            "past it (pi's Best-of-N or AWR training never runs offline otherwise, and an online resume would warm "
            "up on batches without episode_return): raise offline.updates or lower learner.policy_starts"
        )
    if learner.loss == "filtered_bc" and not offline_only:
        raise ConfigError(
            "learner.loss='filtered_bc' needs each transition's episode_return, which actors' online "
            "transitions lack: an offline -> online run needs iql or a Q-learning loss (filtered_bc "
            "runs offline only: train.total_env_steps=0)"
        )
    if config.train.num_shards > OFFLINE_FIRST_SHARD_ID:
        raise ConfigError(
            f"train.num_shards={config.train.num_shards}: with offline shards (ids from "
            f"{OFFLINE_FIRST_SHARD_ID}) at most {OFFLINE_FIRST_SHARD_ID} online shards"
        )


def shard_config(config: RunConfig, shard_id: int, redis_url: str, name: str, run: RunDir) -> ReplayConfig:
    """Shard `shard_id`'s settings: registry, checkpoints in the run directory, and the limiter
    that makes writers wait for the learner.

    The shard's window is Reverb's SampleToInsertRatio with min_size 1 and an error buffer wide
    enough for `learning_starts` items on any single shard plus the learner's own sampling slack:
    actors fill the replay to learning_starts, then run at most that far ahead of the UTD. Only
    inserts wait for it (`limit_samples=False`): the learner's sampler keeps the ratio over all
    shards, and a shard with fewer writers than its share of draws must not hold the learner up.
    With an offline dataset the ratio counts the online share of each batch only (`online_batch_items`).
    """
    from learner import sample_error_buffer

    learner = config.learner
    mix = batch_mix(config.offline, config.replay.mix)
    samples_per_insert = learner.updates_per_env_step * online_batch_items(learner.batch_size, mix)
    return dataclasses.replace(
        config.replay,
        shard_id=shard_id,
        redis_url=redis_url,
        run=name,
        port=0,
        metrics_port=0,
        samples_per_insert=samples_per_insert,
        limit_samples=False,
        min_size=1,
        error_buffer=samples_per_insert * learner.learning_starts + sample_error_buffer(learner),
        checkpoint_dir=str(run.replay_checkpoints(shard_id)) if config.train.checkpoint_replay else None,
        checkpoint_every_s=config.train.shard_checkpoint_every_s if config.train.checkpoint_replay else None,
        seed=None if config.replay.seed is None else config.replay.seed + shard_id,
    )
