"""Stable-Baselines3 with rl-baselines3-zoo's hyper-parameters, one run of `qfleet bench learning`.

SB3 is no dependency of qfleet: this script imports nothing of qfleet and runs in a venv of its own
(requirements-bench-sb3.txt). The suite runs it as a child and reads its stdout, one JSON object a
line (no pickle): first {"ready": ...} with the versions and the hyper-parameters used, then one
{"env_steps", "wall_s", "mean_return"} per evaluation as it happens, then {"done": ...}; or only
{"skipped": why} when stable-baselines3 does not import.

    /work/peers-sb3/bin/python system/bench/sb3_learning_peer.py \
        '{"env_id": "CartPole-v1", "env_steps": 50000, "seed": 0, "eval_every": 2500, "eval_episodes": 10}'

Evaluation: `eval_episodes` greedy episodes (`deterministic=True`) on a separate env after every
`eval_every` env steps and at the budget, where training stops exactly (the callback ends `learn`,
which would otherwise finish its rollout of `train_freq` steps and train past the budget); `wall_s` counts from this process's start (imports and set-up
included, as qfleet's run clock counts its start-up) and includes the evaluations. One torch thread.
"""

from __future__ import annotations

import json
import os
import sys
import time

STARTED = time.perf_counter()

ZOO = "rl-baselines3-zoo 2.9.0a2 (commit 22e3ff2, 2026-04-23)"
"""Where the values below come from: hyperparams/dqn.yml and hyperparams/sac.yml of this version."""

