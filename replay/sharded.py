"""`ShardedReplay`: N replay shards that behave as one replay.

    sharded = ShardedReplay(redis_url="redis://127.0.0.1:6379/0", run="demo")   # discovers shards
    sharded = ShardedReplay(addresses=["127.0.0.1:7001", "127.0.0.1:7002"])      # or names them

Same methods as `ReplayClient` (insert, flush, sample, sample_batches, update_priorities, info).

- **Writers** go to one shard, chosen by rendezvous hashing of the writer id over the live shard
  ids: stable while membership is, and when a shard leaves only its writers move. A writer whose
  shard stops answering (within `failover_after_s`) re-sends its unacknowledged batches to the next
  shard in its order, and returns to its own shard when that one is back.
- **Samples** draw from all shards in parallel. Each batch's per-shard counts are multinomial with
  probabilities proportional to each shard's priority mass (its size, for uniform shards), so
  every item's chance is its share of the *global* mass: the same distribution as one table
  holding everything. Probabilities and importance weights are computed against the global total.
- **Priority updates** go to the shard named in each key.
- **One global samples-per-insert.** With `samples_per_insert` set, `sample` waits until the sum of
  all shards' samples stays within Reverb's window of spi * (sum of all shards' inserts), whatever
  the speed of each writer. The counters ride along on every sample response, so the accounting
  costs no extra round trip until sampling must wait. Shards can still run their own limiter as a
  backstop that makes writers wait when the learner stalls.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass

import numpy as np

from replay import keys as keylib
from replay.client import PriorityUpdateResult, ReplayClient, ReplayInfo, Sample
from replay.errors import DeadlineExceededError, InvalidBatchError, ReplayUnavailableError, SpecMismatchError
from replay.rate_limiter import RateLimiter
from replay.registry import ShardRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardedInfo:
    """`ShardedReplay.info()`: totals over the live shards, and each shard's own info."""

    size: int
    capacity: int
    inserts: int
    samples: int
    priority_mass: float
    dropped_priority_updates: int
    rejected_batches: int
    lost_transitions: int
    """Transitions lost to shard crashes (inserted after a crashed shard's last checkpoint)."""
    achieved_samples_per_insert: float
    """Total samples / total inserts across the shards (0 before any insert)."""
    shards: dict[int, ReplayInfo]


