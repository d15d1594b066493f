"""The learner's training loop: `Learner.run` takes prefetched batches and calls `step` on each.

    replay = make_replay(config, redis_url=..., run=..., credentials=...)   # enforces the UTD through the replay
    learner = Learner(config, replay, obs_shape, ActionSpace(num_actions=2), run=..., weight_store=...)
    learner.run(max_updates=100_000, stop=stop_event)

The UTD is held by the replay (samples_per_insert = updates_per_env_step * batch_size): sampling
waits until actors have inserted enough, so the learner never over-trains on a stale buffer.
"""

from __future__ import annotations

import logging
import pathlib
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from learner import checkpoint as ckpt
from learner.agent import Agent, UpdateResult
from learner.agents import make_agent
from learner.config import LearnerConfig, resolve_device
from learner.errors import CheckpointLossError, CheckpointShapeError, CheckpointSupportError, WeightStoreError
from learner.metrics import LearnerMetrics
from learner.phase_mark import OFFLINE_PHASE, PhaseMark
from learner.publish_times import PublishTimes
from learner.sample_window import sample_error_buffer
from learner.spaces import ActionSpace
from learner.value_support import CLAMPED_WARNING_FRACTION
from learner.weights import WeightStore
from replay import (
    Prefetcher,
    PriorityCounts,
    ReplayCredentials,
    ReplayError,
    ReplaySource,
    ShardedReplay,
    TorchBatch,
    keep_freed_memory,
)

log = logging.getLogger(__name__)

PUBLISH_MEMORY = 1000
"""Publish times kept for the sample-age metric; older versions count from the learner's start."""


VERSION_READ_S = 30.0
"""How long a starting learner retries reading the published weights version."""

VERSION_SAFETY_STEP = 1000
"""A resumed learner that cannot read the published version continues this far above the highest
version it knows (checkpoint, run records): above anything published since, in practice."""


def make_replay(
    config: LearnerConfig,
    redis_url: str | None = None,
    run: str = "default",
    addresses: list[str] | None = None,
    *,
    credentials: ReplayCredentials | None,
    batch_items: int | None = None,
) -> ShardedReplay:
    """The learner's view of the sharded replay, with the global ratio that realises the UTD.

    `credentials`: the run's replay token and certificate (None: shards that serve plaintext;
    required, so that plaintext is a choice made at the call site). `batch_items`: items each
    update samples from this replay (default batch_size; the online share of a mixed batch), so
    that the ratio holds updates_per_env_step updates per inserted item.
    """
    return ShardedReplay(
        redis_url,
        run,
        addresses,
        samples_per_insert=config.updates_per_env_step * (batch_items or config.batch_size),
        min_size=config.learning_starts,
        error_buffer=sample_error_buffer(config),
        seed=config.seed,
        credentials=credentials,
        same_host_feed=config.prefetch.same_host_feed,
    )


@dataclass(frozen=True)
class LearnerReached:
    """How far earlier learners of a run got (the counters last reported), so that a resumed or
    restarted learner continues above them: weights versions only grow, and the updates it cannot
    restore are counted as lost. A fresh learner (no good checkpoint, allowed explicitly) starts
    its counters here, so the run's update count and UTD go on where they were."""

    updates: int = 0
    version: int = 0
    inserts: int = 0
    """Items inserted into the replay (what the UTD is counted against)."""
    fresh_from: int = 0
    """The update at which the run's current network started (the last fresh learner's start; 0:
    the run's start): a learner that must start fresh again loses the updates since then."""
    phase: str | None = None
    """The phase the run's records (state.json) put it in: "offline", "online", or None (a run
    without an offline phase, or not recorded yet)."""
    online_from: int | None = None
    """The learner update at which the records say the online phase began (None: not recorded)."""


@dataclass(frozen=True)
class LearnerSummary:
    """What a `run` did."""

    updates: int
    version: int
    seconds: float
    updates_per_second: float
    checkpoint: pathlib.Path | None


