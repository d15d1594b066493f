"""The learner of a run with everything around it (`LearnerService`), and `qfleet learner run`.

The service is the one wiring of a learner: `qfleet learner run` runs it in the foreground, and
`qfleet train` hosts it in a Ray actor (system/train/hosts.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import threading
import time

from learner import (
    ActionSpace,
    Learner,
    LearnerReached,
    LearnerStatus,
    PhaseMark,
    WeightStore,
    has_checkpoints,
    make_replay,
)
from replay import (
    MixedReplay,
    ReplayCredentials,
    ReplayError,
    ReplayUnavailableError,
    ShardedCollector,
    ShardedReplay,
    start_metrics_server,
)
from system.config import (
    FINISHED,
    OFFLINE,
    ONLINE,
    ConfigError,
    RunConfig,
    batch_mix,
    env_spaces,
    offline_run_name,
    online_batch_items,
    resolve_value_support,
)
from system.local.secrets import use_run_secrets
from system.local.signals import stop_on_signals
from system.services.phases import PhaseDecision, decide_phase

log = logging.getLogger(__name__)

REPORT_EVERY_S = 1.0
"""Seconds between measurements (progress, the status hash in Redis, updates/s on /metrics)."""
ALIGN_WAIT_S = 10.0
"""How long a resumed learner waits for the run's shards before aligning its insert count on them
(bounded: a shard lost for good must not hold the learner back; the shards live then are used)."""


@dataclasses.dataclass(frozen=True)
class LearnerDescription:
    """Where a started learner runs (run.json's "learner")."""

    device: str
    pid: int
    metrics: str
    """host:port of its /metrics ("" when off)."""
    resumed_from: str
    """The checkpoint it resumed from ("" when fresh)."""
    updates: int
    version: int
    resumed_at: int = 0
    """The update it resumed (or, fresh, started) from."""
    updates_lost: int = 0
    """Updates an earlier learner of the run reported beyond the checkpoint resumed from."""
    refused_checkpoints: tuple[str, ...] = ()
    """Newer checkpoints skipped as unreadable ("PATH: why")."""
    fresh: bool = False
    """A new network continues a run that had trained (no good checkpoint): `updates_lost` are
    all of the previous network's."""
    built_at: float | None = None
    """Unix time its constructor ended (the run's "learner" start-up phase, stamped by the same
    process that stamps its first update; None: not known)."""


@dataclasses.dataclass(frozen=True)
class LearnerProgress:
    """The learner's counters at its latest measurement."""

    updates: int
    updates_per_second: float
    version: int
    inserts: int
    """Items inserted into all shards (what the UTD is counted against)."""
    achieved_utd: float
    error: str | None
    """Why the training thread died (None while it is fine)."""
    pid: int = 0
    """The learner's process (another pid: it was restarted)."""
    updates_lost: int = 0
    """This learner's `LearnerDescription.updates_lost`."""
    phase: str = ONLINE
    """"offline" while it trains on the run's dataset alone, "online" once it samples actors'
    data (mixed with the dataset's when the run has one), "finished" once an offline-only run's
    learner made its offline updates (it trains no more)."""
    sample_staleness: float | None = None
    """`Learner.sample_staleness`: versions between the learner and the latest batch's data."""
    sample_age_s: float | None = None
    """`Learner.sample_age_s`: seconds since the latest batch's versions were published."""
    first_update_at: float | None = None
    """Unix time of this process's first update (None before it)."""
    clamped_fraction: float | None = None
    """Share of the latest batch's targets outside the value support (c51, hl_gauss; else None)."""
    offline_until: int | None = None
    """The update at which this learner's offline phase ends (None without one): a fresh learner
    continuing a run counts on from the run's updates, so this is not always offline.updates."""


@dataclasses.dataclass(frozen=True)
class LearnerResult:
    """What a stopped learner did."""

    updates: int
    version: int
    checkpoint: str
    """The final checkpoint ("" when none was written)."""
    error: str | None
    """Why the training thread died (None when it stopped as asked)."""
    updates_per_second: float
    """Over the training thread's whole run (0 when it died)."""
    achieved_utd: float = 0.0
    """Updates per inserted item at the stop (`Learner.achieved_utd`), of the same moment as `updates`."""
    inserts: int = 0
    """The inserts that UTD is of (`Learner.inserts`)."""
    clamped_fraction: float | None = None
    """`LearnerProgress.clamped_fraction` of the last update (None before it, or for a loss
    without a value support)."""


class LearnerService:
    """A learner trained in a background thread: replay source, weight publishing, checkpoints,
    /metrics and the status hash that `qfleet status` reads.

    Args:
        config: the run config (its learner section decides everything the learner does).
        obs_shape, action_space: the env's spaces.
        redis_url, run: the run's Redis.
        checkpoint_dir: learner checkpoints (resumed when present; None: none written).
        replay_credentials: the run's replay token and certificate; None: plaintext shards (a
            required argument: plaintext is always chosen explicitly).
        metrics_host: interface of /metrics; None: no /metrics.
        metrics_port: port of /metrics (0: a free one).
        log_every_s: seconds between the learner's own progress log lines.
        publish_at_resume: publish the resumed weights at once (actors of a resumed run then act
            with them from their first step), not only after publish_every updates.
        reached: how far earlier learners of the run got (from its records; None: a new run).
        restarted: Ray restarted this learner's process (a dead learner of this session).

    With `config.offline.dataset` (a run that `qfleet train` gave offline shards), it trains in
    two phases: `config.offline.updates` updates on the dataset alone (ending with a checkpoint
    and a publish), then on batches that mix the dataset and the online replay by `replay.mix`.
    A resumed learner past the offline updates goes straight to the online phase. The UTD counts
    online updates against online inserts only.

    A continued learner (`reached` given, `restarted`, or a checkpoint to resume) takes the run's
    latest counters from the Redis `reached` hash when present (the most recent report); a new
    run's learner deletes a stale one (a run name reused on a persistent Redis) instead.

    Raises:
        ConfigError: learner settings the replay source refuses.
    """

    def __init__(
        self,
        config: RunConfig,
        obs_shape: tuple[int, ...],
        action_space: ActionSpace,
        redis_url: str,
        run: str,
        checkpoint_dir: str | None,
        metrics_host: str | None = "127.0.0.1",
        metrics_port: int = 0,
        log_every_s: float = 60.0,
        publish_at_resume: bool = False,
        *,
        replay_credentials: ReplayCredentials | None,
        reached: LearnerReached | None = None,
        restarted: bool = False,
    ):
        self.mix = batch_mix(config.offline, config.replay.mix)
        try:
            self.replay = make_replay(
                config.learner,
                redis_url=redis_url,
                run=run,
                credentials=replay_credentials,
                batch_items=online_batch_items(config.learner.batch_size, self.mix),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.offline_replay: ShardedReplay | None = None
        """The run's offline shards (their own registry namespace; None without a dataset)."""
        if self.mix is not None:
            self.offline_replay = ShardedReplay(
                redis_url,
                offline_run_name(run),
                seed=config.learner.seed,
                credentials=replay_credentials,
                same_host_feed=config.learner.prefetch.same_host_feed,  # as the online shards'
            )
        self.offline_updates = config.offline.updates if self.mix is not None else 0
        """Updates of the offline phase (0: none)."""
        self._phase = ONLINE
        self.store = WeightStore(redis_url, run, config.learner.weights)
        self.status = LearnerStatus(redis_url, run)
        self.learner = Learner(
            config.learner,
            self.replay,
            obs_shape,
            action_space,
            run=run,
            weight_store=self.store,
            checkpoint_dir=checkpoint_dir,
            log_every_s=log_every_s,
            reached=self._reached(reached, restarted, checkpoint_dir),
        )
        self.offline_only = self.mix is not None and config.train.total_env_steps == 0
        """An offline-only run: no online phase follows the offline one."""
        self._offline_until = self.learner.updates
        """The update at which the offline phase ends (this learner's update count + the offline
        updates it has left)."""
        if self.mix is not None:
            self._enter_phase(self._decide_phase(reached))
        self._resumed_at = self.learner.updates
        self._align_inserts(config.train.num_shards)
        self.learner.metrics.registry.register(ShardedCollector(self.replay))
        self.metrics_address = ""
        self._http = None
        if metrics_host is not None:
            registry = self.learner.metrics.registry
            self._http = start_metrics_server(metrics_port, metrics_host, registry)
            host = socket.gethostname() if metrics_host == "0.0.0.0" else metrics_host
            self.metrics_address = f"{host}:{self._http.server_port}"
        if publish_at_resume and self.learner.resumed_from is not None:
            self.learner.try_publish()
        self._stop = threading.Event()
        self._summary = None
        self._error: str | None = None
        self.failure: Exception | None = None
        """What ended training, if it failed."""
        self._progress: LearnerProgress | None = None
        self._last_measured = (time.monotonic(), self.learner.updates)
        self._threads: list[threading.Thread] = []
        self.built_at = time.time()

    def _decide_phase(self, reached: LearnerReached | None) -> PhaseDecision:
        """The phase this learner starts in, from its checkpoint's mark and the run's records
        (system/services/phases.py says which wins when they disagree)."""
        learner = self.learner
        mark = learner.resumed_mark if learner.resumed_from is not None else PhaseMark(OFFLINE, 0)  # no network yet
        recorded = reached or LearnerReached()
        decision = decide_phase(
            self.offline_updates, self.offline_only, learner.updates, mark, recorded.phase, recorded.online_from
        )
        if decision.note:
            log.warning("learner phase: %s", decision.note)
        log.info(
            "learner phase %s at update %d: %d offline updates made, %d left",
            decision.phase,
            learner.updates,
            decision.offline_updates,
            decision.offline_left,
        )
        return decision

    def _enter_phase(self, decision: PhaseDecision) -> None:
        self._phase = decision.phase
        self.learner.phase_mark = decision.mark()
        self._offline_until = self.learner.updates + decision.offline_left
        self.learner.utd_from_update = decision.utd_from(self.learner.updates)  # the UTD counts online updates only

    def _reached(self, recorded: LearnerReached | None, restarted: bool, checkpoint_dir: str | None) -> LearnerReached:
        """How far this run's learner got: the records' counters, with the updates the run's Redis
        remembers (more recent) and the highest version of both. A new run forgets what Redis
        remembers of an earlier run of the same name."""
        continued = recorded is not None or restarted or has_checkpoints(checkpoint_dir)
        recorded = recorded or LearnerReached()
        if not continued:
            try:
                self.status.forget_reached()
            except Exception as exc:  # Redis unreachable: the status writes will fail as well
                log.warning("cannot clear an earlier run's learner counters from Redis: %s", exc)
            return recorded
        try:
            remembered = self.status.reached()
        except Exception as exc:  # Redis unreachable: the records still give a floor
            log.warning("cannot read the learner's last counters from Redis: %s", exc)
            remembered = {}
        return dataclasses.replace(
            recorded,
            updates=remembered.get("updates", recorded.updates),
            version=max(recorded.version, remembered.get("weights_version", 0)),
        )

    def _align_inserts(self, num_shards: int) -> None:
        """Aligns a resumed learner's insert count on the shards' (`Learner.align_inserts`), once
        the run's `num_shards` are live (up to ALIGN_WAIT_S): a shard not yet registered would be
        missing from the count, and its inserts counted twice (in the offset, then on its own)."""
        if self.learner.updates == 0:
            return  # a fresh learner: nothing restored to align
        try:
            self.replay.wait_for_shards(num_shards, timeout=ALIGN_WAIT_S)
        except ReplayUnavailableError as exc:
            log.warning("aligning the UTD's inserts on the shards live now: %s", exc)
        except ReplayError as exc:
            log.warning("replay insert count unknown at the start (%s): the UTD counts from the shards'", exc)
            return
        try:
            self.replay.info()  # reads every live shard's counters: the run's inserts, lost ones included
            self.learner.align_inserts(self.replay.stats()["inserts"])
        except ReplayError as exc:
            log.warning("replay insert count unknown at the start (%s): the UTD counts from the shards'", exc)

    def start(self, max_updates: int | None = None) -> LearnerService:
        """Starts training (until `stop()`, or `max_updates` in total) and the status reports."""
        trainer = threading.Thread(target=self._train, args=(max_updates,), name="learner", daemon=True)
        reporter = threading.Thread(target=self._report_loop, name="learner-status", daemon=True)
        self._threads = [trainer, reporter]
        for thread in self._threads:
            thread.start()
        return self

    def training(self) -> bool:
        """Whether the training thread still runs."""
        return bool(self._threads) and self._threads[0].is_alive()

    def _train(self, max_updates: int | None) -> None:
        learner, mixed = self.learner, None
        try:
            if self._phase == FINISHED:
                return
            if self._phase == OFFLINE:
                until = self._offline_until if max_updates is None else min(max_updates, self._offline_until)
                self._summary = learner.run(max_updates=until, stop=self._stop, source=self.offline_replay)
                if learner.updates < self._offline_until:
                    return  # stopped during the offline phase (its checkpoint, marked offline, is the resume point)
                if self.offline_only:
                    log.info("offline phase done at update %d: an offline-only run trains no more", learner.updates)
                    self._phase = FINISHED
                    return
                log.info("offline phase done at update %d: online data from now on", learner.updates)
            if self._stop.is_set() or (max_updates is not None and learner.updates >= max_updates):
                return
            source = None
            if self.mix is not None:
                mixed = source = MixedReplay({name: (self._source(name), self.mix[name]) for name in self.mix})
            if self._phase != ONLINE:  # the offline phase just ended: online from this update on
                offline_updates = learner.phase_mark.offline_updates if learner.phase_mark else 0
                self._enter_phase(PhaseDecision(ONLINE, offline_updates, 0, learner.updates))
            self._summary = learner.run(max_updates=max_updates, stop=self._stop, source=source)
        except Exception as exc:  # reported through `progress` and `stop`
            log.exception("learner failed")
            self.failure = exc
            self._error = f"{type(exc).__name__}: {exc}"
        finally:
            if mixed is not None:
                mixed.close()

    def _source(self, name: str) -> ShardedReplay:
        return self.offline_replay if name == OFFLINE else self.replay

    @property
    def phase(self) -> str:
        """ "offline" (the dataset alone) or "online" (see `LearnerProgress.phase`)."""
        return self._phase

    def _report_loop(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            progress = self._measure()
            try:
                self.status.write(self._status_fields(progress))
            except Exception as exc:  # Redis hiccup: the next report tries again
                log.debug("learner status not written: %s", exc)

    def _measure(self) -> LearnerProgress:
        # The phase before the version: the phase turns online only after the offline phase's final
        # publish, so a measurement saying "online" carries that publish's version or a later one.
        phase = self._phase
        now, updates = time.monotonic(), self.learner.updates
        last_time, last_updates = self._last_measured
        inserts = self.learner.inserts()
        rate = (updates - last_updates) / max(now - last_time, 1e-9)
        self.learner.metrics.updates_per_second.set(rate)  # the loop itself logs (and sets it) rarely
        self._progress = LearnerProgress(
            updates=updates,
            updates_per_second=rate,
            version=self.learner.version,
            inserts=inserts,
            achieved_utd=self.learner.achieved_utd(inserts, updates),  # the updates of the record
            error=self._error,
            pid=os.getpid(),
            updates_lost=self.learner.updates_lost,
            phase=phase,
            sample_staleness=self.learner.sample_staleness,
            sample_age_s=self.learner.sample_age_s,
            first_update_at=self.learner.first_update_at,
            clamped_fraction=last.clamped_fraction if (last := self.learner.last_result) is not None else None,
            offline_until=self._offline_until if self.mix is not None else None,
        )
        self._last_measured = (now, updates)
        return self._progress

    def _status_fields(self, progress: LearnerProgress) -> dict:
        last = self.learner.last_result
        return {
            "updates": progress.updates,
            "updates_per_second": round(progress.updates_per_second, 2),
            "weights_version": progress.version,
            "achieved_utd": round(progress.achieved_utd, 4),
            "target_utd": self.learner.config.updates_per_env_step,
            "loss": round(float(last.loss), 6) if last is not None else "",
            "q_mean": round(float(last.q_mean), 4) if last is not None else "",
            "policy_loss": round(float(last.policy_loss), 6)
            if last is not None and last.policy_loss is not None
            else "",
            "imitation_weight": (
                round(float(last.imitation_weight), 4) if last is not None and last.imitation_weight is not None else ""
            ),
            "clamped_fraction": (
                round(float(last.clamped_fraction), 4) if last is not None and last.clamped_fraction is not None else ""
            ),
            "device": str(self.learner.device),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "metrics": self.metrics_address,
            "phase": self._phase,
        }

    def describe(self) -> LearnerDescription:
        """Device, pid, metrics address and where it resumed from."""
        return LearnerDescription(
            device=str(self.learner.device),
            pid=os.getpid(),
            metrics=self.metrics_address,
            resumed_from=str(self.learner.resumed_from or ""),
            updates=self.learner.updates,
            version=self.learner.version,
            resumed_at=self._resumed_at,
            updates_lost=self.learner.updates_lost,
            refused_checkpoints=tuple(self.learner.refused_checkpoints),
            fresh=self.learner.fresh,
            built_at=self.built_at,
        )

    def progress(self) -> LearnerProgress:
        """The latest measurement (taken every REPORT_EVERY_S), with the current `error` (its phase
        is the measurement's: one with its version, see `_measure`)."""
        progress = self._progress or self._measure()
        return LearnerProgress(**{**vars(progress), "error": self._error})

    def stop(self) -> LearnerResult:
        """Ends training after the current update (it publishes and checkpoints), closes everything."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        summary = self._summary
        updates, inserts = self.learner.updates, self.learner.inserts()
        result = LearnerResult(
            updates=updates,
            version=self.learner.version,
            checkpoint=str(summary.checkpoint) if summary and summary.checkpoint else "",
            error=self._error,
            updates_per_second=summary.updates_per_second if summary else 0.0,
            achieved_utd=self.learner.achieved_utd(inserts, updates),
            inserts=inserts,
            clamped_fraction=last.clamped_fraction if (last := self.learner.last_result) is not None else None,
        )
        self.replay.close()
        if self.offline_replay is not None:
            self.offline_replay.close()
        self.store.close()
        self.status.close()
        if self._http is not None:
            self._http.close()
        return result


def run_learner(
    config: RunConfig,
    redis_url: str,
    run: str,
    checkpoint_dir: str | None,
    max_updates: int | None,
    metrics_port: int | None,
    log_every_s: float,
    insecure: bool = False,
) -> int:
    """Entry of `qfleet learner run` after argument parsing; returns the exit code.

    Raises:
        ConfigError: a bad config, or no replay credentials in the environment without --insecure.
    """
    from system.services.credentials import service_credentials

    if config.offline.enabled:
        raise ConfigError(
            f"offline.dataset={config.offline.dataset!r}: the dataset's shards are loaded by qfleet train; "
            "qfleet learner run learns from online replay only (leave offline.dataset null)"
        )
    spaces = env_spaces(config.env)
    config = resolve_value_support(config)  # the same numbers as the actors' (a seeded probe)
    credentials = service_credentials("qfleet learner run", insecure)
    use_run_secrets(redis_url)
    stop = stop_on_signals(log, "stopping after this update (publish + checkpoint)")
    service = LearnerService(
        config,
        spaces.obs_shape,
        spaces.action_space,
        redis_url,
        run,
        checkpoint_dir,
        metrics_host=None if metrics_port is None else "127.0.0.1",
        metrics_port=metrics_port or 0,
        log_every_s=log_every_s,
        replay_credentials=credentials,
    )
    described = service.describe()
    metrics = f"http://{described.metrics}/metrics" if described.metrics else "off"
    where = f"resumed at update {described.updates}" if described.resumed_from else "fresh"
    print(f"qfleet learner: run {run!r} on {described.device} ({where}); metrics {metrics}", flush=True)
    service.start(max_updates)
    while service.training() and not stop.wait(0.2):
        pass
    result = service.stop()
    log.info(
        "stopped at update %d (weights v%d, %.1f updates/s); checkpoint %s",
        result.updates,
        result.version,
        result.updates_per_second,
        result.checkpoint or None,
    )
    if isinstance(service.failure, ReplayError):
        raise service.failure  # the CLI's exit code and message for replay errors (a spec mismatch: 2)
    if result.error:
        print(f"qfleet learner: {result.error}", file=sys.stderr, flush=True)
        return 1
    return 0
