"""`qfleet bench digiq`: issue 21's MiniWoB benchmark, filtered BC vs Digi-Q offline (N = 1, 4, 16)
vs Digi-Q offline -> online, per task, from one recorded dataset of mixed quality.

Per task, with the product's own commands and functions (configs/miniwob_digiq.yaml's pipeline):

1. `qfleet record --behaviour instruction --follow-p P` of screenshots (`env.features.encoder=none`);
2. `qfleet encoder train` on them (phase 1; the encoder is frozen from here on);
3. `qfleet record` again with that encoder: the features dataset every learner trains on (datasets
   hold no instruction tokens, so a pixel dataset cannot be featurized after the fact: docs/digiq.md);
4. in this process, on uniform batches of the features dataset (`system.bench.offline.train_agent`):
   filtered BC (`learner.loss=filtered_bc`, the successful episodes) and Digi-Q offline (the config's
   IQL with Q(s, a) on action embeddings and the factored Best-of-N policy) for each N;
5. `qfleet train` of the config, offline (the same updates) then online for the env-step budget;
6. the learner's updates/s on the features dataset vs on the screenshots (`learner.network=cnn`, the
   encoder trained with the heads) at the config's batch size, one after the other in this process.

Every policy is evaluated greedily on `eval_episodes` fresh episodes, `browsers` at a time (one
Evaluator of that many browsers, run again until enough: episode i of round k is seeded
eval_seed + 1000 k + i); the success rate is the share of episodes solved (reward: success).

Results go to a JSON file as each cell finishes (written whole, then renamed over the old one), so
a stopped run keeps what it finished and a re-run with the same file and settings skips those cells;
datasets, encoders and run directories sit in a work folder beside it and are reused the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from system.bench.children import interrupt_on_sigterm, start_child, stop_child
from system.bench.results import write_results
from system.config import ConfigError

if TYPE_CHECKING:
    import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
"""The checkout: the commands run from here (configs/ paths are relative to it)."""

CONFIG = "configs/miniwob_digiq.yaml"
"""The recipe: env settings, Digi-Q's learner, the online phase's settings."""

TASKS = ("click-button", "click-link", "click-dialog", "click-tab", "focus-text", "enter-text")
"""The issue's six tasks, in its order (each has an instruction rule: docs/browser.md)."""

FILTERED_BC = "filtered BC"
ONLINE = "Digi-Q offline -> online"
ONLINE_OFFLINE = "the online run's offline phase"
"""A table column: the ONLINE cell's `offline_phase` result (the same run before it went online)."""
STEPS = ("pixels dataset", "encoder", "features dataset")
"""The preparation cells of a task, in order."""

SKIPPABLE = {"online": ONLINE, "updates/s": "updates/s"}
"""`--skip` names -> the cells they leave out."""

THROUGHPUT_ROUNDS = 3
"""Features and pixels segments of the updates/s cell, alternated; the ratio is the rounds' median."""

BENCH_VERSION = 2
"""Bumped when a change to this bench changes what a cell means: results of another version are
not resumed (2: standardised features, filtered BC on successful rows, online vs its own offline
phase, new evaluation seeds)."""

EVAL_SEED_BASE = 1_000_000
"""Evaluation seeds start here (+ 100000 per --seed): a recording's envs start at 10000 --seed + j."""

STOP_TIMEOUT_S = 300.0
"""How long a stopped child command may take to stop in order before its group is killed."""


BENCH_OWNED = (
    "learner.best_of_n",
    "learner.loss",
    "learner.critic",
    "learner.top_k_percent",
    "learner.network",
    "env.id",
    "env.num_envs",
    "env.features.",
    "train.seed",
    "train.total_env_steps",
    "offline.",
)
"""`--set` keys (a trailing dot: a whole section) the bench sets per cell; overriding one would make
a cell's label lie (an "N=1" cell trained with another N), so `--set` of them is refused."""

SECRET_WORDS = ("password", "token", "secret", "key_pem", "_key")
"""A `--set` key holding one of these has its value replaced by *** wherever the bench shows it."""


def digiq_cell(n: int) -> str:
    return f"Digi-Q offline N={n}"


