"""`qfleet record`: a policy (a run's newest checkpoint, or an untrained network) played with
exploration in env vectors, its episodes written to a new Minari dataset."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np

from actors import EnvVector, make_env
from learner import Policy
from system.config import ConfigError, RunConfig, env_spaces, load_config
from system.datasets.layout import check_dataset_id, datasets_dir
from system.datasets.recorder import RecordSettings, record_episodes
from system.datasets.writer import DatasetWriter


def _policy_from_run(run_dir: str, overrides: list[str]) -> tuple[RunConfig, Policy, dict]:
    import torch

    from learner import load_latest_checkpoint, make_agent
    from system.train import RunDir

    run = RunDir(pathlib.Path(run_dir))
    config = run.load_config(overrides)
    loaded = load_latest_checkpoint(run.checkpoints)
    if loaded is None:
        raise ConfigError(
            f"--policy {run_dir}: no learner checkpoint in {run.checkpoints} (has the run done any update?)"
        )
    state, path = loaded
    spaces = env_spaces(config.env)
    agent = make_agent(config.learner, spaces.obs_shape, spaces.action_space, torch.device("cpu"))
    agent.load_state_dict(state["agent"])
    version = int(state["counters"]["version"])
    policy = Policy(config.learner, spaces.obs_shape, spaces.action_space)
    policy.load(agent.policy_state(), version)
    source = {"run_dir": str(run.path), "checkpoint": path.name, "updates": int(state["counters"]["updates"])}
    return config, policy, source


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
    if policy_dir is not None:
        config, policy, source = _policy_from_run(policy_dir, overrides)
    else:
        config = load_config(config_path, overrides)
        spaces = env_spaces(config.env)
        policy = Policy(config.learner, spaces.obs_shape, spaces.action_space, seed=settings.seed)
        source = {"untrained": True}
    env = make_env(config.env)
    try:
        observation_space, action_space, env_spec = env.observation_space, env.action_space, env.spec
    finally:
        env.close()
    data = datasets_dir(root) / dataset_id / "data"
    recorded_by = {
        "command": "qfleet record",
        "env": json.loads(json.dumps(dataclasses.asdict(config.env), default=str)),
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
        f"{policy_dir or 'an untrained network'}, {settings.num_actors} actor(s) x {config.env.num_envs} envs -> {data.parent}",
        flush=True,
    )
    started = time.monotonic()
    try:
        returns = record_episodes(
            writer,
            lambda i: EnvVector(config.env, seed=settings.seed * 10_000 + 1000 * i),
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
