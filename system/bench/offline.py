"""`qfleet bench offline`: offline learners side by side on one dataset (issue 20's table).

By default records a CartPole dataset of medium quality (each episode played by a pole-balancing
controller that takes a uniformly random action with a probability drawn per episode from
`EPSILONS`: a wide spread of returns whose mean sits well between random, ~22, and the 500 cap).
On any env, `--policy RUN_DIR` records one with `qfleet record`'s own path (the run's newest
checkpoint with epsilon-greedy exploration, a fixed epsilon or one drawn per episode), and
`--config` gives the learners' env, network and learner settings (an offline learner's config, e.g.
configs/minatar_breakout_iql.yaml; a DQN's is refused: its target settings are not IQL's);
or it takes an existing dataset (--dataset). It loads the dataset as `qfleet train` does (n-step transitions with `episode_return`), then
trains each learner in-process on uniform batches of it for U updates and evaluates it greedily
(the evaluator of `qfleet train`): IQL + AWR, IQL + Best-of-N (N in 1, 4, 16), filtered BC (top
10%), each over every seed. Prints a Markdown table; no Redis, Ray or shards (the learners' math
is what is compared; `qfleet train` with train.total_env_steps=0 runs the same offline-only
training through the whole system).
"""

from __future__ import annotations

import pathlib
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from system.bench.offline_online import Budget, run_offline_online_bench
from system.bench.results import write_results
from system.config import ConfigError
from system.datasets import RecordSettings

CONFIG = "configs/cartpole_offline_online.yaml"
"""The offline learners' settings by default (IQL's expectile, AWR temperature, network, lr, gamma,
n-step); `--config` gives another env's."""

RECORDED_ID = "bench/medium-v0"
"""The id a `--policy` recording gets when --dataset names none."""

EPSILONS = (0.5, 0.6, 0.7, 0.8)
"""Per-episode probabilities of a random action in the recorded dataset."""

BEST_OF_N = (1, 4, 16)
"""The Best-of-N learners' N by default (Digi-Q's study)."""

FILTERED_BC = "filtered BC (top 10%)"

OFFLINE_LOSSES = ("iql", "filtered_bc")
"""The losses a table `--config` may name: its learner settings are then the offline learners' own
(a DQN's hard target copies every 250 updates collapsed Best-of-N on MinAtar, issue 20)."""


def check_policy_env(policy: str, base, config: str) -> None:
    """Refuses a `--policy` run whose env (id, observation shape, action space) is not `--config`'s,
    before anything is recorded (the learners would not read the dataset)."""
    from system.config import env_spaces
    from system.train import RunDir

    played = RunDir(pathlib.Path(policy)).load_config([])
    if played.env.id != base.env.id:
        raise ConfigError(f"--policy {policy} plays {played.env.id}, --config {config} {base.env.id}: give one env")
    mine, theirs = env_spaces(base.env), env_spaces(played.env)
    if (mine.obs_shape, mine.action_space) != (theirs.obs_shape, theirs.action_space):
        raise ConfigError(
            f"--policy {policy} and --config {config} play {base.env.id} with other spaces "
            f"(observations {theirs.obs_shape} vs {mine.obs_shape}, actions {theirs.action_space} vs "
            f"{mine.action_space}): give the run's env settings"
        )


def learners(best_of_n: tuple[int, ...] = BEST_OF_N) -> dict[str, dict[str, object]]:
    """Each learner's settings over the bench's config: IQL + AWR, IQL + Best-of-N for each N of
    `best_of_n`, filtered BC (top 10%)."""
    table: dict[str, dict[str, object]] = {"IQL + AWR": {"learner.loss": "iql", "learner.policy_extraction": "awr"}}
    for n in best_of_n:
        table[f"IQL + Best-of-N (N={n})"] = {
            "learner.loss": "iql",
            "learner.policy_extraction": "best_of_n",
            "learner.best_of_n": n,
        }
    table[FILTERED_BC] = {"learner.loss": "filtered_bc", "learner.top_k_percent": 10}
    return table


LEARNERS = learners()
"""The default learners."""


def controller_action(obs: np.ndarray) -> int:
    """A pole-balancing rule (push towards where the pole falls): about 500 per episode alone."""
    return int(obs[2] + 0.5 * obs[3] + 0.05 * obs[1] > 0)


