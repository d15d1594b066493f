"""Evaluation: run a policy for N whole episodes, one env each, side by side (in waves on UI envs).

Used by `qfleet train` (`RunEvaluations`: periodically on the latest published weights, in a
background thread, and once at the end) and by `qfleet eval RUN_DIR` (the newest checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from actors import ANDROID_ID, MINIWOB_PREFIX, EnvConfig, make_env
from learner import HostAheadError, LearnerConfig, SupersededReadError
from system.config import ConfigError, RunConfig, env_spaces
from system.train.eval_schedule import due_evaluation
from system.train.records import EvalRecord, RunCounters
from system.train.run_dir import RunDir

if TYPE_CHECKING:
    from learner import WeightStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Returns of one evaluation."""

    returns: list[float]
    lengths: list[int]
    seconds: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def eval_env_config(env: EnvConfig) -> EnvConfig:
    """The env as evaluated: whole games (a lost life does not end an episode)."""
    return dataclasses.replace(env, terminal_on_life_loss=False)


UI_EVAL_PARALLEL = 4
"""Episodes evaluated at once on a browser or emulator env (each env is a Chromium or an emulator:
a 100-episode evaluation must not start 100 of them)."""


def eval_parallel(env: EnvConfig, episodes: int) -> int:
    """Envs an evaluation runs side by side: every episode at once for simulators (one batched
    forward per step), `UI_EVAL_PARALLEL` for browsers and emulators."""
    if env.id.startswith(MINIWOB_PREFIX) or env.id == ANDROID_ID:
        return max(1, min(episodes, UI_EVAL_PARALLEL))
    return max(1, episodes)


class Evaluator:
    """Runs `episodes` episodes of a policy, side by side in waves of `parallel` envs (one env per
    episode of a wave), one batched forward per step. Episode i is seeded the same whatever
    `parallel` is, so the result does not depend on it.

    Args:
        env: the env section (evaluated as `eval_env_config` makes it).
        learner: the learner section (decides the network).
        episodes: episodes per evaluation.
        epsilon: exploration while evaluating: a uniform action with this probability (0: none).
        seed: episode i of evaluation k is seeded seed + 1000 * k + i.
        acting: "greedy" (the most likely action, whatever `learner.policy_acting` says) or "policy"
            (as the actors act: a draw from pi with `learner.policy_acting: sample`).
        parallel: envs run side by side (None: `eval_parallel`: all episodes, or
            `UI_EVAL_PARALLEL` on browsers and emulators).
    """

    def __init__(
        self,
        env: EnvConfig,
        learner: LearnerConfig,
        episodes: int,
        epsilon: float = 0.0,
        seed: int = 0,
        acting: str = "greedy",
        parallel: int | None = None,
    ):
        from learner import Policy

        if acting not in ("greedy", "policy"):
            raise ConfigError(f"train.eval_acting={acting!r}: must be 'greedy' or 'policy'")
        if acting == "greedy":
            learner = dataclasses.replace(learner, policy_acting="greedy")
        self.acting = acting
        self.env_config = eval_env_config(env)
        spaces = env_spaces(self.env_config)
        self.obs_shape, self.action_space = spaces.obs_shape, spaces.action_space
        self.policy = Policy(learner, spaces.obs_shape, spaces.action_space, seed=seed)
        if episodes < 1 or (parallel is not None and parallel < 1):
            raise ConfigError(f"evaluation needs episodes >= 1 and parallel >= 1 (got {episodes}, {parallel})")
        self.episodes = episodes
        width = eval_parallel(env, episodes) if parallel is None else min(parallel, episodes)
        self.envs = [make_env(self.env_config) for _ in range(width)]
        self.epsilon, self.seed = epsilon, seed
        self.rng = np.random.default_rng(seed)
        self.evaluations = 0

    def run(self, state: dict | None = None, version: int = 0) -> EvalResult:
        """Evaluates `state` (published weights; None: the weights loaded last)."""
        if state is not None:
            self.policy.load(state, version)
        start = time.perf_counter()
        base = self.seed + 1000 * self.evaluations
        self.evaluations += 1
        returns, lengths = np.zeros(self.episodes), np.zeros(self.episodes, np.int64)
        for first in range(0, self.episodes, len(self.envs)):
            wave = range(first, min(first + len(self.envs), self.episodes))
            self._play(wave, base, returns, lengths)
        return EvalResult([float(r) for r in returns], [int(x) for x in lengths], time.perf_counter() - start)

    def _play(self, wave: range, base: int, returns: np.ndarray, lengths: np.ndarray) -> None:
        """Plays episodes `wave` (one env each, in order) to their ends into returns/lengths."""
        envs = dict(zip(wave, self.envs, strict=False))
        obs = {i: env.reset(seed=base + i)[0] for i, env in envs.items()}
        running = list(wave)
        while running:
            actions = self.policy.act(np.stack([obs[i] for i in running]), self.epsilon, self.rng)
            still = []
            for i, action in zip(running, actions, strict=True):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                returns[i] += float(reward)
                lengths[i] += 1
                if not (terminated or truncated):
                    still.append(i)
            running = still

    def close(self) -> None:
        for env in self.envs:
            env.close()


