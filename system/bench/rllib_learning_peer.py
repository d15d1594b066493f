"""RLlib's DQN or SAC (new API stack) with RLlib's own tuned examples, one run of `qfleet bench learning`.

RLlib pins what qfleet need not (gymnasium 1.2.2): this script runs in a venv of its own
(requirements-bench-rllib.txt) and imports nothing of qfleet but its sibling script rllib_peer.py
(the env registration and Ray start-up of `qfleet bench e2e`'s RLlib peer). The suite reads its
stdout, one JSON object a line (no pickle): {"ready": ...} with the config used, one
{"env_steps", "wall_s", "mean_return"} per evaluation as it happens, then {"done": ...}; or only
{"skipped": why} when `ray.rllib` does not import.

    /work/peers-rllib/bin/python system/bench/rllib_learning_peer.py \
        '{"env_id": "CartPole-v1", "env_steps": 50000, "seed": 0, "eval_every": 2500, "eval_episodes": 10}'

Configs (ray 2.60's rllib/tuned_examples): discrete actions take dqn/cartpole_dqn.py (RLlib has no
tuned new-stack DQN for Acrobot or MinAtar; MinAtar's grid is flattened, so the same MLP applies);
Pendulum takes sac/pendulum_sac.py, MuJoCo tasks sac/halfcheetah_sac.py (RLlib's MuJoCo SAC). Set
as there except: one env runner process (the local one; the machine has 2 cores), one torch thread,
and iterations of gcd(eval_every, env_steps, 1000) sampled env steps (500 for CartPole's 2,500 and
50k: a divisor of both, so evaluations fall on the schedule and the run ends at the budget). The
examples' initialisers are given by name ("xavier_uniform_" for `nn.init.xavier_uniform_`,
"orthogonal_" with {"gain": 0.01}, "zeros_"): RLlib's DefaultModelConfig takes a name or a callable
and resolves names in `torch.nn.init`, and names keep the settings JSON. Evaluation: RLlib's own
`Algorithm.evaluate()` with `explore=False` (greedy) for `eval_episodes` episodes, once the sampled
env steps reach each multiple of `eval_every`, and at the end; `wall_s` counts from this process's
start and includes evaluations.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

STARTED = time.perf_counter()

CARTPOLE_DQN = {
    "lr": 0.0005,
    "train_batch_size_per_learner": 32,
    "replay_buffer_config": {"type": "PrioritizedEpisodeReplayBuffer", "capacity": 50000, "alpha": 0.6, "beta": 0.4},
    "n_step": [2, 5],
    "double_q": True,
    "dueling": True,
    "epsilon": [[0, 1.0], [10000, 0.02]],
}
"""rllib/tuned_examples/dqn/cartpole_dqn.py's .training(); its model: one 256 tanh layer + a 256 head."""
CARTPOLE_DQN_MODEL = {
    "fcnet_hiddens": [256],
    "fcnet_activation": "tanh",
    "fcnet_bias_initializer": "zeros_",
    "head_fcnet_bias_initializer": "zeros_",
    "head_fcnet_hiddens": [256],
}

PENDULUM_SAC = {
    "initial_alpha": 1.001,
    "actor_lr": 2e-4,
    "critic_lr": 8e-4,
    "alpha_lr": 9e-4,
    "lr": None,
    "target_entropy": "auto",
    "n_step": [2, 5],
    "tau": 0.005,
    "train_batch_size_per_learner": 256,
    "target_network_update_freq": 1,
    "replay_buffer_config": {"type": "PrioritizedEpisodeReplayBuffer", "capacity": 100000, "alpha": 1.0, "beta": 0.0},
    "num_steps_sampled_before_learning_starts": 256,
}
"""rllib/tuned_examples/sac/pendulum_sac.py's .training()."""

MUJOCO_SAC = {
    "initial_alpha": 1.001,
    "lr": 0.0003,
    "target_entropy": "auto",
    "n_step": 1,
    "tau": 0.005,
    "train_batch_size_per_learner": 256,
    "target_network_update_freq": 1,
    "replay_buffer_config": {"type": "PrioritizedEpisodeReplayBuffer", "capacity": 100000, "alpha": 0.6, "beta": 0.4},
    "num_steps_sampled_before_learning_starts": 10000,
}
"""rllib/tuned_examples/sac/halfcheetah_sac.py's .training()."""
SAC_MODEL = {
    "fcnet_hiddens": [256, 256],
    "fcnet_activation": "relu",
    "fcnet_kernel_initializer": "xavier_uniform_",
    "head_fcnet_hiddens": [],
    "head_fcnet_activation": None,
    "head_fcnet_kernel_initializer": "orthogonal_",
    "head_fcnet_kernel_initializer_kwargs": {"gain": 0.01},
}
"""pendulum_sac.py's model (halfcheetah_sac.py sets the same in the old stack's key names)."""