def record_medium_dataset(root: str, dataset_id: str, episodes: int, seed: int) -> list[float]:
    """Writes `episodes` CartPole episodes of the epsilon-mixed controller; returns their returns."""
    import gymnasium as gym

    from system.datasets import DatasetWriter, Episode

    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(
        pathlib.Path(root) / dataset_id / "data",
        dataset_id,
        env.observation_space,
        env.action_space,
        gym.spec("CartPole-v1"),
    )
    returns = []
    for e in range(episodes):
        epsilon = float(EPSILONS[e % len(EPSILONS)])
        obs, _ = env.reset(seed=seed * 100_000 + e)
        observations, actions, rewards = [obs], [], []
        terminated = truncated = False
        while not (terminated or truncated):
            action = int(rng.integers(2)) if rng.random() < epsilon else controller_action(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
        ends = np.zeros(len(rewards), bool)
        terms, truncs = ends.copy(), ends.copy()
        (terms if terminated else truncs)[-1] = True
        writer.add(
            Episode(
                np.asarray(observations, np.float32),
                np.asarray(actions, np.int64),
                np.asarray(rewards),
                terms,
                truncs,
                metadata={"epsilon": epsilon, "return": sum(rewards)},
            )
        )
        returns.append(sum(rewards))
    writer.close()
    env.close()
    return returns


@dataclass(frozen=True)
class Outcome:
    learner: str
    seed: int
    mean_return: float
    std_return: float
    seconds: float


def train_agent(config, loaded: dict[str, np.ndarray], updates: int, seed: int, progress=None):
    """A fresh agent of `config.learner` after `updates` updates on uniform batches of `loaded`.

    Args:
        progress: called as progress(update, seconds) every `PROGRESS_EVERY` updates (long runs).

    Returns:
        (the agent, the seconds its updates took).
    """
    import torch

    from learner import make_agent
    from system.config import env_spaces

    spaces = env_spaces(config.env)
    agent = make_agent(config.learner, spaces.obs_shape, spaces.action_space, torch.device("cpu"))
    rng = np.random.default_rng(seed)
    size = len(loaded["reward"])
    batch_size = config.learner.batch_size
    weights = torch.ones(batch_size)
    started = time.perf_counter()
    for update in range(1, updates + 1):
        rows = rng.integers(0, size, batch_size)
        batch = {name: torch.from_numpy(column[rows]) for name, column in loaded.items()}
        agent.update(batch, weights)
        agent.after_update(update)
        if progress is not None and update % PROGRESS_EVERY == 0:
            progress(update, time.perf_counter() - started)
    return agent, time.perf_counter() - started


PROGRESS_EVERY = 500
"""Updates between `train_agent`'s progress calls."""


def train_offline(config, loaded: dict[str, np.ndarray], updates: int, eval_episodes: int, seed: int) -> Outcome:
    """`updates` updates of `config.learner` on uniform batches of `loaded`, then a greedy evaluation
    (pi's most likely action, whatever `learner.policy_acting` says; no epsilon)."""
    from system.train.evaluate import Evaluator

    agent, seconds = train_agent(config, loaded, updates, seed)
    evaluator = Evaluator(config.env, config.learner, eval_episodes, epsilon=0.0, seed=10_000 + seed, acting="greedy")
    try:
        result = evaluator.run(agent.policy_state(), updates)
    finally:
        evaluator.close()
    return Outcome("", seed, result.mean, result.std, seconds)


def run_offline_bench(
    dataset: str | None,
    datasets_dir: str | None,
    episodes: int,
    updates: int,
    seeds: list[int],
    eval_episodes: int,
    output: str | None,
    online: Budget | None = None,
    out_dir: str = "runs/bench-offline-online",
    config: str = CONFIG,
    policy: str | None = None,
    record: RecordSettings | None = None,
    best_of_n: tuple[int, ...] = BEST_OF_N,
) -> int:
    """Records (or takes) the dataset, trains every learner on every seed, prints the table.

    Args:
        config: the learners' settings (env, network, IQL's keys); `learners` override the loss.
        best_of_n: the Best-of-N learners' N (one learner each).
        policy, record: record the dataset from this `qfleet train` run's newest checkpoint with
            these settings (`qfleet record`'s path) as `dataset` (default `RECORDED_ID`) in
            `datasets_dir` (default: a temporary folder, deleted at the end).

    With `online` (`--online`): instead, for every seed, `qfleet train` offline -> online on the
    dataset vs from scratch, until an evaluation reaches `online.threshold` (system/bench/offline_online.py;
    run directories and logs under `out_dir`)."""
    import torch

    from system.config import load_config
    from system.datasets import DatasetSource, load_episodes, load_transitions, with_episode_return

    torch.set_num_threads(1)
    base = load_config(config, [])
    if online is None and base.learner.loss not in OFFLINE_LOSSES:
        raise ConfigError(
            f"--config {config}: its learner.loss is {base.learner.loss!r}, so its learner settings (target "
            "network, lr) were tuned for that loss, not for the offline learners; give an offline learner's "
            "config (learner.loss iql or filtered_bc), e.g. configs/minatar_breakout_iql.yaml"
        )
    if policy is not None:
        check_policy_env(policy, base, config)
    with tempfile.TemporaryDirectory(prefix="qfleet-bench-offline-") as scratch:
        if policy is not None:
            from system.datasets.run_record import main_record

            dataset, datasets_dir = dataset or RECORDED_ID, datasets_dir or scratch
            main_record(dataset, policy, None, [], record or RecordSettings(episodes=episodes), datasets_dir)
        elif dataset is None:
            if base.env.id != "CartPole-v1":
                raise ConfigError(
                    f"--config {config} plays {base.env.id}: give --policy RUN_DIR to record a dataset, or "
                    "--dataset (the built-in recording is CartPole's controller)"
                )
            dataset, datasets_dir = "cartpole/medium-v0", scratch
            started = time.perf_counter()
            record_medium_dataset(scratch, dataset, episodes, seed=0)
            print(f"[offline] recorded {dataset}: {episodes} episodes in {time.perf_counter() - started:.1f} s")
        from system.config import env_spaces

        spaces = env_spaces(base.env)
        source = DatasetSource(dataset, datasets_dir)
        returns = load_episodes(source, spaces.spec, spaces.action_space).returns()
        if online is not None:  # the runs read the dataset while the scratch folder lives
            dataset_mean = float(np.mean(returns))
            print(f"[offline] dataset {dataset}: {len(returns)} episodes, mean return {dataset_mean:.1f}", flush=True)
            folder = str(pathlib.Path(datasets_dir).resolve()) if datasets_dir else "null"
            return run_offline_online_bench(seeds, online, dataset, folder, dataset_mean, out_dir, output)
        loaded = load_transitions(
            source,
            with_episode_return(spaces.spec),
            spaces.action_space,
            n_step=base.actors.n_step,
            gamma=base.learner.gamma,
        ).transitions
    dataset_mean = float(np.mean(returns))
    print(
        f"[offline] dataset {dataset}: {len(returns)} episodes, {len(loaded['reward']):,} transitions, "
        f"mean return {dataset_mean:.1f} (min {min(returns):.0f}, max {max(returns):.0f})",
        flush=True,
    )
    outcomes: list[Outcome] = []
    summary = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "config": config,
        "dataset": dataset,
        "dataset_episodes": len(returns),
        "dataset_transitions": len(loaded["reward"]),
        "dataset_mean_return": dataset_mean,
        "updates": updates,
        "eval_episodes": eval_episodes,
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
    }
    from system.train.plan import seeded

    for seed in seeds:  # seed by seed: a run cut short still has whole tables of the seeds it did
        for name, settings in learners(best_of_n).items():
            overrides = [f"{key}={value}" for key, value in settings.items()] + [f"train.seed={seed}"]
            learner_config = seeded(load_config(config, overrides))
            outcome = train_offline(learner_config, loaded, updates, eval_episodes, seed)
            outcome = Outcome(name, seed, outcome.mean_return, outcome.std_return, outcome.seconds)
            print(
                f"[offline] {name}, seed {seed}: {outcome.mean_return:.1f} +- {outcome.std_return:.1f} "
                f"({updates:,} updates in {outcome.seconds:.0f} s)",
                flush=True,
            )
            outcomes.append(outcome)
            if output:  # after every learner, so an interrupted run keeps what it measured
                results = sorted(outcomes, key=lambda o: list(learners(best_of_n)).index(o.learner))
                summary["results"] = [vars(o) for o in results]
                write_results(output, summary)
    outcomes.sort(key=lambda o: list(learners(best_of_n)).index(o.learner))  # the table groups by learner
    print()
    print(table(dataset, dataset_mean, outcomes, updates, eval_episodes))
    return 0