@dataclass(frozen=True)
class DigiqSettings:
    """What every cell of a results file was made with (a re-run must give the same)."""

    follow_p: float = 0.5
    """The behaviour policy follows the instruction with this probability per step."""
    pixel_episodes: int = 200
    """Episodes of screenshots recorded for the encoder (phase 1)."""
    episodes: int = 500
    """Episodes of the features dataset every learner trains on."""
    encoder_epochs: int = 10
    """`qfleet encoder train --epochs`."""
    updates: int = 3000
    """Updates of each offline learner (and of the offline -> online run's offline phase)."""
    best_of_n: tuple[int, ...] = (1, 4, 16)
    """The Ns of Digi-Q offline."""
    online_n: int = 16
    """The N of the offline -> online run."""
    online_env_steps: int = 5000
    """The online phase's env steps (train.total_env_steps)."""
    eval_episodes: int = 100
    """Evaluation episodes per cell."""
    browsers: int = 4
    """Browsers of the recording actor, of the online actor and of the evaluator (env.num_envs)."""
    throughput_s: float = 20.0
    """Seconds of updates for each of the features and pixels updates/s."""
    seed: int = 0
    """Recordings (--seed: env j starts at 10000 seed + j), learners (train.seed); evaluations are
    seeded from EVAL_SEED_BASE + 100000 seed, far from any recording's seeds."""
    overrides: tuple[str, ...] = ()
    """`--set KEY=VALUE` over CONFIG for every recording, learner and run (a learner cell's own
    settings win where they meet: filtered BC's `learner.cql_alpha` 0)."""
    skip: tuple[str, ...] = ()
    """Cells not run (SKIPPABLE: the online run, the updates/s), e.g. to measure the offline cells
    of a new critic in the time a shared machine gives."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.follow_p <= 1.0:
            raise ConfigError(f"--follow-p {self.follow_p}: must be in [0, 1]")
        counts = {
            "--pixel-episodes": self.pixel_episodes,
            "--episodes": self.episodes,
            "--encoder-epochs": self.encoder_epochs,
            "--updates": self.updates,
            "--online-n": self.online_n,
            "--eval-episodes": self.eval_episodes,
            "--browsers": self.browsers,
        }
        for option, value in counts.items():
            if value < 1:
                raise ConfigError(f"{option} {value}: must be >= 1")
        if not self.best_of_n or min(self.best_of_n) < 1:
            raise ConfigError(f"--best-of-n {self.best_of_n}: every N must be >= 1")
        if self.online_env_steps < 0 or self.throughput_s <= 0 or self.seed < 0:
            raise ConfigError("--online-env-steps and --seed must be >= 0, --throughput-s > 0")
        if -(-self.eval_episodes // self.browsers) > 100:  # round k's seeds are eval_seed + 1000 k + i
            raise ConfigError(
                f"--eval-episodes {self.eval_episodes}: at most 100 rounds of --browsers {self.browsers} "
                "(each --seed has 100000 evaluation seeds)"
            )
        if "online" not in self.skip and self.online_n not in self.best_of_n:  # only an online cell needs it
            raise ConfigError(
                f"--online-n {self.online_n}: not among --best-of-n {','.join(map(str, self.best_of_n))}, so the "
                "online run would have no offline cell of the same N to improve on"
            )
        unknown = [cell for cell in self.skip if cell not in SKIPPABLE]
        if unknown:
            raise ConfigError(f"--skip {','.join(unknown)}: only {', '.join(SKIPPABLE)} can be skipped")
        for override in self.overrides:
            key = override.split("=", 1)[0].strip()
            owned = [k for k in BENCH_OWNED if key == k or (k.endswith(".") and key.startswith(k))]
            if owned:
                raise ConfigError(
                    f"--set {key}: the bench sets {owned[0].rstrip('.')} itself per cell (its labels would no "
                    "longer say what ran); use its own options (--best-of-n, --online-n, --seed, --browsers, ...)"
                )

    def cells(self) -> tuple[str, ...]:
        """A task's cells, in the order they run."""
        optional = tuple(cell for name, cell in SKIPPABLE.items() if name not in self.skip)
        return (*STEPS, FILTERED_BC, *(digiq_cell(n) for n in self.best_of_n), *optional)

    @property
    def eval_seed(self) -> int:
        return EVAL_SEED_BASE + 100_000 * self.seed