ANNOUNCE_WAIT_S = 60.0
"""How long the driver waits for the offline phase's last weights to be announced (evaluated as
the phase's result) before it starts the actors without that evaluation."""

FINISH_TIMEOUT_S = 300.0
"""How long the end of a run waits for an evaluation in progress."""


class BackgroundEvaluator:
    """Evaluates in a thread, one evaluation at a time; with `skip_when_busy`, a request made while
    one runs and another waits is skipped, else every request is queued (train.eval_skip_when_busy).

    `submit(tag, state, version)` hands weights over; `results()` returns finished
    (tag, EvalResult) pairs.
    """

    def __init__(self, evaluator: Evaluator, skip_when_busy: bool = True):
        self.evaluator = evaluator
        self._requests: queue.Queue = queue.Queue(maxsize=1 if skip_when_busy else 0)
        self._done: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="evaluator", daemon=True)
        self._thread.start()

    def submit(self, tag: dict, state: dict, version: int) -> bool:
        """Queues an evaluation; False when one is already waiting (this one is skipped)."""
        try:
            self._requests.put_nowait((tag, state, version))
            return True
        except queue.Full:
            return False

    @property
    def running(self) -> bool:
        """Its thread is alive (after `close`: stuck in an evaluation that did not end)."""
        return self._thread.is_alive()

    def _work(self) -> None:
        while (request := self._requests.get()) is not None:
            tag, state, version = request
            try:
                self._done.put((tag, self.evaluator.run(state, version)))
            except Exception as exc:  # an evaluation failing must not end the run
                log.warning("evaluation failed: %s: %s", type(exc).__name__, exc)
            del request, state  # not pinned while waiting: the weights may be an object store payload

    def results(self) -> list[tuple[dict, EvalResult]]:
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def close(self, wait: bool = True, timeout_s: float = FINISH_TIMEOUT_S) -> list[tuple[dict, EvalResult]]:
        """Finishes a queued evaluation (when `wait`), stops the thread, returns what finished
        (the evaluator itself stays open). An evaluation still running after `timeout_s` (a hung
        env) is left behind with a warning: the run's end does not wait on it."""
        if not wait:  # drop every request that waits
            with self._requests.mutex:
                self._requests.queue.clear()
        try:
            self._requests.put(None, timeout=timeout_s)
        except queue.Full:  # the thread is stuck in an evaluation and has not taken the queued one
            pass
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("an evaluation is still running after %g s (a hung env?): not waiting for it", timeout_s)
        return self.results()


