"""`qfleet bench critic`: how well Digi-Q's critics rank UI actions on episodes they never trained on.

Best-of-N imitates the candidate its critic scores highest, so it is only as good as the critic's
ranking of actions (docs/digiq.md). This bench measures that ranking cheaply, without browsers or
evaluation episodes: it splits a recorded features dataset by whole episodes (`holdout_fraction`
of them, drawn with `seed`, are held out), trains configs/miniwob_digiq.yaml's IQL learner with each
`learner.critic` asked for on the rest (`updates` updates on uniform batches, as the digiq bench's
offline cells), and reports `critic_ranking` (system/bench/digiq.py: the rewarded action's top-1
share and mean rank among every action, the advantage AUC, mean max-Q and V) on the held-out
episodes and on the training ones. IQL's critics learn from the data's actions only (Q towards
r + discount * V_target(s'), V towards Q_target at the data action), so what pi and N do does not
change them: one learner per critic is enough.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import TYPE_CHECKING

from system.bench.results import write_results
from system.config import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from system.config import RunConfig


def split_episodes(lengths: np.ndarray, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of a dataset whose episode e holds rows starts[e] : starts[e] +
    lengths[e] (one row per step, in dataset order, as `nstep_transitions` gives them): a share
    `holdout_fraction` of the episodes (at least one, at most all but one), drawn with `seed`, is held out.

    Raises:
        ConfigError: fewer than two episodes, or a fraction outside (0, 1).
    """
    import numpy as np

    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"--holdout-fraction {holdout_fraction}: must be in (0, 1)")
    episodes = len(lengths)
    if episodes < 2:
        raise ConfigError(f"the dataset has {episodes} episode(s): holding some out needs at least 2")
    held = min(max(1, round(holdout_fraction * episodes)), episodes - 1)
    chosen = np.zeros(episodes, bool)
    chosen[np.random.default_rng(seed).choice(episodes, held, replace=False)] = True
    held_out_step = np.repeat(chosen, lengths)
    return np.flatnonzero(~held_out_step), np.flatnonzero(held_out_step)


def critic_configs(config_path: str, overrides: list[str], critics: list[str], seed: int) -> dict[str, RunConfig]:
    """Each critic's config (CONFIG with `learner.critic` and `train.seed` set), checked against the
    env's action space before anything trains: a critic that cannot run (a name that is no critic,
    "spatial" without a screen grid) is refused at once, not after the critics before it trained.

    Raises:
        ConfigError: a loss other than IQL, a bad critic name, or a critic the env cannot feed.
    """
    from system.config import check_learner_for_env, env_spaces, load_config
    from system.train.plan import seeded

    configs = {
        critic: seeded(load_config(config_path, [*overrides, f"learner.critic={critic}", f"train.seed={seed}"]))
        for critic in critics
    }
    spaces = env_spaces(next(iter(configs.values())).env)  # the overrides of learner.critic leave the env alone
    for config in configs.values():
        if config.learner.loss != "iql":
            raise ConfigError(f"learner.loss={config.learner.loss!r}: the critic bench trains IQL's critics (loss iql)")
        check_learner_for_env(config.learner, spaces.action_space, config.env.id)
    return configs


def run_critic_bench(
    config_path: str,
    overrides: list[str],
    dataset: str,
    datasets_dir: str,
    critics: list[str],
    updates: int,
    holdout_fraction: float,
    seed: int,
    out: str | None,
) -> int:
    """Trains one IQL learner per critic on the training episodes and prints (and writes to `out`,
    after each critic, so a later failure keeps the earlier results) each critic's ranking on the
    held-out and training episodes. Returns 0.

    Raises:
        ConfigError: a critic that cannot run (`critic_configs`), before any training.
    """

    from system.bench.digiq import critic_sanity, load_dataset
    from system.bench.offline import train_agent
    from system.config import env_spaces
    from system.datasets import DatasetSource, load_episodes

    configs = critic_configs(config_path, overrides, critics, seed)
    base = configs[critics[0]]
    spaces = env_spaces(base.env)
    lengths = load_episodes(DatasetSource(dataset, datasets_dir), spaces.spec, spaces.action_space).lengths
    loaded = load_dataset(base, dataset, pathlib.Path(datasets_dir))
    train_rows, held_rows = split_episodes(lengths, holdout_fraction, seed)
    train = {name: column[train_rows] for name, column in loaded.items()}
    held = {name: column[held_rows] for name, column in loaded.items()}
    results: dict = {
        "config": config_path,
        "overrides": overrides,
        "dataset": dataset,
        "episodes": int(len(lengths)),
        "holdout_fraction": holdout_fraction,
        "training_steps": int(len(train_rows)),
        "held_out_steps": int(len(held_rows)),
        "held_out_rewarded_steps": int((held["reward"] > 0).sum()),
        "updates": updates,
        "seed": seed,
        "critics": {},
    }
    for critic, config in configs.items():
        started = time.perf_counter()
        agent, seconds = train_agent(config, train, updates, seed)
        results["critics"][critic] = {
            "held_out": critic_sanity(agent.critic, held),
            "training": critic_sanity(agent.critic, train),
            "updates_per_s": round(updates / seconds, 2),
        }
        print(f"[critic] {critic}: {json.dumps(results['critics'][critic])} ({time.perf_counter() - started:.0f} s)")
        if out:
            write_results(out, results)
    print(table(results))
    return 0


def table(results: dict) -> str:
    """A Markdown table of the critics' rankings, held-out and training episodes."""
    lines = [
        "| critic | episodes | rewarded top-1 | rewarded mean rank | advantage AUC | mean max-Q | mean V |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for critic, record in results["critics"].items():
        for split in ("held_out", "training"):
            r = record[split]
            lines.append(
                f"| {critic} | {split.replace('_', '-')} | {r['rewarded_action_top1']} | "
                f"{r['rewarded_action_mean_rank']} | {r['advantage_auc']} | {r['q_max_mean']} | {r['v_mean']} |"
            )
    return "\n".join(lines)
