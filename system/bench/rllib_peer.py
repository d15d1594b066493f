"""RLlib's DQN (new API stack) for `qfleet bench e2e`: run by the peer interpreter, which may be a
venv of its own (RLlib pins what qfleet need not), so this script imports nothing of qfleet.

    PEER_PYTHON system/bench/rllib_peer.py '{"env_id": "CartPole-v1", "updates_per_env_step": 1, ...}'

Prints one JSON line: env steps/s, updates/s and achieved UTD over the window from the first
training iteration that updated to the last one; or {"skipped": "RLlib not installed: skipped"}
when `ray.rllib` does not import. `training_intensity` is RLlib's ratio of trained to sampled
timesteps: each update trains on `batch_size` of them, so UTD u is `training_intensity = u x
batch_size`. RLlib's defaults otherwise (one local env runner of one env, a local learner,
prioritized replay), with the network, batch, warm-up, double Q and no dueling as qfleet's.
"""

from __future__ import annotations

import json
import sys
import time


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
        return gym.make(env_id, **kwargs)

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
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    batch = int(request["batch_size"])
    _start_ray(ray)
    config = (
        DQNConfig()
        .environment(_register_env(request["env_id"], request.get("max_episode_steps")))
        .framework("torch")
        .training(
            train_batch_size_per_learner=batch,
            training_intensity=float(request["updates_per_env_step"]) * batch,
            num_steps_sampled_before_learning_starts=int(request["learning_starts"]),
            double_q=True,
            dueling=False,
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
    return {
        "window_s": round(elapsed, 1),
        "env_steps": int(sampled),
        "updates": round(trained / batch),
        "env_steps_per_s": round(steps / elapsed, 1),
        "updates_per_s": round(updates / elapsed, 1),
        "achieved_utd": round(updates / steps, 4) if steps else None,
        "training_intensity": float(request["updates_per_env_step"]) * batch,
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
