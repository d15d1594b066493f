"""`qfleet record`: a policy (a run's newest checkpoint or an untrained network, with epsilon-greedy
exploration; or, on MiniWoB, the instruction-following behaviour policy of actors/ui_behaviour.py)
played in env vectors, its episodes written to a new Minari dataset (one per env with --env).

Every dataset id is checked free (and its folder makeable) before any policy is loaded. The
dataset's metadata says how it was made without anything local: the env id (not the env section,
whose settings can hold SDK or AVD paths), the checkpoint's file name, updates and weights version
(not the run directory) or the behaviour and its follow_p, epsilon, actors, seed and time; MiniWoB
episodes carry their success."""

from __future__ import annotations

import pathlib
import time
from typing import TYPE_CHECKING

import numpy as np

from actors import INSTRUCTION_RULES, MINIWOB_PREFIX, EnvVector, FeaturizedEnv, InstructionBehaviour, make_env
from learner import Policy
from system.config import (
    ConfigError,
    RunConfig,
    check_learner_for_env,
    check_value_support,
    env_spaces,
    load_config,
    with_placeholder_support,
)
from system.datasets.errors import DatasetError
from system.datasets.layout import check_dataset_id, datasets_dir
from system.datasets.reader import SCREEN_GRID_KEY, screen_grid_record
from system.datasets.recorder import PolicyActions, RecordSettings, VectorActions, record_episodes
from system.datasets.writer import DatasetWriter, check_dataset_free

if TYPE_CHECKING:
    from system.train import RunDir


def _policy_from_run(run: RunDir, config: RunConfig) -> tuple[Policy, dict]:
    """The newest checkpoint of `run` as a policy, and what the dataset says of it (no paths)."""
    import torch

    from learner import load_latest_checkpoint, make_agent

    loaded = load_latest_checkpoint(run.checkpoints)
    if loaded is None:
        raise ConfigError(
            f"--policy {run.path}: no learner checkpoint in {run.checkpoints} (has the run done any update?)"
        )
    state, path = loaded
    spaces = env_spaces(config.env)
    agent = make_agent(config.learner, spaces.obs_shape, spaces.action_space, torch.device("cpu"))
    agent.load_state_dict(state["agent"])
    version = int(state["counters"]["version"])
    policy = Policy(config.learner, spaces.obs_shape, spaces.action_space)
    policy.load(agent.policy_state(), version)
    return policy, {"checkpoint": path.name, "updates": int(state["counters"]["updates"]), "version": version}


def _check_destination(data: pathlib.Path, dataset_id: str) -> None:
    """The id is free and its folder can be made, before any policy is loaded."""
    check_dataset_free(data, dataset_id)
    try:
        data.parent.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            dataset_id, "--datasets-dir", f"cannot make {data.parent.parent}: {exc.strerror or exc}"
        ) from None


def dataset_ids(template: str, env_ids: list[str]) -> list[str]:
    """The dataset id of each env: `template` with `{task}` replaced by the MiniWoB task name (one
    dataset per env; several envs need the placeholder), or `template` itself for one env.

    Raises:
        ConfigError: several envs and no `{task}`, or `{task}` with an env that is not MiniWoB's.
    """
    if "{task}" not in template:
        if len(env_ids) > 1:
            raise ConfigError(f"{len(env_ids)} envs need one dataset each: put {{task}} in DATASET_ID ({template})")
        return [check_dataset_id(template)]
    ids = []
    for env_id in env_ids:
        if not env_id.startswith(MINIWOB_PREFIX):
            raise ConfigError(f"DATASET_ID {template}: {{task}} names a MiniWoB task; env {env_id!r} is not one")
        ids.append(check_dataset_id(template.replace("{task}", env_id[len(MINIWOB_PREFIX) :].removesuffix("-v1"))))
    return ids


def main_record(
    dataset_id: str,
    policy_dir: str | None,
    config_path: str | None,
    overrides: list[str],
    settings: RecordSettings,
    root: str | None,
    env_ids: list[str] | None = None,
) -> int:
    """`qfleet record`: one dataset per env (`env_ids`, else the config's env), every id checked
    free before anything is played."""
    import torch

    torch.set_num_threads(1)  # like actors: batched forwards of a few envs gain nothing from threads
    if settings.behaviour == "network" and (policy_dir is None) == (config_path is None):
        raise ConfigError("give --policy RUN_DIR (a trained run) or --config CONFIG (an untrained network), not both")
    if settings.behaviour == "instruction" and policy_dir is not None:
        raise ConfigError("--behaviour instruction plays no network: give --config CONFIG (env settings) or none")
    if policy_dir is not None and env_ids:
        raise ConfigError("--env: a --policy run plays the env it was trained on")
    run = None
    if policy_dir is not None:
        from system.train import RunDir

        run = RunDir(pathlib.Path(policy_dir))
        configs = [run.load_config(overrides)]
    else:
        per_env = [[f"env.id={env_id}"] for env_id in env_ids or []] or [[]]
        configs = [load_config(config_path, [*overrides, *env]) for env in per_env]
    ids = dataset_ids(dataset_id, [config.env.id for config in configs])
    for config, one_id in zip(configs, ids, strict=True):
        if settings.behaviour == "instruction" and not config.env.id.startswith(MINIWOB_PREFIX):
            raise ConfigError(f"--behaviour instruction: env.id={config.env.id!r} is not a MiniWoB task")
        _check_destination(datasets_dir(root) / one_id / "data", one_id)
    for config in configs:
        check_value_support(config)
    # The acting network needs bounds, not the env's: any support gives the same greedy action.
    configs = [with_placeholder_support(config) for config in configs]
    for config, one_id in zip(configs, ids, strict=True):
        _record_one(one_id, config, run, settings, root)
    return 0