class Results:
    """The results file: the settings and every finished cell, per task; written after each cell.

    Raises:
        ConfigError: the file holds results made with other settings (mixing them would mislead).
    """

    def __init__(self, path: str | pathlib.Path, settings: DigiqSettings):
        self.path = pathlib.Path(path)
        self.settings = settings
        self.tasks: dict[str, dict[str, dict]] = {}
        if self.path.exists():
            stored = json.loads(self.path.read_text())
            mine = _stored_settings(settings)
            if stored.get("settings") != mine:
                differ = sorted(k for k in mine if stored.get("settings", {}).get(k) != mine[k])
                raise ConfigError(
                    f"--out {self.path}: holds results made with other settings ({', '.join(differ)}); "
                    "give the same settings to resume, or another --out"
                )
            self.tasks = stored.get("tasks", {})

    def forget(self, task: str, cells: list[str]) -> None:
        """Drops those cells' results (they are redone), keeping the rest."""
        for cell in cells:
            self.tasks.get(task, {}).pop(cell, None)

    def done(self, task: str, cell: str) -> dict | None:
        """The cell's result when it finished in this or an earlier run, else None."""
        return self.tasks.get(task, {}).get(cell)

    def record(self, task: str, cell: str, result: dict) -> None:
        """Keeps the cell's result and rewrites the file (atomically: a stop mid-write loses nothing)."""
        self.tasks.setdefault(task, {})[cell] = result
        payload = {
            "command": " ".join(map(redact_word, sys.argv)),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "config": CONFIG,
            "settings": _stored_settings(self.settings),
            "tasks": self.tasks,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_results(self.path, payload)


def _jsonable(value):
    return json.loads(json.dumps(value))


def _stored_settings(settings: DigiqSettings) -> dict:
    """The settings as the results file holds them (secrets in `--set`s redacted), with the bench's
    version and a hash of CONFIG: a resume compares them all."""
    import hashlib

    stored = _jsonable(dataclasses.asdict(settings))
    stored["overrides"] = [redact_word(override) for override in settings.overrides]
    if settings.skip:
        stored["skip"] = sorted(set(settings.skip))  # "online,updates/s" and "updates/s,online" resume each other
    else:
        del stored["skip"]  # as results made before --skip existed hold them
    stored["bench_version"] = BENCH_VERSION
    stored["config_sha256"] = hashlib.sha256((ROOT / CONFIG).read_bytes()).hexdigest()
    return stored


def redact_word(word: str) -> str:
    """A command-line word safe to log and store: a `KEY=VALUE` whose key names a secret gets
    `KEY=***`, a URL (alone or as a value) loses its password (`replay.redact_url`)."""
    from replay import redact_url

    key, equals, value = word.partition("=")
    if equals and any(part in key.lower() for part in SECRET_WORDS):
        return f"{key}=***"
    if equals and "://" in value:
        return f"{key}={redact_url(value)}"
    return redact_url(word) if "://" in word else word


@dataclass(frozen=True)
class TaskPaths:
    """Where one task's datasets, encoder and run live in the work folder."""

    work: pathlib.Path
    task: str

    @property
    def datasets(self) -> pathlib.Path:
        return self.work / "datasets"

    @property
    def pixels_id(self) -> str:
        return f"miniwob/{self.task}-pix-v0"

    @property
    def features_id(self) -> str:
        return f"miniwob/{self.task}-features-v0"

    @property
    def encoder(self) -> pathlib.Path:
        return self.work / "encoders" / self.task

    @property
    def online_run(self) -> pathlib.Path:
        return self.work / "runs" / f"{self.task}-online"


def log(text: str) -> None:
    print(f"[digiq] {text}", flush=True)


def run_command(command: list[str], what: str) -> None:
    """Runs one of the product's commands to its end (its output goes to ours); stopped with us.

    Raises:
        RuntimeError: it exited with a non-zero code.
    """
    log(f"{what}: {' '.join(map(redact_word, command[2:]))}")
    process = start_child(command, cwd=ROOT)
    try:
        code = process.wait()
    finally:  # Ctrl-C or SIGTERM: stop it in order, kill its group if it lingers
        code = stop_child(process, STOP_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"{what}: exited {code}")


def record_command(paths: TaskPaths, settings: DigiqSettings, dataset_id: str, episodes: int) -> list[str]:
    """`qfleet record` of the instruction-following behaviour; pixels unless the encoder exists."""
    features = (
        ["--set", f"env.features.path={paths.encoder}"]
        if dataset_id == paths.features_id
        else ["--set", "env.features.encoder=none"]
    )
    return [
        sys.executable,
        "-m",
        "system.cli",
        "record",
        dataset_id,
        "--behaviour",
        "instruction",
        "--follow-p",
        str(settings.follow_p),
        "--config",
        CONFIG,
        "--env",
        f"miniwob/{paths.task}-v1",
        "--episodes",
        str(episodes),
        "--seed",
        str(settings.seed),
        "--datasets-dir",
        str(paths.datasets),
        "--progress-every-s",
        "30",
        "--set",
        f"env.num_envs={settings.browsers}",
        *features,
        *_sets(settings.overrides),
    ]


def _sets(overrides: tuple[str, ...]) -> list[str]:
    return [word for override in overrides for word in ("--set", override)]


def encoder_command(paths: TaskPaths, settings: DigiqSettings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "system.cli",
        "encoder",
        "train",
        "--dataset",
        paths.pixels_id,
        "--datasets-dir",
        str(paths.datasets),
        "--out",
        str(paths.encoder),
        "--epochs",
        str(settings.encoder_epochs),
        "--seed",
        str(settings.seed),
    ]


def learner_overrides(paths: TaskPaths, settings: DigiqSettings, learner: dict[str, object]) -> list[str]:
    """The `--set`s of one learner on this task's features (over CONFIG)."""
    common = {
        "env.id": f"miniwob/{paths.task}-v1",
        "env.num_envs": settings.browsers,
        "env.features.path": str(paths.encoder),
        "train.seed": settings.seed,
    }
    # The cell's own settings last: the keys it shares with `--set` are only those the bench does not
    # own (BENCH_OWNED refuses the others), e.g. filtered BC's cql_alpha 0, which must win.
    return list(settings.overrides) + [f"{key}={value}" for key, value in (common | learner).items()]


def refuse_updates_within_warmup(updates: int, config) -> None:
    """Every Digi-Q cell must train past pi's filtered-BC warm-up (`learner.policy_starts`):
    otherwise its pi is pure filtered BC, Best-of-N never runs and its "N=..." label lies, and the
    online run's resume would warm up again on batches without episode_return.

    Raises:
        ConfigError: `updates` <= learner.policy_starts with the warm-up on, naming both.
    """
    from system.train.plan import warms_up_by_filtered_bc

    starts = config.learner.iql.policy_starts
    if warms_up_by_filtered_bc(config) and updates <= starts:
        raise ConfigError(
            f"--updates {updates}: the first learner.policy_starts={starts} updates are pi's filtered-BC warm-up, "
            f"so Best-of-N would never run; give --updates above {starts} (or --set learner.policy_starts lower)"
        )


def learner_settings(cell: str, settings: DigiqSettings) -> dict[str, object]:
    """Each offline cell's settings over CONFIG: filtered BC (plain BC, top_k_percent 100, on rows
    `TaskRun.offline` has already filtered to the successful episodes: a per-batch top-k would keep
    whole batches of failures when a batch holds few successes), or Digi-Q with its N. Filtered BC has
    no critic, so a `--set learner.cql_alpha` (Digi-Q's critics' penalty) is 0 there."""
    if cell == FILTERED_BC:
        return {
            "learner.loss": "filtered_bc",
            "learner.critic": "discrete",
            "learner.top_k_percent": 100,
            "learner.cql_alpha": 0,
        }
    return {"learner.best_of_n": int(cell.rsplit("=", 1)[1])}


def online_command(paths: TaskPaths, settings: DigiqSettings) -> list[str]:
    """`qfleet train` of the offline phase only (train.total_env_steps 0; `resume_command` then takes
    the same run online), so online and offline are compared within one training run, the offline
    checkpoint evaluated here as the online one is. It evaluates only briefly itself (`browsers`
    episodes); the `eval_episodes` evaluations run here after each phase."""
    online = {
        "offline.dataset": paths.features_id,
        "offline.datasets_dir": str(paths.datasets),
        "offline.updates": settings.updates,
        "offline.eval_every_updates": 0,
        "learner.best_of_n": settings.online_n,
        "train.total_env_steps": 0,
        "train.eval_every_steps": max(settings.online_env_steps, 1),
        "train.eval_episodes": settings.browsers,
        "train.log_every_s": 30,
    }
    command = [sys.executable, "-m", "system.cli", "train", CONFIG, "--run-dir", str(paths.online_run)]
    for override in learner_overrides(paths, settings, online):
        command += ["--set", override]
    return command


def resume_command(paths: TaskPaths, settings: DigiqSettings) -> list[str]:
    """`qfleet train --resume` of `online_command`'s offline-only run, online for the env-step budget."""
    command = [sys.executable, "-m", "system.cli", "train", "--resume", str(paths.online_run)]
    return command + ["--set", f"train.total_env_steps={settings.online_env_steps}"]


def evaluate(config, policy_state: dict, settings: DigiqSettings, what: str) -> dict:
    """Greedy success rate over `settings.eval_episodes` episodes, `settings.browsers` at a time."""
    from system.train.evaluate import Evaluator

    evaluator = Evaluator(
        config.env, config.learner, settings.browsers, epsilon=0.0, seed=settings.eval_seed, acting="greedy"
    )
    returns: list[float] = []
    started = last = time.perf_counter()
    try:
        state = policy_state
        while len(returns) < settings.eval_episodes:
            returns += evaluator.run(state).returns
            state = None  # loaded once
            if time.perf_counter() - last > 30:
                last = time.perf_counter()
                log(f"{what}: evaluated {len(returns)}/{settings.eval_episodes}, {_rate(returns):.2f} solved")
    finally:
        evaluator.close()
    returns = returns[: settings.eval_episodes]
    return {
        "success_rate": _rate(returns),
        "successes": int(sum(r > 0 for r in returns)),
        "episodes": len(returns),
        "eval_seed": settings.eval_seed,
        "eval_s": round(time.perf_counter() - started, 1),
    }


def _rate(returns: list[float]) -> float:
    return sum(r > 0 for r in returns) / len(returns) if returns else 0.0


def load_dataset(config, dataset_id: str, datasets_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """The dataset's transitions as `qfleet train` loads them (n-step, with `episode_return`)."""
    from system.config import env_spaces
    from system.datasets import DatasetSource, load_transitions, with_episode_return

    spaces = env_spaces(config.env)
    return load_transitions(
        DatasetSource(dataset_id, str(datasets_dir)),
        with_episode_return(spaces.spec),
        spaces.action_space,
        n_step=config.actors.n_step,
        gamma=config.learner.gamma,
    ).transitions


def dataset_summary(config, dataset_id: str, datasets_dir: pathlib.Path, seconds: float) -> dict:
    """Episodes, steps and the behaviour's success rate of a recorded dataset."""
    from system.config import env_spaces
    from system.datasets import DatasetSource, load_episodes

    spaces = env_spaces(config.env)
    returns = load_episodes(DatasetSource(dataset_id, str(datasets_dir)), spaces.spec, spaces.action_space).returns()
    return {
        "dataset": dataset_id,
        "episodes": len(returns),
        "success_rate": round(_rate(list(returns)), 4),
        "seconds": round(seconds, 1),
    }


def policy_sanity(config, agent, loaded: dict[str, np.ndarray]) -> dict:
    """How the greedy policy treats its own training states, so a collapsed policy shows: the share
    of the successful episodes' steps (episode_return > 0) where it picks the recorded action, and
    how many distinct actions it picks over every training state."""
    import numpy as np

    from learner import Policy
    from system.config import env_spaces

    spaces = env_spaces(config.env)
    policy = Policy(dataclasses.replace(config.learner, policy_acting="greedy"), spaces.obs_shape, spaces.action_space)
    policy.load(agent.policy_state(), 0)
    rng = np.random.default_rng(0)
    greedy = np.concatenate(
        [policy.act(loaded["obs"][i : i + 1024], 0.0, rng) for i in range(0, len(loaded["obs"]), 1024)]
    )
    rewarded = loaded["episode_return"] > 0
    match = float(np.mean(greedy[rewarded] == loaded["action"][rewarded])) if rewarded.any() else None
    sanity = {
        "train_match_on_rewarded": None if match is None else round(match, 4),
        "rewarded_steps": int(rewarded.sum()),
        "distinct_greedy_actions": int(len(np.unique(greedy))),
        "training_states": int(len(greedy)),
    }
    critic = getattr(agent, "critic", None)
    if critic is not None:
        sanity["critic"] = critic_sanity(critic, loaded)
    return sanity


def critic_sanity(critic, loaded: dict[str, np.ndarray]) -> dict:
    """`critic_ranking` of an IQL critic (min of its twin Qs, its V) on a dataset's transitions.

    A step counts as rewarded when its `reward` > 0: the n-step return, so with actors.n_step > 1
    the steps up to n - 1 before the success count too (`policy_sanity` ranks by
    `episode_return` > 0, every step of a successful episode); the MiniWoB config's n_step is 1."""
    import numpy as np
    import torch

    q_parts, value_parts = [], []
    with torch.no_grad():
        for i in range(0, len(loaded["obs"]), 1024):
            obs = torch.from_numpy(loaded["obs"][i : i + 1024])
            q_parts.append(critic.twin_q(obs).min(dim=0).values.numpy())
            value_parts.append(critic.v(obs).numpy())
    return critic_ranking(np.concatenate(q_parts), np.concatenate(value_parts), loaded["action"], loaded["reward"] > 0)


def critic_ranking(q: np.ndarray, value: np.ndarray, action: np.ndarray, rewarded: np.ndarray) -> dict:
    """How well a critic tells good actions from bad, on recorded transitions; Best-of-N trusts it.

    - `rewarded_action_top1` and `rewarded_action_mean_rank`: on the steps that earned a reward,
      the share where the recorded action has a Q strictly above every other action's, and its mean
      rank (0: the highest; an action tied with k others ranks k/2 below the best it ties, so a
      flat critic reads (A - 1)/2 and top-1 0, not a perfect ranking). Best-of-N imitates argmax-Q over pi's samples, so a
      critic that ranks many other actions above the one that earned the reward steers pi away
      from it.
    - `advantage_auc`: the probability that a rewarded step's Q(s, a) - V(s) exceeds an unrewarded
      step's (ties count half; the Mann-Whitney U, computed from the
      pooled ranks rather than a rewarded x unrewarded matrix): does the critic tell which recorded step earned the reward? 0.5 is chance.
    - `q_max_mean` and `v_mean`: the mean over states of max_a Q(s, a) and of V(s); a max above
      the highest return the task can give is Q overrated at actions the data rarely holds.

    Args:
        q: [B, A] Q of every action; value: [B] V(s); action: [B] recorded actions; rewarded: [B] bool.
    """
    import numpy as np

    rows = np.arange(len(action))
    taken = q[rows, action]
    above = (q > taken[:, None]).sum(axis=1)
    tied = (q == taken[:, None]).sum(axis=1) - 1  # the recorded action itself not counted
    rank = above + 0.5 * tied
    advantage = taken - value
    rewarded = np.asarray(rewarded, dtype=bool)
    good, bad = int(rewarded.sum()), int((~rewarded).sum())
    auc = None
    if good and bad:
        auc = float((_midranks(advantage)[rewarded].sum() - good * (good + 1) / 2) / (good * bad))
    return {
        "rewarded_action_top1": round(float(((above + tied)[rewarded] == 0).mean()), 4) if rewarded.any() else None,
        "rewarded_action_mean_rank": round(float(rank[rewarded].mean()), 2) if rewarded.any() else None,
        "advantage_auc": None if auc is None else round(auc, 4),
        "q_max_mean": round(float(q.max(axis=1).mean()), 4),
        "v_mean": round(float(value.mean()), 4),
    }


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks (for the Mann-Whitney U)."""
    import numpy as np

    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # positions starts+1..ends, averaged
    return ranks


WARMUP_UPDATES = 3
"""Untimed updates before the updates/s clock starts (first-call costs are not the steady rate)."""
MIN_TIMED_UPDATES = 20
"""The fewest timed updates of an updates/s figure, however long they take."""


def updates_per_s(config, loaded: dict[str, np.ndarray], seconds: float, seed: int) -> dict:
    """Updates/s of `config.learner` on uniform batches of `loaded`, on the learner's own device
    (`learner.device`, as `qfleet train` resolves it): one agent is warmed up by WARMUP_UPDATES
    updates, then timed until `seconds` have passed and at least MIN_TIMED_UPDATES updates ran."""
    import numpy as np
    import torch

    from learner import make_agent, resolve_device
    from system.config import env_spaces

    device = resolve_device(config.learner.device)
    spaces = env_spaces(config.env)
    torch.manual_seed(seed)
    agent = make_agent(config.learner, spaces.obs_shape, spaces.action_space, device)
    rng = np.random.default_rng(seed)
    size, batch_size = len(loaded["reward"]), config.learner.batch_size
    weights = torch.ones(batch_size, device=device)

    def update(number: int) -> None:
        rows = rng.integers(0, size, batch_size)
        agent.update({name: torch.from_numpy(column[rows]).to(device) for name, column in loaded.items()}, weights)
        agent.after_update(number)

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for number in range(1, WARMUP_UPDATES + 1):
        update(number)
    synchronise()
    count, started = 0, time.perf_counter()
    while count < MIN_TIMED_UPDATES or time.perf_counter() - started < seconds:
        count += 1
        update(WARMUP_UPDATES + count)
        if count % 10 == 0:
            synchronise()  # the deadline is judged on finished work
    synchronise()
    took = time.perf_counter() - started
    return {
        "updates": count,
        "seconds": took,
        "updates_per_s": count / took,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


class TaskRun:
    """One task's cells, each skipped when the results already hold it."""

    def __init__(self, task: str, settings: DigiqSettings, results: Results, work: pathlib.Path):
        self.task, self.settings, self.results = task, settings, results
        self.paths = TaskPaths(work, task)
        self._features: dict[str, np.ndarray] | None = None

    def config(self, learner: dict[str, object], extra: tuple[str, ...] = ()):
        from system.config import load_config
        from system.train.plan import seeded

        overrides = learner_overrides(self.paths, self.settings, learner) + list(extra)
        return seeded(load_config(str(ROOT / CONFIG), overrides))

    def run(self) -> bool:
        """Runs the unfinished cells; False when one failed. A failed preparation cell (STEPS) skips
        the task's other cells; a failed learner cell only itself (a re-run retries them)."""
        succeeded = True
        self.forget_lost_preparation()
        for cell in self.settings.cells():
            if self.results.done(self.task, cell) is not None:
                log(f"{self.task} / {cell}: done before, skipped")
                continue
            started = time.perf_counter()
            log(f"{self.task} / {cell}: starting")
            try:
                result = self.run_cell(cell)
            except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the other tasks
                traceback.print_exc()
                succeeded = False
                if cell in STEPS:
                    log(f"{self.task} / {cell}: failed ({exc}); the task's other cells are skipped")
                    return False
                log(f"{self.task} / {cell}: failed ({exc})")
                continue
            self.results.record(self.task, cell, result)
            log(f"{self.task} / {cell}: {_brief(result)} ({time.perf_counter() - started:.0f} s)")
        return succeeded

    def prepared(self, cell: str) -> pathlib.Path:
        """What a preparation cell (STEPS) leaves in the work folder."""
        paths = self.paths
        return {
            "pixels dataset": paths.datasets / paths.pixels_id,
            "encoder": paths.encoder / "encoder.json",
            "features dataset": paths.datasets / paths.features_id,
        }[cell]

    def forget_lost_preparation(self) -> None:
        """A finished preparation cell whose files are gone from the work folder (another
        --work-dir, deleted) is redone, and every cell after it with it."""
        cells = list(self.settings.cells())
        for cell in STEPS:
            if self.results.done(self.task, cell) is not None and not self.prepared(cell).exists():
                log(f"{self.task} / {cell}: {self.prepared(cell)} is gone; redoing it and the cells after it")
                self.results.forget(self.task, cells[cells.index(cell) :])
                return

    def run_cell(self, cell: str) -> dict:
        settings, paths = self.settings, self.paths
        started = time.perf_counter()
        if cell == "pixels dataset":
            _remove(paths.datasets / paths.pixels_id)  # an unfinished recording of a stopped run
            run_command(record_command(paths, settings, paths.pixels_id, settings.pixel_episodes), cell)
            config = self.config({}, ("env.features.encoder=none",))
            return dataset_summary(config, paths.pixels_id, paths.datasets, time.perf_counter() - started)
        if cell == "encoder":
            _remove(paths.encoder)
            run_command(encoder_command(paths, settings), cell)
            trained = json.loads((paths.encoder / "encoder.json").read_text())
            summary = _find(trained, "actionability")
            return {
                "path": str(paths.encoder),
                "holdout_accuracy": summary.get("holdout_accuracy"),
                "holdout_balanced_accuracy": summary.get("holdout_balanced_accuracy"),
                "seconds": round(time.perf_counter() - started, 1),
            }
        if cell == "features dataset":
            _remove(paths.datasets / paths.features_id)
            run_command(record_command(paths, settings, paths.features_id, settings.episodes), cell)
            return dataset_summary(self.config({}), paths.features_id, paths.datasets, time.perf_counter() - started)
        if cell == ONLINE:
            return self.online()
        if cell == "updates/s":
            return self.throughput()
        return self.offline(cell)

    def features(self) -> dict[str, np.ndarray]:
        if self._features is None:
            self._features = load_dataset(self.config({}), self.paths.features_id, self.paths.datasets)
        return self._features

    def offline(self, cell: str) -> dict:
        from system.bench.offline import train_agent

        config = self.config(learner_settings(cell, self.settings))
        updates = self.settings.updates

        def progress(update: int, seconds: float) -> None:
            log(f"{self.task} / {cell}: update {update:,}/{updates:,} ({update / seconds:.1f} updates/s)")

        loaded, kept = self.features(), {}
        if cell == FILTERED_BC:
            successful = loaded["episode_return"] > 0
            if not successful.any():
                raise RuntimeError(f"{FILTERED_BC}: the dataset has no successful episode to imitate")
            loaded = {name: column[successful] for name, column in loaded.items()}
            kept = {"rows_kept": int(successful.sum()), "share_kept": round(float(successful.mean()), 4)}
        agent, seconds = train_agent(config, loaded, updates, self.settings.seed, progress)
        sanity = policy_sanity(config, agent, self.features())
        log(
            f"{self.task} / {cell}: greedy action = recorded on {sanity['train_match_on_rewarded']} of the "
            f"successful steps; {sanity['distinct_greedy_actions']} distinct greedy actions"
        )
        if "critic" in sanity:
            log(f"{self.task} / {cell}: critic on its training steps: {sanity['critic']}")
        result = evaluate(config, agent.policy_state(), self.settings, f"{self.task} / {cell}")
        return result | {
            "updates": updates,
            "train_seed": self.settings.seed,
            "train_s": round(seconds, 1),
            "sanity": sanity,
            **kept,
        }

    def online(self) -> dict:
        """One `qfleet train` run: its offline phase alone, evaluated; then the same run resumed
        online, evaluated: the online gain is measured within one training process."""
        from system.train import RunDir

        _remove(self.paths.online_run)
        started = time.perf_counter()
        run_command(online_command(self.paths, self.settings), f"{ONLINE} (offline phase)")
        offline = self.evaluate_run_checkpoint("offline phase")
        offline["train_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        run_command(resume_command(self.paths, self.settings), f"{ONLINE} (online phase)")
        result = self.evaluate_run_checkpoint("online")
        progress = RunDir(self.paths.online_run).records("progress")
        return result | {
            "best_of_n": self.settings.online_n,
            "env_steps": int(progress[-1]["env_steps"]) if progress else None,
            "train_seed": self.settings.seed,
            "train_s": round(time.perf_counter() - started, 1),
            "offline_phase": offline,
        }

    def evaluate_run_checkpoint(self, phase: str) -> dict:
        """The online run's latest learner checkpoint, evaluated like every other cell."""
        import torch

        from learner import load_latest_checkpoint, make_agent
        from system.config import env_spaces
        from system.train import RunDir

        run = RunDir(self.paths.online_run)
        config = run.load_config()
        loaded = load_latest_checkpoint(run.checkpoints)
        if loaded is None:
            raise RuntimeError(f"{ONLINE} ({phase}): {run.checkpoints} holds no learner checkpoint")
        state, path = loaded
        spaces = env_spaces(config.env)
        agent = make_agent(config.learner, spaces.obs_shape, spaces.action_space, torch.device("cpu"))
        agent.load_state_dict(state["agent"])
        result = evaluate(config, agent.policy_state(), self.settings, f"{self.task} / {ONLINE} ({phase})")
        return result | {"updates": int(state["counters"]["updates"]), "checkpoint": str(path)}

    def throughput_configs(self):
        """(features, pixels): Digi-Q with the online N on features, and the same learner on the
        screenshots (a CNN trained with the heads, no frozen encoder)."""
        learner = {"learner.best_of_n": self.settings.online_n}
        features = self.config(learner)
        pixels = self.config(learner | {"learner.network": "cnn"}, ("env.features.encoder=none",))
        return features, pixels

    def throughput(self) -> dict:
        """Updates/s of Digi-Q (the online N) on features vs on screenshots, same batch size."""
        import torch

        features, pixels = self.throughput_configs()
        screens = load_dataset(pixels, self.paths.pixels_id, self.paths.datasets)
        threads = torch.get_num_threads()
        # The threads `qfleet train` gives its learner (train.learner_num_cpus, 1 by default). Not the
        # machine's CPUs: two threads on a busy 2-core VM made each small update 26x slower (the
        # threads wait on each other at every op), which measures the machine's load, not the learner.
        torch.set_num_threads(features.train.learner_threads)
        try:
            return self._throughput(features, pixels, screens)
        finally:
            torch.set_num_threads(threads)

    def _throughput(self, features, pixels, screens) -> dict:
        segment_s, seed = self.settings.throughput_s / THROUGHPUT_ROUNDS, self.settings.seed
        rounds = []
        for round_ in range(1, THROUGHPUT_ROUNDS + 1):  # interleaved: a load that changes hits both sides
            on_features = updates_per_s(features, self.features(), segment_s, seed)
            on_pixels = updates_per_s(pixels, screens, segment_s, seed)
            rounds.append({"features": on_features, "pixels": on_pixels})
            log(
                f"{self.task} / updates/s, round {round_}/{THROUGHPUT_ROUNDS}: features "
                f"{on_features['updates_per_s']:.1f}, pixels {on_pixels['updates_per_s']:.2f}"
            )
        return {
            "batch_size": features.learner.batch_size,
            "device": rounds[0]["features"]["device"],
            "threads": rounds[0]["features"]["threads"],
            "features": _total(r["features"] for r in rounds),
            "pixels": _total(r["pixels"] for r in rounds),
            "ratio": statistics.median(r["features"]["updates_per_s"] / r["pixels"]["updates_per_s"] for r in rounds),
            "rounds": rounds,
        }


def _total(segments) -> dict:
    segments = list(segments)
    updates, seconds = sum(s["updates"] for s in segments), sum(s["seconds"] for s in segments)
    return {"updates": updates, "seconds": round(seconds, 2), "updates_per_s": updates / seconds}


def _find(record: dict, key: str) -> dict:
    """`record[key]`, looked for one level down too (encoder.json nests its training summary)."""
    if key in record:
        return record[key]
    for value in record.values():
        if isinstance(value, dict) and key in value:
            return value[key]
    return {}


def _remove(path: pathlib.Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _brief(result: dict) -> str:
    if "success_rate" in result and "episodes" in result and "eval_seed" in result:
        return f"{result['success_rate']:.2f} solved ({result['successes']}/{result['episodes']}, seed {result['eval_seed']})"
    if "ratio" in result:
        return f"{result['features']['updates_per_s']:.1f} vs {result['pixels']['updates_per_s']:.2f} updates/s ({result['ratio']:.1f}x)"
    return ", ".join(f"{k} {v}" for k, v in result.items() if not isinstance(v, dict))


def table(results: Results) -> str:
    """Per task: the dataset's success, every learner's, the updates/s; then the means and targets."""
    settings = results.settings
    learners = [FILTERED_BC, *(digiq_cell(n) for n in settings.best_of_n), ONLINE_OFFLINE, ONLINE]
    heads = [
        "data",
        "filtered BC",
        *(f"N={n}" for n in settings.best_of_n),
        f"run's offline phase (N={settings.online_n})",
        f"+ online (N={settings.online_n})",
    ]
    lines = [
        f"Success rate over {settings.eval_episodes} greedy evaluation episodes (seed {settings.eval_seed}); "
        f"datasets: {settings.episodes} episodes at follow-p {settings.follow_p}; {settings.updates:,} offline "
        f"updates; online: {settings.online_env_steps:,} env steps; {CONFIG}. (upd: the policy's updates.)",
        "",
        "| task | " + " | ".join(heads) + " | updates/s features | updates/s pixels | ratio |",
        "|---|" + "---:|" * (len(heads) + 3),
    ]
    columns: dict[str, list[float]] = {name: [] for name in ["data", *learners]}
    for task, cells in results.tasks.items():
        data = cells.get("features dataset", {}).get("success_rate")
        row = [_cell(data)]
        if data is not None:
            columns["data"].append(data)
        for name in learners:
            result = cells.get(ONLINE, {}).get("offline_phase", {}) if name == ONLINE_OFFLINE else cells.get(name, {})
            value = result.get("success_rate")
            row.append(
                _cell(value) + (f" ({result['updates']:,} upd)" if value is not None and "updates" in result else "")
            )
            if value is not None:
                columns[name].append(value)
        speed = cells.get("updates/s")
        if speed:
            row += [
                f"{speed['features']['updates_per_s']:.1f}",
                f"{speed['pixels']['updates_per_s']:.2f}",
                f"{speed['ratio']:.1f}x",
            ]
        else:
            row += ["-", "-", "-"]
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    means = {name: statistics.mean(values) for name, values in columns.items() if values}
    counts = {name: len(values) for name, values in columns.items()}
    lines.append(
        "| mean | "
        + " | ".join(f"{means[n]:.2f} ({counts[n]} tasks)" if n in means else "-" for n in ["data", *learners])
        + " | | | |"
    )
    lines += ["", *targets(results)]
    return "\n".join(lines)


def targets(results: Results) -> list[str]:
    """The issue's three targets, over the tasks that have both sides of each comparison."""
    settings, lines = results.settings, []
    for n in settings.best_of_n:
        pairs = _pairs(results, digiq_cell(n), FILTERED_BC)
        if pairs:
            gain = round(100 * statistics.mean(a - b for a, b in pairs), 6)  # no float dust in the verdict
            verdict = "met" if gain >= 10 else "not met"
            lines.append(
                f"Digi-Q offline N={n} - filtered BC: {gain:+.1f} points over {len(pairs)} tasks (>= 10: {verdict})."
            )
    pairs = [
        (cells[ONLINE]["success_rate"], cells[ONLINE]["offline_phase"]["success_rate"])
        for cells in results.tasks.values()
        if "offline_phase" in cells.get(ONLINE, {})
    ]
    if pairs:
        gain = round(100 * statistics.mean(a - b for a, b in pairs), 6)  # no float dust in the verdict
        verdict = "met" if gain > 0 else "not met"
        lines.append(
            f"Online - its own offline phase (N={settings.online_n}, one run, {settings.online_env_steps:,} env steps): "
            f"{gain:+.1f} points over {len(pairs)} tasks (> 0: {verdict})."
        )
    ratios = [cells["updates/s"]["ratio"] for cells in results.tasks.values() if "updates/s" in cells]
    if ratios:
        low = min(ratios)
        lines.append(
            f"Updates/s on features / on pixels: {statistics.median(ratios):.1f}x median, {low:.1f}x lowest "
            f"({len(ratios)} tasks; >= 10x: {'met' if low >= 10 else 'not met'})."
        )
    return lines


def _pairs(results: Results, mine: str, theirs: str) -> list[tuple[float, float]]:
    pairs = []
    for cells in results.tasks.values():
        if mine in cells and theirs in cells:
            pairs.append((cells[mine]["success_rate"], cells[theirs]["success_rate"]))
    return pairs


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_digiq_bench(tasks: list[str], settings: DigiqSettings, out: str, work_dir: str | None) -> int:
    """Runs every task's cells in order (skipping finished ones), prints the table."""
    import torch

    torch.set_num_threads(1)
    interrupt_on_sigterm()
    results = Results(out, settings)
    work = pathlib.Path(work_dir or f"{out}.work").resolve()
    log(f"results: {out}; datasets, encoders and runs: {work}")
    failed = []
    for task in tasks:
        if not TaskRun(task, settings, results, work).run():
            failed.append(task)
        print_table(results)
    if failed:
        log(f"cells failed in {', '.join(failed)}: see above; a re-run with the same --out retries them")
    return 1 if failed else 0


def print_table(results: Results) -> None:
    print()
    print(table(results), flush=True)


def add_digiq_arguments(parser) -> None:
    """`qfleet bench digiq`'s options (defaults: `DigiqSettings`)."""
    d = DigiqSettings()
    parser.add_argument("--out", required=True, metavar="FILE", help="results JSON, written as each cell finishes")
    parser.add_argument("--work-dir", metavar="DIR", help="datasets, encoders and runs (default: OUT.work)")
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated MiniWoB tasks, in order (default: {','.join(TASKS)})"
    )
    parser.add_argument(
        "--follow-p",
        type=float,
        default=d.follow_p,
        help=f"behaviour: follow the instruction with this probability per step (default: {d.follow_p})",
    )
    parser.add_argument(
        "--pixel-episodes",
        type=int,
        default=d.pixel_episodes,
        help=f"screenshot episodes for the encoder (default: {d.pixel_episodes})",
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=d.episodes,
        help=f"episodes of the features dataset the learners train on (default: {d.episodes})",
    )
    parser.add_argument(
        "--encoder-epochs",
        type=int,
        default=d.encoder_epochs,
        help=f"qfleet encoder train --epochs (default: {d.encoder_epochs})",
    )
    parser.add_argument(
        "--updates",
        type=int,
        default=d.updates,
        help=f"updates per offline learner and offline phase (default: {d.updates})",
    )
    parser.add_argument(
        "--best-of-n",
        default=",".join(map(str, d.best_of_n)),
        help="comma-separated Ns of Digi-Q offline (default: 1,4,16)",
    )
    parser.add_argument(
        "--online-n",
        type=int,
        default=d.online_n,
        help=f"the N of the offline -> online run, one of --best-of-n unless --skip online (default: {d.online_n})",
    )
    parser.add_argument(
        "--online-env-steps",
        type=int,
        default=d.online_env_steps,
        help=f"online env steps per task (default: {d.online_env_steps})",
    )
    parser.add_argument(
        "--eval-episodes",
        type=int,
        default=d.eval_episodes,
        help=f"evaluation episodes per cell (default: {d.eval_episodes})",
    )
    parser.add_argument(
        "--browsers",
        type=int,
        default=d.browsers,
        help=f"browsers of the recording/online actor and the evaluator (default: {d.browsers})",
    )
    parser.add_argument(
        "--throughput-s",
        type=float,
        default=d.throughput_s,
        help=f"seconds of updates per updates/s figure (default: {d.throughput_s:g})",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="an override of the config for every recording, learner and run (repeatable), "
        "e.g. learner.updates_per_env_step=0.5",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated cells not to run: online (the offline -> online run), updates/s (default: none)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"recordings and learners; evaluations use 1000000 + 100000 * seed (default: {d.seed})",
    )


def digiq_from_arguments(args) -> tuple[list[str], DigiqSettings]:
    """The tasks and settings of parsed `qfleet bench digiq` arguments.

    Raises:
        ConfigError: a bad value, naming its option.
    """
    from actors import INSTRUCTION_RULES

    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = [task for task in tasks if task not in INSTRUCTION_RULES]
    if not tasks or unknown:
        raise ConfigError(
            f"--tasks {args.tasks!r}: {', '.join(unknown) or 'none given'}: the instruction-following behaviour "
            f"has rules for {', '.join(INSTRUCTION_RULES)} only"
        )
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"--tasks {args.tasks!r}: a task is named twice")
    try:
        best_of_n = tuple(int(n) for n in args.best_of_n.split(","))
    except ValueError:
        raise ConfigError(f"--best-of-n {args.best_of_n!r}: expected comma-separated integers") from None
    overrides = tuple(args.set or ())
    from system.config import load_config

    config = load_config(str(ROOT / CONFIG), list(overrides))  # a bad --set fails now, not after the first recording
    refuse_updates_within_warmup(args.updates, config)
    settings = DigiqSettings(
        follow_p=args.follow_p,
        pixel_episodes=args.pixel_episodes,
        episodes=args.episodes,
        encoder_epochs=args.encoder_epochs,
        updates=args.updates,
        best_of_n=best_of_n,
        online_n=args.online_n,
        online_env_steps=args.online_env_steps,
        eval_episodes=args.eval_episodes,
        browsers=args.browsers,
        throughput_s=args.throughput_s,
        seed=args.seed,
        overrides=overrides,
        skip=tuple(sorted({cell.strip() for cell in args.skip.split(",") if cell.strip()})),
    )
    return tasks, settings