def table(dataset: str, dataset_mean: float, outcomes: list[Outcome], updates: int, eval_episodes: int) -> str:
    """The Markdown table: every seed's greedy return, each learner's mean over seeds, vs the data."""
    lines = [
        f"Dataset `{dataset}`: mean return {dataset_mean:.1f}. Each learner: {updates:,} updates, then "
        f"{eval_episodes} greedy evaluation episodes per seed.",
        "",
        "| learner | seed | greedy return (mean +- std) | vs dataset mean |",
        "|---|---:|---:|---:|",
    ]
    means: dict[str, float] = {}
    for name in dict.fromkeys(o.learner for o in outcomes):
        mine = [o for o in outcomes if o.learner == name]
        for o in mine:
            lines.append(
                f"| {name} | {o.seed} | {o.mean_return:.1f} +- {o.std_return:.1f} | {_versus(o.mean_return, dataset_mean)} |"
            )
        means[name] = statistics.mean(o.mean_return for o in mine)
        if len(mine) > 1:
            spread = statistics.stdev(o.mean_return for o in mine)
            lines.append(
                f"| {name} | all | {means[name]:.1f} +- {spread:.1f} (over seeds) | {_versus(means[name], dataset_mean)} |"
            )
    best = max((n for n in means if n != FILTERED_BC), key=means.get, default=None)
    if best is not None and FILTERED_BC in means:
        beats = "beats" if means[best] > means[FILTERED_BC] else "does not beat"
        lines += [
            "",
            f"Best offline learner: {best} ({means[best]:.1f}), which {beats} filtered BC ({means[FILTERED_BC]:.1f}).",
        ]
    return "\n".join(lines)


def _versus(value: float, reference: float) -> str:
    return f"{100 * (value - reference) / reference:+.0f}%" if reference else "n/a"