class _Shard:
    """One shard as a ShardedReplay sees it."""

    def __init__(self, shard_id: int, address: str, client: ReplayClient, started_at: float = 0.0):
        self.shard_id = shard_id
        self.address = address
        self.client = client
        self.started_at = started_at
        self.mass = 0.0
        self.size = 0
        self.inserts = 0
        self.samples = 0
        self.failed_at: float | None = None  # set while the shard is taken as down


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenates per-shard parts; a single part is passed through without a copy."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _rendezvous_score(writer_id: str, shard_id: int) -> int:
    digest = hashlib.blake2b(f"{writer_id}/{shard_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class ShardedReplay:
    """Many replay shards behind one client.

    Args:
        redis_url: the run's shard registry; shards are discovered and followed from there.
        run: the run name (registry namespace).
        addresses: instead of a registry, a fixed list of shard addresses.
        writer_id: routes this instance's inserts (stable hash); default: random.
        samples_per_insert: global ratio of sampled to inserted items enforced when sampling;
            None: no ratio.
        min_size: total inserts (all shards) needed before the first sample.
        error_buffer: slack of the global ratio, in items (default as for a shard's limiter).
        beta: default importance-sampling exponent.
        discovery_s: seconds between registry reads (joins and leaves are seen within this).
        failover_after_s: how long a shard may stay unreachable before writers and samplers
            move on without it.
        seed: seeds the per-batch shard allocation.
        max_in_flight: unacknowledged insert batches per shard before `insert` blocks (a shard's
            rate limiter delays acknowledgements, so this bounds how far a writer runs ahead).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        run: str = "default",
        addresses: Sequence[str] | None = None,
        *,
        writer_id: str | None = None,
        samples_per_insert: float | None = None,
        min_size: int = 1,
        error_buffer: float | None = None,
        beta: float = 0.4,
        discovery_s: float = 1.0,
        failover_after_s: float = 0.5,
        seed: int | None = None,
        max_in_flight: int = 32,
    ):
        if (redis_url is None) == (addresses is None):
            raise ValueError("give either redis_url (discover shards) or addresses (fixed shards), not both")
        self._settings = {
            "redis_url": redis_url, "run": run, "addresses": addresses, "writer_id": writer_id,
            "samples_per_insert": samples_per_insert, "min_size": min_size, "error_buffer": error_buffer,
            "beta": beta, "discovery_s": discovery_s, "failover_after_s": failover_after_s, "seed": seed,
            "max_in_flight": max_in_flight,
        }  # fmt: skip
        self.redis_url, self.run = redis_url, run
        self._addresses = list(addresses) if addresses is not None else None
        self.writer_id = writer_id or f"writer-{random.getrandbits(48):012x}"
        self.limiter = RateLimiter(min_size, samples_per_insert, error_buffer)
        self.beta = beta
        self.discovery_s = discovery_s
        self.failover_after_s = failover_after_s
        self.max_in_flight = max_in_flight
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self._shards: dict[int, _Shard] = {}
        self._used_for_writes: set[int] = set()
        self._registry = ShardRegistry(redis_url, run) if redis_url else None
        self._pool = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="sharded-replay")
        self._stop = threading.Event()
        self.failovers = 0
        """Times a shard was found unavailable and left out."""
        self._reserved = 0  # samples admitted by the global limiter whose draw has not returned yet
        self._refresh_membership()
        self._watcher = threading.Thread(target=self._watch, name="sharded-replay-discovery", daemon=True)
        self._watcher.start()

    def __reduce__(self):
        # Pickles as its settings; the copy discovers shards again (and, without an explicit
        # writer_id, picks its own).
        return (_rebuild, (self._settings,))

    # -- membership ------------------------------------------------------------------------------

    def _new_client(self, address: str) -> ReplayClient:
        return ReplayClient(address, retry_for_s=self.failover_after_s, max_in_flight=self.max_in_flight)

    def _refresh_membership(self) -> None:
        """Reads the registry (or probes fixed addresses) and updates the live shard set."""
        if self._registry is not None:
            try:
                records = self._registry.live_shards()
            except ReplayUnavailableError as exc:
                log.warning("%s; keeping the last known shards", exc)
                return
            with self._lock:
                for shard_id in list(self._shards):
                    if shard_id not in records:
                        log.info("shard %d left run %r", shard_id, self.run)
                        self._drop(shard_id)
                for shard_id, record in records.items():
                    shard = self._shards.get(shard_id)
                    if shard is None or shard.address != record.address or shard.started_at != record.started_at:
                        if shard is not None:
                            self._drop(shard_id)
                        log.info("shard %d joined run %r at %s", shard_id, self.run, record.address)
                        self._shards[shard_id] = _Shard(
                            shard_id, record.address, self._new_client(record.address), record.started_at
                        )
            return
        # Fixed addresses: learn each shard's id from Info; a failed shard is probed again.
        for address in self._addresses:
            with self._lock:
                known = next((s for s in self._shards.values() if s.address == address), None)
            if known is not None and known.failed_at is None:
                continue
            client = known.client if known is not None else self._new_client(address)
            try:
                info = client.info(timeout=2.0)
            except ReplayUnavailableError:
                if known is None:
                    client.close()
                continue
            with self._lock:
                other = self._shards.get(info.shard_id)
                if other is not None and other.address != address:
                    raise ValueError(f"shards {other.address} and {address} both have shard id {info.shard_id}")
                if known is None:
                    self._shards[info.shard_id] = _Shard(info.shard_id, address, client)
                else:
                    known.failed_at = None
                    log.info("shard %d at %s is back", info.shard_id, address)

    def _drop(self, shard_id: int) -> None:
        shard = self._shards.pop(shard_id)
        self._pool.submit(shard.client.close)

    def _watch(self) -> None:
        while not self._stop.wait(self.discovery_s):
            try:
                self._refresh_membership()
            except Exception:  # the watcher must outlive any one bad read
                log.exception("shard discovery failed; retrying")

    def _mark_failed(self, shard: _Shard, error: Exception) -> None:
        with self._lock:
            if shard.failed_at is None:
                shard.failed_at = time.monotonic()
                self.failovers += 1
                log.warning(
                    "shard %d at %s unavailable, moving on without it: %s", shard.shard_id, shard.address, error
                )

    def _live(self) -> list[_Shard]:
        with self._lock:
            return [s for s in self._shards.values() if s.failed_at is None]

    def shard_ids(self) -> list[int]:
        """Ids of the shards currently taken as live."""
        return sorted(s.shard_id for s in self._live())

    def wait_for_shards(self, count: int, timeout: float = 30.0) -> list[int]:
        """Waits until at least `count` shards are live; returns their ids.

        Raises:
            ReplayUnavailableError: fewer than `count` within `timeout`.
        """
        deadline = time.monotonic() + timeout
        while len(self._live()) < count:
            if time.monotonic() > deadline:
                raise ReplayUnavailableError(
                    f"only {len(self._live())} of {count} shards live after {timeout}s "
                    f"({self.redis_url or self._addresses}, run {self.run!r})"
                )
            time.sleep(0.05)
            self._refresh_membership()
        return self.shard_ids()

    # -- writes ----------------------------------------------------------------------------------

    def _writer_shard(self) -> _Shard:
        live = self._live()
        if not live:
            self._refresh_membership()
            live = self._live()
            if not live:
                raise ReplayUnavailableError(
                    f"no live replay shard for run {self.run!r} ({self.redis_url or self._addresses})"
                )
        return max(live, key=lambda s: _rendezvous_score(self.writer_id, s.shard_id))

    def insert(self, batch: Mapping[str, np.ndarray], timeout: float | None = None) -> None:
        """Streams a batch to this writer's shard, failing over to the next live one.

        Raises:
            InvalidBatchError / DeadlineExceededError: for an earlier batch (see `flush`).
            ReplayUnavailableError: no shard is live; its `unacknowledged` holds every batch not
                known to be stored (this one included), for the caller to retry or count as lost.
        """
        self._send([batch], timeout)

    def _send(self, batches: list[Mapping[str, np.ndarray]], timeout: float | None) -> None:
        while batches:
            try:
                shard = self._writer_shard()
            except ReplayUnavailableError as exc:
                exc.unacknowledged = batches  # what the caller has lost unless it tries again
                raise
            with self._lock:
                self._used_for_writes.add(shard.shard_id)
            sent = 0
            try:
                for batch in batches:
                    shard.client.insert(batch, timeout)
                    sent += 1
                return
            except ReplayUnavailableError as exc:
                self._mark_failed(shard, exc)
                batches = list(getattr(exc, "unacknowledged", [])) + list(batches[sent:])

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every batch this writer sent is acknowledged (re-sending after failovers)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                used = [self._shards[i] for i in self._used_for_writes if i in self._shards]
            resend: list = []
            for shard in used:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    shard.client.flush(remaining)
                except ReplayUnavailableError as exc:
                    self._mark_failed(shard, exc)
                    resend.extend(getattr(exc, "unacknowledged", []))
            if not resend:
                return
            self._send(resend, None)

    # -- samples ---------------------------------------------------------------------------------

    def _totals(self) -> tuple[int, int]:
        with self._lock:
            shards = list(self._shards.values())
        return sum(s.inserts for s in shards), sum(s.samples for s in shards)

    def _refresh_counters(self) -> None:
        """Reads Info of every live shard in parallel (sizes, masses, counters)."""
        live = self._live()
        results = self._pool.map(lambda s: self._info_or_fail(s), live)
        for shard, info in zip(live, results, strict=True):
            if info is not None:
                self._absorb(shard, info.size, info.priority_mass, info.inserts, info.samples)

    def _info_or_fail(self, shard: _Shard) -> ReplayInfo | None:
        try:
            return shard.client.info(timeout=5.0)
        except ReplayUnavailableError as exc:
            self._mark_failed(shard, exc)
            return None

    @staticmethod
    def _absorb(shard: _Shard, size: int, mass: float, inserts: int, samples: int) -> None:
        shard.size, shard.mass = size, mass
        shard.inserts, shard.samples = max(shard.inserts, inserts), max(shard.samples, samples)

    def _reserve_budget(self, wanted: int, deadline: float | None) -> None:
        """Blocks until the global limiter admits `wanted` samples, and reserves them.

        The reservation makes check-and-draw atomic across this client's threads (a prefetcher
        samples from several); `_release_budget` returns it once the draw's counters are in.
        """
        window = self.limiter.max_diff - self.limiter.min_diff
        if wanted > window:
            raise InvalidBatchError(
                f"a sample of {wanted} items exceeds the global rate limiter's window of {window:.0f}: "
                "raise error_buffer or sample fewer items per call"
            )
        delay = 0.001
        while True:
            with self._lock:
                inserts, samples = self._totals()
                samples += self._reserved
                if self.limiter.sampleable(wanted, inserts, samples) >= wanted and any(
                    s.mass > 0 for s in self._live()
                ):
                    self._reserved += wanted
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceededError(
                    f"global limiter held a sample of {wanted} past its deadline: inserts={inserts} "
                    f"(min_size={self.limiter.min_size}), samples={samples}, "
                    f"samples_per_insert={self.limiter.samples_per_insert}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            self._refresh_counters()

    def sample(self, batch_size: int, *, beta: float | None = None, timeout: float | None = None) -> Sample:
        """Draws one batch from all shards as if they were one table."""
        return self.sample_batches(batch_size, 1, beta=beta, timeout=timeout)[0]

    def sample_batches(
        self, batch_size: int, num_batches: int, *, beta: float | None = None, timeout: float | None = None
    ) -> list[Sample]:
        """Draws `num_batches` batches in one parallel round over the shards.

        Raises:
            DeadlineExceededError: the global limiter (min_size, samples_per_insert) or an empty
                replay held the sample past `timeout` seconds.
            ReplayUnavailableError: no shard answered.
        """
        if batch_size < 1 or num_batches < 1:
            raise InvalidBatchError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
        beta = self.beta if beta is None else beta
        deadline = None if timeout is None else time.monotonic() + timeout
        if not any(s.mass > 0 for s in self._live()):
            self._refresh_counters()
        wanted = batch_size * num_batches
        for _ in range(8):
            self._reserve_budget(wanted, deadline)
            try:
                batches = self._draw(batch_size, num_batches, beta, deadline)
            finally:
                with self._lock:
                    self._reserved -= wanted
            if batches is not None:
                return batches
        raise ReplayUnavailableError(f"sampling failed repeatedly: shards of run {self.run!r} keep going away")

    def _draw(self, batch_size: int, num_batches: int, beta: float, deadline: float | None) -> list[Sample] | None:
        """One parallel draw over the live shards; None if a shard failed midway."""
        live = [s for s in self._live() if s.mass > 0]
        if not live:
            return None
        masses = np.array([s.mass for s in live])
        shares = masses / masses.sum()
        counts = self._rng.multinomial(batch_size, shares, size=num_batches)  # [batch, shard]
        per_shard = counts.sum(axis=0)
        jobs = {
            self._pool.submit(self._sample_shard, shard, int(n), deadline): k
            for k, (shard, n) in enumerate(zip(live, per_shard, strict=True))
            if n > 0
        }
        drawn: dict[int, Sample] = {}
        failed = False
        for job in futures.as_completed(jobs):
            result = job.result()
            if result is None:
                failed = True
            else:
                drawn[jobs[job]] = result
        if failed:
            return None  # a shard went away mid-draw: the caller draws again from the rest
        return self._assemble(live, shares, counts, drawn, beta)

    def _sample_shard(self, shard: _Shard, count: int, deadline: float | None) -> Sample | None:
        remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
        try:
            sample = shard.client.sample(count, timeout=remaining)
        except ReplayUnavailableError as exc:
            self._mark_failed(shard, exc)
            return None
        self._absorb(shard, sample.table_size, sample.priority_mass, sample.inserts, sample.samples)
        return sample

    def _assemble(self, live, shares, counts, drawn: dict[int, Sample], beta: float) -> list[Sample]:
        total_size = sum(s.size for s in live)
        offsets = np.zeros_like(counts)
        offsets[1:] = np.cumsum(counts[:-1], axis=0)
        mass = sum(s.mass for s in live)
        inserts, samples = sum(s.inserts for s in live), sum(s.samples for s in live)
        batches = []
        for b in range(counts.shape[0]):
            parts = [(k, offsets[b, k], counts[b, k]) for k in range(len(live)) if counts[b, k] > 0]
            pick = [(drawn[k], slice(start, start + n), k) for k, start, n in parts]
            data = {name: _join([s.data[name][sl] for s, sl, _ in pick]) for name in pick[0][0].data}
            keys = _join([s.keys[sl] for s, sl, _ in pick])
            # An item's global probability: its shard's share of the mass times its in-shard chance.
            probabilities = np.concatenate([shares[k] * s.probabilities[sl] for s, sl, k in pick])
            weights = (total_size * probabilities) ** (-beta)
            weights /= weights.max()
            batches.append(
                Sample(
                    data=data,
                    keys=keys,
                    probabilities=probabilities,
                    weights=weights,
                    table_size=total_size,
                    priority_mass=mass,
                    inserts=inserts,
                    samples=samples,
                )
            )
        return batches

    # -- priorities ------------------------------------------------------------------------------

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> PriorityUpdateResult:
        """Routes each key's new priority to the shard named in the key.

        Updates for shards that are gone, and stale keys, are dropped and counted.

        Raises:
            InvalidBatchError: lengths differ or a priority is negative or not finite.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if keys.shape != priorities.shape or keys.ndim != 1:
            raise InvalidBatchError(f"keys {keys.shape} and priorities {priorities.shape} must be equal 1-d shapes")
        shard_ids = keylib.shard_of(keys)
        with self._lock:
            shards = dict(self._shards)
        jobs, dropped = [], 0
        for shard_id in np.unique(shard_ids):
            mine = shard_ids == shard_id
            shard = shards.get(int(shard_id))
            if shard is None or shard.failed_at is not None:
                dropped += int(mine.sum())
                continue
            jobs.append((shard, self._pool.submit(shard.client.update_priorities, keys[mine], priorities[mine]), mine))
        applied = 0
        for shard, job, mine in jobs:
            try:
                result = job.result()
            except ReplayUnavailableError as exc:
                self._mark_failed(shard, exc)
                dropped += int(mine.sum())
                continue
            applied += result.applied
            dropped += result.dropped_stale
        return PriorityUpdateResult(applied=applied, dropped_stale=dropped)

    # -- state -----------------------------------------------------------------------------------

    def info(self) -> ShardedInfo:
        """Totals over the live shards plus each one's info."""
        live = self._live()
        infos = {}
        for shard, info in zip(live, self._pool.map(self._info_or_fail, live), strict=True):
            if info is not None:
                self._absorb(shard, info.size, info.priority_mass, info.inserts, info.samples)
                infos[shard.shard_id] = info
        inserts = sum(i.inserts for i in infos.values())
        samples = sum(i.samples for i in infos.values())
        lost = (
            self._registry.lost_total()
            if self._registry is not None
            else sum(i.lost_transitions for i in infos.values())
        )
        specs = {i.spec for i in infos.values()}
        if len(specs) > 1:
            raise SpecMismatchError(f"live shards hold different specs: {sorted(s.to_json() for s in specs)}")
        return ShardedInfo(
            size=sum(i.size for i in infos.values()),
            capacity=sum(i.capacity for i in infos.values()),
            inserts=inserts,
            samples=samples,
            priority_mass=sum(i.priority_mass for i in infos.values()),
            dropped_priority_updates=sum(i.dropped_priority_updates for i in infos.values()),
            rejected_batches=sum(i.rejected_batches for i in infos.values()),
            lost_transitions=lost,
            achieved_samples_per_insert=samples / inserts if inserts else 0.0,
            shards=infos,
        )

    def stats(self) -> dict:
        """Cached counters for metrics and progress lines (no RPC)."""
        inserts, samples = self._totals()
        return {
            "run": self.run,
            "inserts": inserts,
            "samples": samples,
            "achieved_samples_per_insert": samples / inserts if inserts else 0.0,
            "target_samples_per_insert": self.limiter.samples_per_insert or 0.0,
            "live_shards": len(self._live()),
            "failovers": self.failovers,
        }

    def close(self) -> None:
        """Stops discovery and closes every shard client (call `flush` first to wait for acks)."""
        self._stop.set()
        self._watcher.join(timeout=5)
        with self._lock:
            shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            shard.client.close()
        self._pool.shutdown(wait=False)
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> ShardedReplay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rebuild(settings: dict) -> ShardedReplay:
    return ShardedReplay(**settings)