def iteration_steps(eval_every: int, env_steps: int) -> int:
    """Env steps sampled per training iteration: a divisor of the schedule and the budget (at most
    1,000), so evaluations fall on multiples of `eval_every` and the run stops at `env_steps`."""
    return math.gcd(eval_every, env_steps, 1000)


def settings(env_id: str, discrete: bool) -> tuple[str, dict, dict, str]:
    """The algorithm, its .training() settings, its model and the tuned example they come from."""
    if discrete:
        return "DQN", CARTPOLE_DQN, CARTPOLE_DQN_MODEL, "rllib/tuned_examples/dqn/cartpole_dqn.py"
    if env_id.startswith("Pendulum"):
        return "SAC", PENDULUM_SAC, SAC_MODEL, "rllib/tuned_examples/sac/pendulum_sac.py"
    return "SAC", MUJOCO_SAC, SAC_MODEL, "rllib/tuned_examples/sac/halfcheetah_sac.py"


def _tuples(training: dict) -> dict:
    """JSON lists back to the tuples RLlib expects (n_step ranges, epsilon schedules)."""
    out = dict(training)
    if isinstance(out.get("n_step"), list):
        out["n_step"] = tuple(out["n_step"])
    if "epsilon" in out:
        out["epsilon"] = [tuple(point) for point in out["epsilon"]]
    return out


def run(request: dict) -> None:
    """Trains for `env_steps`, printing each evaluation as one JSON line."""
    import gymnasium as gym
    import ray
    import torch
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rllib_peer import _register_env, _start_ray

    torch.set_num_threads(1)
    env_id, env_steps, seed = request["env_id"], int(request["env_steps"]), int(request["seed"])
    eval_every, eval_episodes = int(request["eval_every"]), int(request["eval_episodes"])
    if env_id.startswith("MinAtar/"):
        import minatar.gym

        minatar.gym.register_envs()
    discrete = isinstance(gym.make(env_id).action_space, gym.spaces.Discrete)
    algo_name, training, model, source = settings(env_id, discrete)
    print(
        json.dumps(
            {"ready": True, "ray": ray.__version__, "algo": algo_name, "training": training, "model": model}
            | {"source": f"ray {ray.__version__} {source}", "iteration_steps": iteration_steps(eval_every, env_steps)}
        ),
        flush=True,
    )
    _start_ray(ray)
    config = (
        (DQNConfig() if algo_name == "DQN" else SACConfig())
        .environment(_register_env(env_id, None))
        .framework("torch")
        .debugging(seed=seed)
        .env_runners(num_env_runners=0)
        .training(**_tuples(training))
        .rl_module(model_config=DefaultModelConfig(**model))
        .reporting(
            min_sample_timesteps_per_iteration=iteration_steps(eval_every, env_steps), min_time_s_per_iteration=0
        )
        .evaluation(
            evaluation_num_env_runners=0,
            evaluation_duration=eval_episodes,
            evaluation_duration_unit="episodes",
            evaluation_config={"explore": False},
        )
    )
    algo = config.build_algo()

    def evaluate(steps: int) -> None:
        result = algo.evaluate()
        mean = result["env_runners"]["episode_return_mean"]
        line = {"env_steps": steps, "wall_s": round(time.perf_counter() - STARTED, 2), "mean_return": float(mean)}
        print(json.dumps(line), flush=True)

    sampled, next_eval, last_eval = 0, eval_every, -1
    while sampled < env_steps:
        result = algo.train()
        sampled = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
        if sampled >= next_eval:
            evaluate(sampled)
            last_eval = sampled
            while next_eval <= sampled:
                next_eval += eval_every
    if last_eval != sampled:
        evaluate(sampled)
    algo.stop()
    ray.shutdown()
    print(json.dumps({"done": True, "wall_s": round(time.perf_counter() - STARTED, 2)}), flush=True)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread
    request = json.loads(sys.argv[1])
    try:
        import ray.rllib  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": f"RLlib (ray.rllib) does not import in {sys.executable}"}), flush=True)
        return
    run(request)


if __name__ == "__main__":
    main()
