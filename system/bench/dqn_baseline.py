"""A CleanRL-style single-process DQN, with the hyper-parameters CleanRL publishes for `dqn.py` on
CartPole-v1 (see `train`): the baseline `system/bench/learning.py` runs beside qfleet; and `throughput`, the same loop at a
given UTD, network and batch for a fixed budget, beside qfleet in `qfleet bench e2e`.

    python -m system.bench.dqn_baseline --seed 0 --eval-every 10000 --threshold 475
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, num_actions: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_actions)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    return max(end, start + (end - start) * t / duration)


@torch.inference_mode()
def evaluate(q: QNetwork, env_id: str, episodes: int, seed: int) -> list[float]:
    envs = [gym.make(env_id) for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    returns = [0.0] * episodes
    running = list(range(episodes))
    while running:
        actions = q(torch.as_tensor(np.stack([obs[i] for i in running]), dtype=torch.float32)).argmax(1).numpy()
        still = []
        for i, action in zip(running, actions, strict=True):
            obs[i], reward, terminated, truncated, _ = envs[i].step(int(action))
            returns[i] += float(reward)
            if not (terminated or truncated):
                still.append(i)
        running = still
    for env in envs:
        env.close()
    return returns


def train(
    seed: int,
    env_id: str = "CartPole-v1",
    total_steps: int = 500_000,
    eval_every: int = 10_000,
    eval_episodes: int = 10,
    threshold: float | None = None,
    lr: float = 2.5e-4,
    buffer_size: int = 10_000,
    batch_size: int = 128,
    gamma: float = 0.99,
    target_every: int = 500,
    learning_starts: int = 10_000,
    train_every: int = 10,
    exploration_fraction: float = 0.5,
) -> dict:
    """Trains; returns the evaluation curve and when `threshold` was first reached.

    The defaults are CleanRL's (docs.cleanrl.dev, "dqn.py"): Adam, one env, MSE on the one-step
    (non-double) target, a 120-84 ReLU MLP, epsilon 1 -> 0.05 over `exploration_fraction`. Greedy
    evaluations (`eval_episodes`) every `eval_every` steps are not counted in the wall time.
    """
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    env = gym.make(env_id)
    obs_dim, num_actions = env.observation_space.shape[0], int(env.action_space.n)
    q, target = QNetwork(obs_dim, num_actions), QNetwork(obs_dim, num_actions)
    target.load_state_dict(q.state_dict())
    optimizer = torch.optim.Adam(q.parameters(), lr=lr)
    buf_obs = np.zeros((buffer_size, obs_dim), np.float32)
    buf_next = np.zeros((buffer_size, obs_dim), np.float32)
    buf_act = np.zeros(buffer_size, np.int64)
    buf_rew = np.zeros(buffer_size, np.float32)
    buf_done = np.zeros(buffer_size, np.float32)
    size = pos = 0
    obs, _ = env.reset(seed=seed)
    evals, train_seconds, reached = [], 0.0, None
    started = time.perf_counter()
    for step in range(1, total_steps + 1):
        epsilon = linear_schedule(1.0, 0.05, int(exploration_fraction * total_steps), step)
        if rng.random() < epsilon:
            action = int(rng.integers(num_actions))
        else:
            with torch.inference_mode():
                action = int(q(torch.as_tensor(obs[None], dtype=torch.float32)).argmax(1)[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buf_obs[pos], buf_next[pos] = obs, next_obs
        buf_act[pos], buf_rew[pos], buf_done[pos] = action, reward, float(terminated)
        pos, size = (pos + 1) % buffer_size, min(size + 1, buffer_size)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step > learning_starts and step % train_every == 0:
            idx = rng.integers(0, size, batch_size)
            o, n = torch.from_numpy(buf_obs[idx]), torch.from_numpy(buf_next[idx])
            a, r, d = torch.from_numpy(buf_act[idx]), torch.from_numpy(buf_rew[idx]), torch.from_numpy(buf_done[idx])
            with torch.no_grad():
                td_target = r + gamma * target(n).max(1).values * (1.0 - d)
            value = q(o).gather(1, a[:, None]).squeeze(1)
            loss = F.mse_loss(td_target, value)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step % target_every == 0:
            target.load_state_dict(q.state_dict())
        if step % eval_every == 0:
            train_seconds += time.perf_counter() - started
            returns = evaluate(q, env_id, eval_episodes, seed=10_000 + step)
            mean = float(np.mean(returns))
            evals.append({"env_steps": step, "wall_s": round(train_seconds, 2), "mean_return": mean})
            if threshold is not None and reached is None and mean >= threshold:
                reached = {"env_steps": step, "wall_s": round(train_seconds, 2)}
            started = time.perf_counter()
    train_seconds += time.perf_counter() - started
    return {"seed": seed, "evals": evals, "reached": reached, "train_seconds": round(train_seconds, 2)}


def double_dqn_update(
    q: nn.Module,
    target: nn.Module,
    optimizer: torch.optim.Optimizer,
    obs: torch.Tensor,
    next_obs: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
) -> None:
    """The loop's update in `throughput` (and what `qfleet bench update-cost` times as the loop's):
    a double-DQN 1-step target, gamma 0.99, Huber loss, one optimizer step."""
    with torch.no_grad():
        best = q(next_obs).argmax(1, keepdim=True)
        td_target = reward + 0.99 * target(next_obs).gather(1, best).squeeze(1) * (1.0 - done)
    value = q(obs).gather(1, action[:, None]).squeeze(1)
    loss = F.smooth_l1_loss(value, td_target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def throughput(
    env_id: str,
    updates_per_env_step: float,
    hidden_size: int = 256,
    num_layers: int = 2,
    batch_size: int = 128,
    learning_starts: int = 1000,
    seconds: float = 20.0,
    env_steps: int | None = None,
    max_episode_steps: int | None = None,
    buffer_size: int = 100_000,
    seed: int = 0,
) -> dict:
    """The same loop at a given UTD, network and batch, for `seconds` of training (from the first
    update) or until `env_steps`; returns env steps/s and updates/s over that window.

    What `qfleet bench e2e` runs beside qfleet: one env, a uniform replay of numpy arrays, an MLP
    of `num_layers` x `hidden_size` ReLU layers (qfleet's MLP torso + linear head, no LayerNorm),
    double-DQN Huber targets, Adam with the kernel qfleet's learner uses (`learner.adam`: fused,
    the optimizer step ~2.8x cheaper than torch's default for-loop kernel here), so that the
    comparison measures the system around the update, not the optimizer's kernel;
    `updates_per_env_step` updates per env step on average (a credit of that much per step, one
    update per whole unit). The env comes from qfleet's `make_env`, so MinAtar ids work. One torch
    thread, as `train`.
    """
    from actors import EnvConfig, make_env
    from learner import adam

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    env = make_env(EnvConfig(id=env_id, num_envs=1, max_episode_steps=max_episode_steps))
    obs_shape, num_actions = env.observation_space.shape, int(env.action_space.n)
    obs_dim = int(np.prod(obs_shape))

    def network() -> nn.Module:
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(obs_dim if i == 0 else hidden_size, hidden_size), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(hidden_size, num_actions))

    q, target = network(), network()
    target.load_state_dict(q.state_dict())
    optimizer = adam(q.parameters(), 2.5e-4)
    buf_obs = np.zeros((buffer_size, obs_dim), np.float32)
    buf_next = np.zeros((buffer_size, obs_dim), np.float32)
    buf_act = np.zeros(buffer_size, np.int64)
    buf_rew = np.zeros(buffer_size, np.float32)
    buf_done = np.zeros(buffer_size, np.float32)
    size = pos = updates = step = 0
    credit = 0.0
    obs = np.asarray(env.reset(seed=seed)[0], np.float32).reshape(-1)
    window_start: tuple[float, int, int] | None = None  # (time, env steps, updates) at the first update
    while True:
        step += 1
        if rng.random() < 0.1:
            action = int(rng.integers(num_actions))
        else:
            with torch.inference_mode():
                action = int(q(torch.from_numpy(obs[None])).argmax(1)[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        next_obs = np.asarray(next_obs, np.float32).reshape(-1)
        buf_obs[pos], buf_next[pos] = obs, next_obs
        buf_act[pos], buf_rew[pos], buf_done[pos] = action, reward, float(terminated)
        pos, size = (pos + 1) % buffer_size, min(size + 1, buffer_size)
        obs = next_obs
        if terminated or truncated:
            obs = np.asarray(env.reset()[0], np.float32).reshape(-1)
        if size < learning_starts:
            continue
        if window_start is None:
            window_start = (time.perf_counter(), step - 1, updates)
        credit += updates_per_env_step
        while credit >= 1.0:
            credit -= 1.0
            idx = rng.integers(0, size, batch_size)
            o, n = torch.from_numpy(buf_obs[idx]), torch.from_numpy(buf_next[idx])
            a, r, d = torch.from_numpy(buf_act[idx]), torch.from_numpy(buf_rew[idx]), torch.from_numpy(buf_done[idx])
            double_dqn_update(q, target, optimizer, o, n, a, r, d)
            updates += 1
            if updates % 250 == 0:
                target.load_state_dict(q.state_dict())
        elapsed = time.perf_counter() - window_start[0]
        if (env_steps is not None and step >= env_steps) or (env_steps is None and elapsed >= seconds):
            break
    env.close()
    steps, made = step - window_start[1], updates - window_start[2]
    return {
        "env_steps": step,
        "updates": updates,
        "window_s": round(elapsed, 2),
        "env_steps_per_s": round(steps / elapsed, 1),
        "updates_per_s": round(made / elapsed, 1),
        "achieved_utd": round(made / max(steps, 1), 4),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--total-steps", type=int, default=500_000)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--threshold", type=float, default=475.0)
    args = parser.parse_args()
    result = train(args.seed, args.env, args.total_steps, args.eval_every, threshold=args.threshold)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