DQN_ZOO: dict[str, dict] = {
    # hyperparams/dqn.yml, CartPole-v1 (zoo n_timesteps 5e4).
    "CartPole-v1": {
        "learning_rate": 2.3e-3,
        "batch_size": 64,
        "buffer_size": 100_000,
        "learning_starts": 1000,
        "gamma": 0.99,
        "target_update_interval": 10,
        "train_freq": 256,
        "gradient_steps": 128,
        "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
    # hyperparams/dqn.yml, Acrobot-v1 (zoo n_timesteps 1e5).
    "Acrobot-v1": {
        "learning_rate": 6.3e-4,
        "batch_size": 128,
        "buffer_size": 50_000,
        "learning_starts": 0,
        "gamma": 0.99,
        "target_update_interval": 250,
        "train_freq": 4,
        "gradient_steps": -1,
        "exploration_fraction": 0.12,
        "exploration_final_eps": 0.1,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
}
"""DQN entries of the zoo, verbatim (`policy: MlpPolicy`)."""

MINATAR_DQN: dict = {
    "learning_rate": 2.5e-4,
    "batch_size": 32,
    "buffer_size": 100_000,
    "learning_starts": 5000,
    "gamma": 0.99,
    "target_update_interval": 1000,
    "train_freq": 1,
    "gradient_steps": 1,
    "exploration_final_eps": 0.1,
    "policy_kwargs": {"net_arch": [256, 256]},
}
"""MinAtar: the zoo has no entry (its `atari` entry is for 10M-frame pixel Atari: CNN, frame stacks,
learning starts at 100k). Used instead: the reference DQN of the MinAtar paper (Young & Tian 2019,
its examples/dqn.py): batch 32, replay 100k, target copy every 1,000 steps, a step of lr 2.5e-4 per
env step, 5,000 steps before learning, epsilon 1.0 to 0.1 over the first 100k steps; on the
flattened grid with a 2 x 256 MLP (as qfleet's and the RLlib peer's) instead of its 16-filter CNN, and
Adam (SB3's optimiser) instead of RMSProp."""

SAC_ZOO: dict[str, dict] = {
    # hyperparams/sac.yml, Pendulum-v1 (zoo n_timesteps 20000); the rest SB3's SAC defaults.
    "Pendulum-v1": {"learning_rate": 1e-3},
    # hyperparams/sac.yml, Hopper-v4 / HalfCheetah-v4 (&mujoco-defaults: n_timesteps 1e6); the zoo has no
    # v5 entries, the v4 ones are used for v5 (same robots, v5 fixes bugs of v4).
    "Hopper-v5": {"learning_starts": 10_000},
    "HalfCheetah-v5": {"learning_starts": 10_000},
}
"""SAC entries of the zoo (`policy: MlpPolicy`)."""


def hyperparameters(env_id: str, env_steps: int) -> tuple[str, dict, str]:
    """SB3's algorithm, its keyword arguments and where they come from, for `env_id`.

    Raises:
        KeyError: the zoo has no entry for `env_id` and no stand-in is defined here.
    """
    if env_id in DQN_ZOO:
        return "DQN", dict(DQN_ZOO[env_id]), f"{ZOO} hyperparams/dqn.yml {env_id}"
    if env_id.startswith("MinAtar/"):
        fraction = min(1.0, 100_000 / env_steps)  # epsilon reaches 0.1 after 100k env steps
        kwargs = dict(MINATAR_DQN, exploration_fraction=fraction)
        return "DQN", kwargs, "MinAtar paper's reference DQN (the zoo has no MinAtar entry)"
    if env_id in SAC_ZOO:
        return "SAC", dict(SAC_ZOO[env_id]), f"{ZOO} hyperparams/sac.yml {env_id.replace('-v5', '-v4')}"
    raise KeyError(f"no zoo hyper-parameters for {env_id}")


def make_env(env_id: str):
    """The env as the suite's other systems see it: MinAtar's bool grid flattened to float32 (SB3's
    MlpPolicy, as qfleet's MLP), under a Monitor (true episode returns)."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.monitor import Monitor

    if env_id.startswith("MinAtar/"):
        import minatar.gym

        if env_id not in gym.registry:
            minatar.gym.register_envs()
        env = gym.wrappers.DtypeObservation(gym.wrappers.FlattenObservation(gym.make(env_id)), np.float32)
    else:
        env = gym.make(env_id)
    return Monitor(env)


def run(request: dict) -> None:
    """Trains for `env_steps`, printing each evaluation as one JSON line."""
    import stable_baselines3
    import torch
    from stable_baselines3 import DQN, SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    env_id, env_steps, seed = request["env_id"], int(request["env_steps"]), int(request["seed"])
    eval_every, eval_episodes = int(request["eval_every"]), int(request["eval_episodes"])
    algo, kwargs, source = hyperparameters(env_id, env_steps)
    print(
        json.dumps(
            {"ready": True, "stable_baselines3": stable_baselines3.__version__, "algo": algo}
            | {"hyperparameters": kwargs, "source": source}
        ),
        flush=True,
    )
    eval_env = make_env(env_id)
    eval_env.reset(seed=seed + 10_000)

    def evaluate(model, steps: int) -> None:
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
        line = {"env_steps": steps, "wall_s": round(time.perf_counter() - STARTED, 2), "mean_return": float(mean)}
        print(json.dumps(line), flush=True)

    class Evaluations(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval, self.last_eval = eval_every, -1

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval or self.num_timesteps >= env_steps:
                evaluate(self.model, self.num_timesteps)
                self.last_eval = self.num_timesteps
                while self.next_eval <= self.num_timesteps:
                    self.next_eval += eval_every
            return self.num_timesteps < env_steps  # False: learn() stops here, at the budget

    cls = DQN if algo == "DQN" else SAC
    model = cls("MlpPolicy", make_env(env_id), seed=seed, device="cpu", verbose=0, **kwargs)
    callback = Evaluations()
    model.learn(total_timesteps=env_steps, callback=callback)
    if callback.last_eval != model.num_timesteps:
        evaluate(model, model.num_timesteps)
    print(json.dumps({"done": True, "wall_s": round(time.perf_counter() - STARTED, 2)}), flush=True)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread
    request = json.loads(sys.argv[1])
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": f"stable-baselines3 does not import in {sys.executable}"}), flush=True)
        return
    needs = env_package(request["env_id"])
    if needs is not None:
        try:
            __import__(needs)
        except ImportError as exc:
            print(json.dumps({"skipped": f"{needs} does not import in {sys.executable} ({exc})"}), flush=True)
            return
    run(request)


def env_package(env_id: str) -> str | None:
    """The package an env needs beyond gymnasium (a skip, not a crash, where it is missing)."""
    if env_id.startswith("MinAtar/"):
        return "minatar"
    if env_id.split("-")[0] in ("Hopper", "HalfCheetah", "Walker2d", "Ant", "Humanoid", "Swimmer", "Reacher"):
        return "mujoco"
    return None


if __name__ == "__main__":
    main()