def _record_one(dataset_id: str, config: RunConfig, run: RunDir | None, settings: RecordSettings, root: str | None):
    data = datasets_dir(root) / dataset_id / "data"
    _check_destination(data, dataset_id)
    miniwob = config.env.id.startswith(MINIWOB_PREFIX)
    if settings.behaviour == "instruction":
        task = config.env.id[len(MINIWOB_PREFIX) :].removesuffix("-v1")
        supported = task in INSTRUCTION_RULES
        if not supported:
            print(
                f"qfleet record: the instruction behaviour has no rule for miniwob task {task!r} (supported: "
                f"{', '.join(INSTRUCTION_RULES)}): every step is random",
                flush=True,
            )

        def make_actions(i: int, vector: EnvVector) -> VectorActions:
            space = vector.envs[0].unwrapped.ui_actions
            return InstructionBehaviour(task, space, vector.num_envs, settings.follow_p, settings.seed + 1000 * i)

        source: dict = {"behaviour": "instruction", "follow_p": settings.follow_p, "rule": supported}
        epsilon = 1.0 - settings.follow_p if supported else 1.0
        what = f"the instruction behaviour (follow_p {settings.follow_p})"
    else:
        if run is not None:
            policy, source = _policy_from_run(run, config)
        else:
            spaces = env_spaces(config.env)
            check_learner_for_env(config.learner, spaces.action_space, config.env.id)
            policy = Policy(config.learner, spaces.obs_shape, spaces.action_space, seed=settings.seed)
            source = {"untrained": True}

        def make_actions(i: int, vector: EnvVector) -> VectorActions:
            rng = np.random.default_rng(settings.seed + 1000 * i)
            return PolicyActions(policy, settings.epsilon, rng, settings.epsilon_max)

        if settings.epsilon_max is not None and not policy.space.discrete:
            raise ConfigError(f"--epsilon-max: {config.env.id} has continuous actions (epsilon spreads are discrete)")
        epsilon = settings.epsilon
        spread = f"epsilon {settings.epsilon}" + ("" if settings.epsilon_max is None else f"-{settings.epsilon_max}")
        what = f"{run.path if run else 'an untrained network'} with {spread}"
    env = make_env(config.env)
    try:
        observation_space, action_space, env_spec = env.observation_space, env.action_space, env.spec
        screen = env.screen if isinstance(env, FeaturizedEnv) else None
    finally:
        env.close()
    # Only what a shared dataset needs: no paths, no env settings (they can hold local paths).
    recorded_by = {
        "command": "qfleet record",
        "env_id": config.env.id,
        "policy": source,
        "epsilon": epsilon,
        "num_actors": settings.num_actors,
        "seed": settings.seed,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if screen is not None:  # a 12 x 10 grid read as 10 x 12 has the same width: the reader checks this
        recorded_by[SCREEN_GRID_KEY] = screen_grid_record(screen)
    if settings.behaviour == "instruction":
        recorded_by["follow_p"] = settings.follow_p
    if settings.epsilon_max is not None:
        recorded_by["epsilon_max"] = settings.epsilon_max  # each episode's own is in its metadata
    writer = DatasetWriter(
        data,
        dataset_id,
        observation_space,
        action_space,
        env_spec,
        {"algorithm_name": "qfleet", "qfleet": recorded_by},
    )
    print(
        f"qfleet record: {config.env.id}, {_amount(settings)} of {what}, "
        f"{settings.num_actors} actor(s) x {config.env.num_envs} envs -> {data.parent}",
        flush=True,
    )
    started = time.monotonic()
    try:
        recorded = record_episodes(
            writer,
            lambda i, seed: EnvVector(config.env, seed=seed),
            make_actions,
            settings,
            progress=lambda line: print(line, flush=True),
            mark_success=miniwob,
        )
    finally:
        writer.close()
    returns = recorded.returns
    success = f"; success {np.mean(recorded.successes):.2f}" if recorded.successes else ""
    print(
        f"recorded {writer.episodes:,} episodes, {writer.steps:,} steps in {time.monotonic() - started:.1f} s; "
        f"return {np.mean(returns):.2f} +- {np.std(returns):.2f} (min {min(returns):g}, max {max(returns):g})"
        f"{success}; dataset {dataset_id} at {data.parent}",
        flush=True,
    )


def _amount(settings: RecordSettings) -> str:
    """What the recording stops at, in words."""
    parts = [f"{settings.episodes:,} episodes"] if settings.episodes is not None else []
    parts += [f"{settings.steps:,} steps"] if settings.steps is not None else []
    return " or ".join(parts)
