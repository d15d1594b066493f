"""`qfleet record`: a policy (a run's newest checkpoint, or an untrained network) played with
exploration in env vectors, its episodes written to a new Minari dataset.

The dataset id is checked free (and its folder makeable) before any policy is loaded. The dataset's
metadata says how it was made without anything local: the env id (not the env section, whose
settings can hold SDK or AVD paths), the checkpoint's file name, updates and weights version (not
the run directory), epsilon, actors, seed and time."""

from __future__ import annotations

import pathlib
import time
from typing import TYPE_CHECKING

import numpy as np

from actors import EnvVector, make_env
from learner import Policy
from system.config import ConfigError, RunConfig, env_spaces, load_config
from system.datasets.errors import DatasetError
from system.datasets.layout import check_dataset_id, datasets_dir
from system.datasets.recorder import RecordSettings, record_episodes
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


def main_record(
    dataset_id: str,
    policy_dir: str | None,
    config_path: str | None,
    overrides: list[str],
    settings: RecordSettings,
    root: str | None,
) -> int:
    import torch

    torch.set_num_threads(1)  # like actors: batched forwards of a few envs gain nothing from threads
    check_dataset_id(dataset_id)
    if (policy_dir is None) == (config_path is None):
        raise ConfigError("give --policy RUN_DIR (a trained run) or --config CONFIG (an untrained network), not both")
    data = datasets_dir(root) / dataset_id / "data"
    if policy_dir is not None:
        from system.train import RunDir

        run = RunDir(pathlib.Path(policy_dir))
        config = run.load_config(overrides)
        _check_destination(data, dataset_id)
        policy, source = _policy_from_run(run, config)
    else:
        config = load_config(config_path, overrides)
        _check_destination(data, dataset_id)
        spaces = env_spaces(config.env)
        policy = Policy(config.learner, spaces.obs_shape, spaces.action_space, seed=settings.seed)
        source = {"untrained": True}
    env = make_env(config.env)
    try:
        observation_space, action_space, env_spec = env.observation_space, env.action_space, env.spec
    finally:
        env.close()
    # Only what a shared dataset needs: no paths, no env settings (they can hold local paths).
    recorded_by = {
        "command": "qfleet record",
        "env_id": config.env.id,
        "policy": source,
        "epsilon": settings.epsilon,
        "num_actors": settings.num_actors,
        "seed": settings.seed,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    writer = DatasetWriter(
        data,
        dataset_id,
        observation_space,
        action_space,
        env_spec,
        {"algorithm_name": "qfleet", "qfleet": recorded_by},
    )
    print(
        f"qfleet record: {config.env.id}, {settings.episodes:,} episodes with epsilon {settings.epsilon} from "
        f"{policy_dir or 'an untrained network'}, {settings.num_actors} actor(s) x {config.env.num_envs} envs "
        f"-> {data.parent}",
        flush=True,
    )
    started = time.monotonic()
    try:
        returns = record_episodes(
            writer,
            lambda i, seed: EnvVector(config.env, seed=seed),
            policy,
            settings,
            progress=lambda line: print(line, flush=True),
        )
    finally:
        writer.close()
    print(
        f"recorded {writer.episodes:,} episodes, {writer.steps:,} steps in {time.monotonic() - started:.1f} s; "
        f"return {np.mean(returns):.2f} +- {np.std(returns):.2f} (min {min(returns):g}, max {max(returns):g}); "
        f"dataset {dataset_id} at {data.parent}",
        flush=True,
    )
    return 0
