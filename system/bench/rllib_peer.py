"""RLlib's DQN (new API stack) for `qfleet bench e2e`: run by the peer interpreter, which may be a
venv of its own (RLlib pins what qfleet need not), so this script imports nothing of qfleet.

    PEER_PYTHON system/bench/rllib_peer.py '{"env_id": "CartPole-v1", "updates_per_env_step": 1, ...}'

Prints one JSON line: env steps/s, updates/s and achieved UTD over the window from the first
training iteration that updated to the last one; or {"skipped": "RLlib not installed: skipped"}
when `ray.rllib` does not import. The env runners mirror qfleet's actors (`num_env_runners` of
`num_envs_per_env_runner` envs each, fragments of 32 steps), observations are flattened (qfleet's
MLP on MinAtar, where RLlib would build a CNN), replay is uniform and 1-step (as qfleet's in the
benchmark), one torch thread per process; the network, batch, warm-up, double Q and no dueling as
qfleet's. `training_intensity` is RLlib's ratio of trained to sampled timesteps, each update
training on `batch_size` of them; RLlib's round-robin weights (`calculate_rr_weights`) count the
local env runner as sampling too (n + 1 runners) while only the n remote ones do, so UTD u is
`training_intensity = u x batch_size x n / (n + 1)` (`training_intensity`). A run whose achieved
UTD is off by more than 10% says so on stderr (RLlib rounds its weights to whole numbers).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread per process

ROLLOUT_FRAGMENT_LENGTH = 32
"""Env steps per env of one sampling round of an env runner."""


def training_intensity(updates_per_env_step: float, batch_size: int, num_env_runners: int) -> float:
    """RLlib's `training_intensity` giving `updates_per_env_step` updates of `batch_size` per sampled
    env step with `num_env_runners` remote env runners (see the module's docstring)."""
    if num_env_runners == 0:  # the local runner samples alone: RLlib's n + 1 is then right
        return updates_per_env_step * batch_size
    return updates_per_env_step * batch_size * num_env_runners / (num_env_runners + 1)


def _register_env(env_id: str, max_episode_steps: int | None) -> str:
    """An RLlib env name for `env_id` (MinAtar ids register their package first)."""
    from ray.tune.registry import register_env

    def create(_config):
        import gymnasium as gym

        if env_id.startswith("MinAtar/"):
            import minatar.gym

            if env_id not in gym.registry:
                minatar.gym.register_envs()
        kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        # A flat float vector: RLlib's default model is then the MLP qfleet runs (not a CNN on
        # MinAtar), and MinAtar's bool planes meet float weights as qfleet feeds them.
        import numpy as np

        flat = gym.wrappers.FlattenObservation(gym.make(env_id, **kwargs))
        return gym.wrappers.DtypeObservation(flat, np.float32)

    name = f"qfleet-bench-{env_id}"
    register_env(name, create)
    return name


def _lifetime(result: dict, *path: str) -> float:
    node = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return 0.0
        node = node[key]
    return float(node) if isinstance(node, int | float) else 0.0


def _start_ray(ray, tries: int = 3) -> None:
    """A local Ray; started again when its raylet misses Ray's fixed 30 s start-up wait (a loaded
    machine), as a user would retry."""
    for attempt in range(1, tries + 1):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == tries:
                raise
            print(f"ray.init: {exc}; again ({attempt} of {tries})", file=sys.stderr, flush=True)
            ray.shutdown()


def run(request: dict) -> dict:
    """Trains RLlib's DQN for the request's budget; its figures."""
    import ray
    import torch
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    torch.set_num_threads(1)
    batch, utd = int(request["batch_size"]), float(request["updates_per_env_step"])
    runners = int(request.get("num_env_runners", 0))
    intensity = training_intensity(utd, batch, runners)
    _start_ray(ray)
    config = (
        DQNConfig()
        .environment(_register_env(request["env_id"], request.get("max_episode_steps")))
        .framework("torch")
        .env_runners(
            num_env_runners=runners,
            num_envs_per_env_runner=int(request.get("num_envs_per_env_runner", 1)),
            rollout_fragment_length=ROLLOUT_FRAGMENT_LENGTH,
        )
        .training(
            train_batch_size_per_learner=batch,
            training_intensity=intensity,
            num_steps_sampled_before_learning_starts=int(request["learning_starts"]),
            double_q=True,
            dueling=False,
            n_step=1,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 100_000},
            lr=2.5e-4,
        )
        # Short iterations (RLlib's DQN default: 1,000 sampled steps each) so the window ends close to
        # its budget; each iteration is still whole rounds of sampling and training.
        .reporting(min_sample_timesteps_per_iteration=100, min_time_s_per_iteration=0)
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=[int(request["hidden_size"])] * int(request["num_layers"]),
                fcnet_activation="relu",
                head_fcnet_hiddens=[],
            )
        )
    )
    algo = config.build_algo()
    steps_path = ("env_runners", "num_env_steps_sampled_lifetime")
    trained_path = ("learners", "__all_modules__", "num_env_steps_trained_lifetime")
    start: tuple[float, float, float] | None = None  # (time, env steps, trained steps) when training began
    seconds, env_steps = float(request["seconds"]), request.get("env_steps")
    while True:
        result = algo.train()
        now = time.perf_counter()
        sampled, trained = _lifetime(result, *steps_path), _lifetime(result, *trained_path)
        print(f"iteration: {sampled:.0f} env steps sampled, {trained:.0f} trained", file=sys.stderr, flush=True)
        if start is None:
            if trained > 0:
                start = (now, sampled, trained)
            continue
        if (env_steps is not None and sampled >= env_steps) or (env_steps is None and now - start[0] >= seconds):
            break
    algo.stop()
    ray.shutdown()
    elapsed = now - start[0]
    steps, updates = sampled - start[1], (trained - start[2]) / batch
    if steps and abs(updates / steps - utd) > 0.1 * utd:
        print(
            f"warning: achieved UTD {updates / steps:.3f} is off the requested {utd:g} by more than 10% "
            f"(training_intensity {intensity:g}; RLlib rounds its sample/train weights to whole numbers)",
            file=sys.stderr,
            flush=True,
        )
    return {
        "window_s": round(elapsed, 1),
        "env_steps": int(sampled),
        "updates": round(trained / batch),
        "env_steps_per_s": round(steps / elapsed, 1),
        "updates_per_s": round(updates / elapsed, 1),
        "achieved_utd": round(updates / steps, 4) if steps else None,
        "training_intensity": intensity,
        "torch_threads": torch.get_num_threads(),
        "ray": ray.__version__,
    }


def main() -> None:
    request = json.loads(sys.argv[1])
    try:
        import ray.rllib  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "RLlib not installed: skipped"}), flush=True)
        return
    print(json.dumps(run(request)), flush=True)


if __name__ == "__main__":
    main()