class RunEvaluations:
    """A run's evaluations: every train.eval_every_steps on the weights the learner published
    last (in a background thread; skipped while the previous one runs), and a final one. In the
    offline phase of a run with a dataset (env steps do not move), every
    offline.eval_every_updates learner updates and once at its end.

    Args:
        config: the run config (env, learner and train sections).
        redis_url, run: the run's Redis (its weight store).
        counters: the run's counters (env steps now; evaluations done, next one due).
    """

    def __init__(self, config: RunConfig, redis_url: str, run: str, counters: RunCounters):
        self.config, self.redis_url, self.run = config, redis_url, run
        self.counters, self.every = counters, config.train.eval_every_steps
        self.every_updates = config.offline.eval_every_updates
        self._weights: WeightStore | None = None
        self._background: BackgroundEvaluator | None = None
        self._unavailable = False  # the evaluator failed to build: no evaluations in this run

    @property
    def unavailable(self) -> bool:
        """The evaluator failed to build: this run has no more evaluations (`prepare`)."""
        return self._unavailable

    def prepare(self) -> bool:
        """Builds the weight-store reader and the evaluator (torch, the policy, the eval envs).
        Done at the first evaluation, or earlier by the supervisor once the run has started:
        never on the start-up's path, where the driver loading torch would slow the processes
        that start beside it.

        Returns:
            Whether the evaluator is ready. One that fails to build turns this run's evaluations
            off with one warning: the run goes on, and its shards still stop in order.
        """
        if self._background is not None:
            return True
        if self._unavailable:
            return False
        config, train = self.config, self.config.train
        weights = None
        try:
            from learner import WeightStore

            weights = WeightStore(self.redis_url, self.run, config.learner.weights)
            evaluator = Evaluator(
                config.env,
                config.learner,
                train.eval_episodes,
                train.eval_epsilon,
                seed=10_000 + config.actors.seed,
                acting=train.eval_acting,
            )
        except Exception as exc:
            self._unavailable = True
            log.warning("no evaluations in this run: the evaluator could not be built: %s: %s", type(exc).__name__, exc)
            if weights is not None:
                weights.close()
            return False
        except BaseException:
            if weights is not None:
                weights.close()
            raise
        skip = self.config.train.eval_skip_when_busy
        self._weights, self._background = weights, BackgroundEvaluator(evaluator, skip_when_busy=skip)
        return True

    def submit_if_due(self) -> None:
        """Hands the latest published weights to the background thread when an evaluation is due
        (`due_evaluation`: at each multiple of train.eval_every_steps, no drift, no bursts)."""
        counters = self.counters
        scheduled, counters.next_eval = due_evaluation(counters.env_steps, counters.next_eval, self.every)
        if scheduled is None or not self.prepare():
            return
        try:
            fetched = self._weights.fetch(0)
        except (HostAheadError, SupersededReadError) as exc:
            # The learner published twice while the weights were read (a busy machine, frequent
            # publishes): a race, not a fault. Still due, read again at the next round, so that
            # the schedule has no hole (a skipped point would leave "held" unverified).
            log.info("evaluation at %s env steps: weights read again next round (%s)", f"{scheduled:,}", exc)
            counters.next_eval = scheduled
            return
        if fetched is None:  # no weights announced yet: still due, at the next round (not a multiple later)
            counters.next_eval = scheduled
            return
        self._submit(*fetched, scheduled=scheduled)

    def submit_offline_if_due(self) -> None:
        """In the offline phase: an evaluation when counters.updates passed the next threshold."""
        counters, every = self.counters, self.every_updates
        if not every or counters.updates < counters.next_offline_eval:
            return
        counters.next_offline_eval = (counters.updates // every + 1) * every
        if not self.prepare():
            return
        fetched = self._weights.fetch(0)
        if fetched is not None:
            self._submit(*fetched)

    def submit_if_announced(self, version: int) -> bool:
        """Evaluates the learner's weights of `version` (the end of the offline phase) once the
        object store has announced them (it announces a version once its host holds it, which a
        short offline phase can end before). Never waits: one read of the announced version.

        Returns:
            True when there is nothing more to wait for (submitted, or no evaluator); False while
            `version` is not announced yet (the caller asks again at its next round, up to its
            own deadline: ANNOUNCE_WAIT_S).
        """
        if not self.prepare():
            return True
        if self._weights.version() < version:
            return False
        fetched = self._weights.fetch(0)
        if fetched is None:
            return False
        self._submit(*fetched)
        return True

    def _tag(self, version: int, scheduled: int | None = None) -> dict:
        counters = self.counters
        tag = {"env_steps": counters.env_steps, "wall_s": counters.wall_s(), "weights_version": version}
        if scheduled is not None:
            tag["scheduled_env_steps"] = scheduled
        if counters.phase is not None:
            tag |= {"phase": counters.phase, "updates": counters.updates}
        return tag

    def _submit(self, version: int, state: dict, scheduled: int | None = None) -> None:
        tag = self._tag(version, scheduled)
        if not self._background.submit(tag, state, version):  # the previous one still runs: skip this one
            log.info(
                "evaluation at %s env steps, update %s skipped: the evaluator is still busy",
                f"{tag['env_steps']:,}",
                f"{self.counters.updates:,}",
            )

    def finished(self) -> list[EvalRecord]:
        """Evaluations finished since the last call."""
        if self._background is None:
            return []
        return [self._record(tag, result, final=False) for tag, result in self._background.results()]

    def final(self) -> list[EvalRecord]:
        """Waits for a running evaluation, then evaluates the last published weights (unless the
        latest evaluation already was at these env steps). Never raises: what fails is logged and
        the run's stop goes on (its shards still checkpoint)."""
        if self._background is None and not self._published():
            return []  # no evaluation ran and nothing to evaluate: the evaluator is not built for nothing
        if not self.prepare():
            log.warning("no final evaluation: the evaluator could not be built")
            return []
        records = [self._record(tag, result, final=False) for tag, result in self._background.close()]
        if self._background.running:  # its envs are still in use by an evaluation that did not end
            log.warning("no final evaluation: the evaluator is stuck in an earlier one")
            return records
        counters = self.counters
        fetched = None
        try:
            fetched = self._weights.fetch(0)
        except Exception as exc:
            log.warning("no final evaluation: %s", exc)
        last = counters.last_eval
        if fetched is not None and not (last and last[0] == counters.env_steps and counters.phase != "offline"):
            version, state = fetched
            tag = self._tag(version)
            try:
                records.append(self._record(tag, self._background.evaluator.run(state, version), final=True))
            except Exception as exc:
                log.warning("final evaluation failed: %s: %s", type(exc).__name__, exc)
        return records

    def _published(self) -> bool:
        """Whether the learner published weights (asked without building the evaluator); True when
        the store cannot be read, so that the usual path decides and logs."""
        try:
            from learner import WeightStore

            store = WeightStore(self.redis_url, self.run, self.config.learner.weights)
            try:
                return store.version() > 0  # one small GET, not the payload
            finally:
                store.close()
        except Exception:
            return True

    def _record(self, tag: dict, result: EvalResult, final: bool) -> EvalRecord:
        self.counters.evals += 1
        self.counters.last_eval = (tag["env_steps"], result.mean)
        where = f"{tag['env_steps']:,} env steps"
        if tag.get("scheduled_env_steps") is not None:
            where = f"{tag['scheduled_env_steps']:,} env steps (scheduled; weights taken at {tag['env_steps']:,})"
        if tag.get("phase") == "offline":
            where = f"update {tag['updates']:,} (offline phase)"
        print(
            f"eval{' (final)' if final else ''} at {where} (weights v{tag['weights_version']}): "
            f"return {result.mean:.1f} +- {result.std:.1f} over {len(result.returns)} episodes",
            flush=True,
        )
        return EvalRecord(
            **tag,
            final=final,
            mean_return=result.mean,
            std_return=result.std,
            returns=result.returns,
            lengths=result.lengths,
            seconds=round(result.seconds, 3),
        )

    def close(self) -> None:
        """Closes the envs (unless an evaluation stuck in them still runs) and the weight store."""
        if self._background is None:
            return
        if not self._background.running:
            self._background.evaluator.close()
        self._weights.close()


def main_eval(run_dir: str, episodes: int | None, epsilon: float | None, seed: int) -> int:
    """`qfleet eval RUN_DIR`: the newest learner checkpoint, evaluated; prints and writes eval.json."""
    from learner import load_latest_checkpoint, make_agent

    run = RunDir(pathlib.Path(run_dir))
    config = run.load_config()
    loaded = load_latest_checkpoint(run.checkpoints)
    if loaded is None:
        raise ConfigError(f"{run.checkpoints}: no learner checkpoint to evaluate (has the run done any update?)")
    state, path = loaded
    episodes = episodes or config.train.eval_episodes
    epsilon = config.train.eval_epsilon if epsilon is None else epsilon
    evaluator = Evaluator(config.env, config.learner, episodes, epsilon, seed, acting=config.train.eval_acting)
    agent = make_agent(config.learner, evaluator.obs_shape, evaluator.action_space, _cpu())
    agent.load_state_dict(state["agent"])
    updates, version = int(state["counters"]["updates"]), int(state["counters"]["version"])
    print(f"qfleet eval: {config.env.id}, checkpoint {path.name} (update {updates:,}), {episodes} episodes", flush=True)
    result = evaluator.run(agent.policy_state(), version)
    evaluator.close()
    summary = {
        "checkpoint": str(path),
        "updates": updates,
        "env_id": config.env.id,
        "episodes": episodes,
        "epsilon": epsilon,
        "mean_return": result.mean,
        "std_return": result.std,
        "min_return": min(result.returns),
        "max_return": max(result.returns),
        "returns": result.returns,
        "lengths": result.lengths,
        "seconds": round(result.seconds, 3),
    }
    run.write_json("eval.json", summary)
    print(
        f"mean return {result.mean:.2f} +- {result.std:.2f} (min {min(result.returns):g}, max {max(result.returns):g}) "
        f"over {episodes} episodes, mean length {np.mean(result.lengths):.0f}, {result.seconds:.1f} s; "
        f"written to {run.path / 'eval.json'}",
        flush=True,
    )
    return 0


def _cpu():
    import torch

    return torch.device("cpu")