class Learner:
    """Trains an agent from a replay source, publishes its weights and checkpoints itself.

    Args:
        config: the learner section.
        replay: what to train from (a `ShardedReplay`, `ReplayClient` or `MixedReplay`).
        obs_shape: per-item observation shape.
        action_space: what the agent acts on.
        run: run name (metrics label).
        weight_store: where weights are published; None: not published.
        checkpoint_dir: where checkpoints go; an existing checkpoint there is resumed.
        metrics: the metrics to update (default: a fresh registry).
        log_every_s: seconds between progress lines.
        reached: how far earlier learners of the run got (see `LearnerReached`).
    """

    def __init__(
        self,
        config: LearnerConfig,
        replay: ReplaySource,
        obs_shape: tuple[int, ...],
        action_space: ActionSpace,
        *,
        run: str = "default",
        weight_store: WeightStore | None = None,
        checkpoint_dir: str | pathlib.Path | None = None,
        metrics: LearnerMetrics | None = None,
        log_every_s: float = 10.0,
        reached: LearnerReached | None = None,
    ):
        self.config, self.replay, self.run_name = config, replay, run
        keep_freed_memory()  # received batches are large buffers, freed after each update
        self.device = resolve_device(config.device)
        self.agent: Agent = make_agent(config, tuple(obs_shape), action_space, self.device)
        self.weight_store = weight_store
        self.checkpoint_dir = pathlib.Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.metrics = metrics or LearnerMetrics(run)
        self.metrics.target_utd.set(config.updates_per_env_step)
        self.log_every_s = log_every_s
        self.rng = np.random.default_rng(config.seed)
        self.updates = 0
        self.version = 0
        self._published_at = PublishTimes(PUBLISH_MEMORY)  # the last PUBLISH_MEMORY versions' publish times
        self.resumed_from: pathlib.Path | None = None
        self.refused_checkpoints: list[str] = []
        """Why newer checkpoints were skipped at the resume ("PATH: why")."""
        self.updates_lost = 0
        """Updates an earlier learner of the run reported beyond the checkpoint resumed from (all
        of its network's updates when no checkpoint was good: see `fresh`)."""
        self.fresh = False
        """A new network continues a run that had trained (no good checkpoint)."""
        self._reached = reached or LearnerReached()
        self._base_inserts = 0  # the inserts the restored updates were counted against
        self.phase_mark: PhaseMark | None = None
        """Where the learner stands in a run with an offline phase (set by its runner; None: a run
        without one): written into every checkpoint. In the offline phase each update counts in
        its `offline_updates`."""
        self.resumed_mark: PhaseMark | None = None
        """The `PhaseMark` of the checkpoint resumed from (None: none, or it had none)."""
        self.utd_from_update = 0
        """Updates made before the replay's data counted (a run's offline phase, on a dataset alone):
        the UTD is (updates - utd_from_update) / inserts."""
        self.inserts_offset = 0
        """Added to the replay's insert count: inserts the shards no longer count (they came back
        empty) but the restored updates were made against (see `align_inserts`)."""
        self._last_checkpoint = time.monotonic()
        self._publish_failing = False
        self.last_result: UpdateResult | None = None
        """The `UpdateResult` of the latest update (loss, q_mean, ...), None before the first."""
        self._priorities: ReplaySource | None = None  # where `run` streams priorities, while it runs
        self.priority_counts: PriorityCounts | None = None
        """What became of the priorities sent to the source so far (applied, stale, lost), as of
        the end of the last `run`: the source's counts, cumulative over its life, not per `run`."""
        self.sample_staleness: float | None = None
        """Weights versions between this learner and the actors' versions that produced the latest
        batch (its mean; None before a batch of actors' data): the policy_staleness gauge."""
        self.sample_age_s: float | None = None
        """Seconds since those versions were published (mean over the batch's transitions, version 0
        left out: see `sample_age`): the sample_age_seconds gauge."""
        self.first_update_at: float | None = None
        """Unix time of this learner's first update (None before it): the run's start-up breakdown."""
        self.clamped_warned = False
        """Whether the learner has warned that the value support clamps targets (it warns once)."""
        self._last_log = (time.perf_counter(), self.updates)  # (time, updates) of the last progress line
        if self.checkpoint_dir is not None:
            self._resume()
        self._set_learning_rate()  # a resumed run: the configured rate, not its checkpoint's
        self._continue_versions()

    # -- the loop --------------------------------------------------------------------------------

    def run(
        self, max_updates: int | None = None, stop: threading.Event | None = None, source: ReplaySource | None = None
    ) -> LearnerSummary:
        """Trains until `max_updates` (total, resumes included) or until `stop` is set.

        Args:
            source: what batches are drawn from (and priorities go back to); default the learner's
                replay. A run's offline phase draws from its dataset, its online phase from a mix;
                the UTD always counts the learner's replay's inserts.
        """
        stop = stop or threading.Event()
        config = self.config
        source = self.replay if source is None else source
        prefetcher = Prefetcher(
            source,
            config.batch_size,
            depth=config.prefetch.depth,
            threads=2,
            batches_per_request=config.prefetch.batches_per_request,
            device=self.device,
        )
        self._priorities = source
        started, first_update = time.perf_counter(), self.updates
        self._last_log = (started, self.updates)
        try:
            while not stop.is_set() and (max_updates is None or self.updates < max_updates):
                batch = self._next_batch(prefetcher, stop)
                if batch is None:
                    break
                self.step(batch)
                prefetcher.release(batch)  # freed on a sampler thread, off this one
        finally:
            prefetcher.close()
            self._priorities = None
            self._flush_priorities(source)
        path = None
        if self.updates > first_update:
            # The checkpoint first: it needs no Redis, so a dead Redis cannot cost the training.
            path = self.checkpoint() if self.checkpoint_dir is not None else None
            try:
                self.publish()
            except WeightStoreError as exc:
                log.warning("final weights not published (the checkpoint holds them): %s", exc)
        seconds = time.perf_counter() - started
        done = self.updates - first_update
        return LearnerSummary(self.updates, self.version, seconds, done / seconds if seconds else 0.0, path)

    def step(self, batch: TorchBatch) -> UpdateResult:
        """Exactly one update on `batch`: the agent's gradient step, new priorities sent back,
        target/reset bookkeeping, a publish and a checkpoint when due, counters and metrics.

        Inside `run` priorities are streamed (`send_priorities`: coalesced, never waited for
        unless the shard falls `max_in_flight` updates behind); a step called on its own sends them
        synchronously (and not at all without a replay, nor for a loss without TD errors).
        """
        config = self.config
        result = self.agent.update(batch.data, batch.weights)
        if result.td_abs is not None:  # None: the loss has no TD error; items keep their priorities
            priorities = result.td_abs + config.priority_eps
            if self._priorities is not None:
                try:
                    self._priorities.send_priorities(batch.keys, priorities)
                except ReplayError as exc:  # priorities are advisory: a failed update must not stop training
                    log.warning("priority update failed (counted lost): %s", exc)
            elif self.replay is not None:
                self.replay.update_priorities(batch.keys, priorities)
        self.updates += 1
        mark = self.phase_mark
        if mark is not None and mark.phase == OFFLINE_PHASE:
            self.phase_mark = PhaseMark(OFFLINE_PHASE, mark.offline_updates + 1)
        if self.first_update_at is None:
            self.first_update_at = time.time()
        if self.agent.after_update(self.updates):
            self.metrics.resets.inc()
        if config.optimizer.lr_schedule != "constant":  # a constant rate was set once, at the start
            self._set_learning_rate()
        if self.updates % config.publish_every == 0:
            self.try_publish()
        if self.checkpoint_dir is not None and self._checkpoint_due():
            self.checkpoint()
        self._record(result, batch)
        return result

    def _flush_priorities(self, source: ReplaySource) -> None:
        """Waits (up to 30 s) for the answers to the priorities `run` sent, and keeps the counts."""
        try:
            self.priority_counts = source.flush_priorities(timeout=30.0)
        except ReplayError as exc:
            log.warning("priority updates not all answered: %s", exc)
        if self.priority_counts is not None and self.priority_counts.lost:
            log.warning("%d priority updates lost (their shard failed or left)", self.priority_counts.lost)

    def _next_batch(self, prefetcher: Prefetcher, stop: threading.Event):
        waited = time.perf_counter()
        while not stop.is_set():
            try:
                batch = prefetcher.get(timeout=0.25)
            except queue.Empty:
                continue
            self.metrics.data_wait.inc(time.perf_counter() - waited)
            return batch
        return None

    # -- weights, checkpoints, metrics ---------------------------------------------------------------

    def publish(self) -> int:
        """Publishes the policy as the next version (when a store is configured)."""
        if self.weight_store is None:
            return self.version
        self.version += 1
        self.weight_store.publish(self.agent.policy_state(), self.version)
        self._published_at.record(self.version, time.time())
        self.metrics.weight_version.set(self.version)
        return self.version

    def sample_age(self, versions: np.ndarray, now: float) -> float | None:
        """Seconds since the weights behind each sampled transition were published, mean over the
        transitions (not over their distinct versions); None when none of them came from published
        weights. Version 0 (the actors' initial weights, never published by this learner) has no
        age and is left out; a version older than the last PUBLISH_MEMORY is aged from the oldest
        publication remembered (a lower bound), never from the learner's start (`PublishTimes.age`:
        vectorised, as it runs on every update)."""
        return self._published_at.age(versions, now)

    def inserts(self) -> int:
        """Items inserted into the replay over the run, as the UTD counts them: those a shard
        acknowledged and lost to a crash too (the replay's `stats` counts them)."""
        return (self.replay.stats()["inserts"] if self.replay is not None else 0) + self.inserts_offset

    def achieved_utd(self, inserts: int | None = None, updates: int | None = None) -> float:
        """Updates per inserted item (0 before any insert); updates before `utd_from_update` not
        counted. `updates` (default: now's) and `inserts` let a report take both at its moment."""
        inserts = self.inserts() if inserts is None else inserts
        updates = self.updates if updates is None else updates
        return max(0, updates - self.utd_from_update) / inserts if inserts else 0.0

    def align_inserts(self, replay_inserts: int) -> None:
        """Counts the UTD on from where the restored updates were: when the shards now count fewer
        inserts than the checkpoint's (they came back empty after a crash and could not tell what
        they lost), the difference is added.

        Args:
            replay_inserts: the replay's insert count now, as `inserts` counts them (read once the
                shards are reachable).
        """
        self.inserts_offset = max(0, self._base_inserts - replay_inserts)

    def _checkpoint_due(self) -> bool:
        config = self.config
        if self.updates % config.checkpoint_every == 0:
            return True
        every_s = config.checkpoint_every_s
        return every_s is not None and time.monotonic() - self._last_checkpoint >= every_s

    def try_publish(self) -> None:
        """A publish during training: a Redis gap costs actors fresh weights (they act on their
        last ones meanwhile), not the training; warned once per gap."""
        try:
            self.publish()
        except WeightStoreError as exc:
            if not self._publish_failing:
                log.warning("weights not published (retried every publish_every updates): %s", exc)
            self._publish_failing = True
            return
        if self._publish_failing:
            log.info("weights published again (v%d)", self.version)
        self._publish_failing = False

    def checkpoint(self) -> pathlib.Path:
        """Writes a checkpoint of everything `resume` needs."""
        state = {
            "loss": self.config.loss,
            "value_support": value_support_of(self.config),
            "agent": self.agent.state_dict(),
            "counters": {"updates": self.updates, "version": self.version, "inserts": self.inserts()},
            "rng": ckpt.rng_state(self.rng),
        }
        if self.phase_mark is not None:
            state["phase"] = self.phase_mark.to_state()
        path = ckpt.save(self.checkpoint_dir, state, self.updates)
        self._last_checkpoint = time.monotonic()
        log.info("learner checkpoint at update %d: %s", self.updates, path)
        return path

    def _resume(self) -> None:
        found = ckpt.find(self.checkpoint_dir)
        self.refused_checkpoints = found.refused
        reached = self._reached
        if found.path is None:  # a fresh learner: the run's counters go on where they were
            self.updates, self._base_inserts = reached.updates, reached.inserts
            self.fresh = reached.updates > 0 or bool(found.refused)
            self.updates_lost = max(0, reached.updates - reached.fresh_from)
            if self.fresh:
                log.warning(
                    "no good learner checkpoint: a fresh network continues from update %d (%d updates lost)",
                    self.updates,
                    self.updates_lost,
                )
            return
        state = found.state
        self._load_agent(state, found.path)
        counters = state["counters"]
        self.updates = int(counters["updates"])
        self.version = int(counters["version"])
        self._base_inserts = int(counters.get("inserts", 0))
        ckpt.restore_rng(state["rng"], self.rng)
        self.resumed_mark = PhaseMark.from_state(state)
        self.metrics.updates.inc(self.updates)
        self.resumed_from = found.path
        self.updates_lost = max(0, reached.updates - self.updates)
        if self.updates_lost:
            log.warning(
                "learner resumed at update %d from %s: the %d updates since that checkpoint are lost",
                self.updates,
                found.path,
                self.updates_lost,
            )
        else:
            log.info(
                "resumed learner at update %d, weights version %d, from %s", self.updates, self.version, found.path
            )

    def _set_learning_rate(self) -> None:
        """The next update's learning rate, from the config and `updates`, on the agent and its gauge."""
        self.metrics.learning_rate.set(self.agent.set_learning_rate(self.updates))

    def _load_agent(self, state: dict, path: pathlib.Path) -> None:
        """Restores the agent from a checkpoint written under the configured `learner.loss`.

        Raises:
            CheckpointSupportError: its heads were trained on another value support.
            CheckpointShapeError: its networks have other sizes than the configured ones.
            CheckpointLossError: it was written under another loss (or, from before losses were
                recorded, its parts do not fit this agent).
        """
        saved_loss = state.get("loss")
        if saved_loss is not None and saved_loss != self.config.loss:
            raise CheckpointLossError(str(path), saved_loss, self.config.loss)
        saved_support, configured_support = state.get("value_support"), value_support_of(self.config)
        if saved_support and configured_support and saved_support != configured_support:
            raise CheckpointSupportError(str(path), saved_support, configured_support)
        try:
            self.agent.load_state_dict(state["agent"])
        except (KeyError, RuntimeError) as exc:
            detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            if saved_loss is not None and isinstance(exc, RuntimeError):
                raise CheckpointShapeError(str(path), detail) from exc
            if saved_loss is not None:
                raise
            raise CheckpointLossError(str(path), None, self.config.loss, detail) from exc

    def _continue_versions(self) -> None:
        """The next published version is above every version published before (by an earlier
        learner of the run, whose weights actors may hold), so versions only grow. The published
        version is read for up to VERSION_READ_S (once for a brand-new learner); when Redis stays
        unreadable, a continued learner jumps VERSION_SAFETY_STEP above the highest version it
        knows, so it never reuses a number an earlier learner published after its checkpoint."""
        known = max(self.version, self._reached.version)
        if self.weight_store is None:
            self.version = known
        else:
            continued = self.resumed_from is not None or self.updates > 0 or known > 0
            published = self._published_version(VERSION_READ_S if continued else 0.0)
            if published is None:
                self.version = known + VERSION_SAFETY_STEP if continued else known
                log.warning("published weights version unknown: continuing from v%d", self.version)
            else:
                self.version = max(known, published)
        self.metrics.weight_version.set(self.version)

    def _published_version(self, retry_s: float) -> int | None:
        """The published version, read for up to `retry_s`; None when Redis stays unreachable."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return self.weight_store.version()
            except WeightStoreError as exc:
                if time.monotonic() >= deadline:
                    log.warning("cannot read the published weights version (%.0f s of tries): %s", retry_s, exc)
                    return None
            time.sleep(0.5)

    def _record(self, result: UpdateResult, batch: TorchBatch) -> None:
        self.last_result = result
        metrics = self.metrics
        metrics.updates.inc()
        metrics.loss.set(result.loss)
        metrics.q_mean.set(result.q_mean)
        td_error = float(result.td_abs.mean()) if result.td_abs is not None else None
        if td_error is not None:
            metrics.td_error.set(td_error)
        metrics.grad_norm.set(result.grad_norm)
        metrics.set_policy(result.policy_loss, result.imitation_weight)
        if result.clamped_fraction is not None:
            metrics.clamped_target_fraction.set(result.clamped_fraction)
            if result.clamped_fraction > CLAMPED_WARNING_FRACTION and not self.clamped_warned:
                self.clamped_warned = True
                log.warning(clamped_warning(result.clamped_fraction, self.config))
        versions = batch.sample.data.get("policy_version")
        if versions is not None:
            versions = versions[versions >= 0]  # offline data (-1) was made by no version of this learner
        if versions is not None and len(versions):
            self.sample_staleness = self.version - float(np.mean(versions))
            metrics.policy_staleness.set(self.sample_staleness)
            age = self.sample_age(versions, time.time())
            if age is not None:
                self.sample_age_s = age
                metrics.sample_age.set(age)
        inserts = self.inserts()
        if inserts:
            metrics.achieved_utd.set(self.achieved_utd(inserts))
        now = time.perf_counter()
        last_time, last_updates = self._last_log
        if now - last_time >= self.log_every_s:
            rate = (self.updates - last_updates) / (now - last_time)
            metrics.updates_per_second.set(rate)
            policy = ""
            if result.policy_loss is not None:
                policy = f" | pi loss {result.policy_loss:.4f}"
            if result.imitation_weight is not None:
                policy += f" | imitation weight {result.imitation_weight:.3f}"
            if result.clamped_fraction is not None and result.clamped_fraction > CLAMPED_WARNING_FRACTION:
                policy += f" | clamped targets {result.clamped_fraction:.0%}"
            log.info(
                "updates %d (%.1f/s) | loss %.4f | q %.3f | |td| %s%s | utd %s/%g | weights v%d",
                self.updates,
                rate,
                result.loss,
                result.q_mean,
                f"{td_error:.3f}" if td_error is not None else "-",
                policy,
                f"{self.achieved_utd(inserts):.3f}" if inserts else "-",
                self.config.updates_per_env_step,
                self.version,
            )
            self._last_log = (now, self.updates)


def value_support_of(config: LearnerConfig) -> dict:
    """The value support a distributional learner's heads are trained on, as checkpointed (v_min,
    v_max, num_bins, value_transform); empty for losses without one (or an unresolved support)."""
    support = config.distributional
    if config.loss not in ("c51", "hl_gauss") or not support.resolved:
        return {}
    v_min, v_max = support.bounds()
    return {"v_min": v_min, "v_max": v_max, "num_bins": support.num_bins, "value_transform": support.value_transform}


def clamped_warning(fraction: float, config: LearnerConfig) -> str:
    """What the learner says (once) when the value support clamps more than
    CLAMPED_WARNING_FRACTION of a batch's targets."""
    support = config.distributional
    advice = (
        "random play did not see these returns: set learner.v_min/v_max to numbers that hold them, or use "
        "learner.value_transform=symlog with a wide range"
        if support.derived
        else "set learner.v_min/v_max to auto (derived from the env) or to a range that holds them"
    )
    return (
        f"{fraction:.0%} of a batch's targets fell outside the value support [learner.v_min={support.v_min}, "
        f"learner.v_max={support.v_max}] and were clamped onto it: the learner cannot represent these returns; "
        f"{advice}"
    )
