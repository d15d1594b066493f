"""`Membership`: which replay shards a sharded client uses, and which of them are live.

Shards come from the run's registry (followed by a watcher thread every `discovery_s`) or from a
fixed list of addresses (each shard's id learnt from its Info). A shard that fails a call is
taken as down until the registry or a probe shows it back. A fixed address whose shard refuses
this client's credentials (a wrong token, or a failed TLS handshake) is an error at construction;
found later by the watcher, it is logged once and reported by the calls that find no live shard.
Once the client samples, the watcher
also re-reads every live shard's counters each `discovery_s`: sample responses refresh only the
shards drawn from, so a shard first seen empty would otherwise never be drawn from at all.

The counters summed (`totals`) are the run's: a shard id's inserts and samples go on over its
restarts and after it leaves (see `ShardHandle.counted`), so that the global samples-per-insert
window and the learner's UTD neither jump nor give a burst of samples when a shard is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass

from replay.client import ReplayClient, ReplayInfo
from replay.config import ShardedReplayConfig
from replay.errors import DeadlineExceededError, ReplayAuthenticationError, ReplayUnavailableError
from replay.priority_stream import PriorityCounts
from replay.redis_connection import redact_url
from replay.registry import ShardRegistry
from replay.selectors import uses_priorities

log = logging.getLogger(__name__)

REGISTRY_WARNING_EVERY_S = 30.0
"""While the registry stays unreachable, its warning repeats at most this often (the watcher reads
it every `discovery_s`)."""


@dataclass(frozen=True)
class _Earlier:
    """What the earlier processes of a shard id served, as last seen, until a new process's first
    Info says what it restored."""

    counted: tuple[int, int]
    """Their (inserts, samples) over the run (`ShardHandle.counted`)."""
    samples: int
    """The last process's own samples counter."""
    carried_samples: int
    """Samples of processes before the last one that it did not restore."""


class ShardHandle:
    """One shard as a sharded client sees it: its client and its last seen counters.

    A shard id's counts go on over its restarts (`counted`): a process that comes back empty, or
    from an older checkpoint, reports fewer inserts and samples than its predecessor served. The
    inserts it lost are in its Info (`lost_transitions`, from its ledger or the registry); what
    its predecessors counted beyond that and beyond what it restored is carried here. A restart
    is told by a new handle (`previous`: the shard id's earlier handle) or, within one handle
    (a fixed address, or a restart the registry has not shown yet), by a new `boot_id` in a
    response. Until the new process's first Info, `counted` is the predecessors'.

    Responses arrive on several threads (draws, the watcher): one lock orders them and `counted`.
    """

    def __init__(
        self,
        shard_id: int,
        address: str,
        client: ReplayClient,
        started_at: float = 0.0,
        previous: ShardHandle | None = None,
    ):
        self.shard_id = shard_id
        self.address = address
        self.client = client
        self.started_at = started_at
        self._lock = threading.Lock()
        self.mass = 0.0
        self.size = 0
        self.inserts = 0
        self.samples = 0
        self.lost = 0
        """Transitions this shard id acknowledged and lost to its crashes (its last Info)."""
        self.carried_inserts = 0
        """Inserts earlier processes of this shard id counted that this one's inserts and `lost`
        do not (its `lost` started again from 0: a ledger moved aside, a registry state lost)."""
        self.carried_samples = 0
        """Samples earlier processes of this shard id served that this one did not restore."""
        self.boot_id = 0
        """The current process's boot id (0 until a response carries one)."""
        self._retired: set[int] = set()  # boot ids of earlier processes: their late answers are ignored
        self._earlier = None
        if previous is not None:
            # Its boot id may be the old process's or, if it saw a response of the new one, the new
            # one's: a response with another id folds as within one handle, and either way the
            # counts up to the restart are counted once.
            with previous._lock:
                self._earlier = previous._earlier_locked()
                self.boot_id, self._retired = previous.boot_id, set(previous._retired)
        self.failed_at: float | None = None  # set while the shard is taken as down
        self.writers_waiting = False
        """Its last Info: inserts wait on its own rate limiter (its writers are held back)."""
        self.uses_priorities = True
        """Its last Info: its selector draws by priority (until an Info says it draws uniformly,
        priorities are sent: a shard that discards them costs only the sending)."""

    def _earlier_locked(self) -> _Earlier:
        if self._earlier is not None:  # this process never had an Info: its predecessors' counts
            return self._earlier
        return _Earlier(self._counted_locked(), self.samples, self.carried_samples)

    def absorb(
        self,
        size: int,
        mass: float,
        inserts: int,
        samples: int,
        lost: int | None = None,
        boot_id: int = 0,
        selector: str | None = None,
    ) -> None:
        """Takes counters from a response (`lost` and `selector` from an Info). Within one process
        inserts and samples never go back (responses may arrive out of order); a new `boot_id` is a
        new process, whose counts start again on top of what its predecessors counted, and which is
        taken to draw by priority until its own Info names its selector."""
        with self._lock:
            if boot_id:
                if boot_id in self._retired:
                    return  # a late answer of a process that has been replaced
                if boot_id != self.boot_id:
                    if self.boot_id:  # a restart behind this handle: fold what it counted
                        self._earlier = self._earlier_locked()
                        self._retired.add(self.boot_id)
                        self.inserts = self.samples = self.lost = 0
                        self.carried_inserts = self.carried_samples = 0
                        self.uses_priorities = True
                    self.boot_id = boot_id
            if selector is not None:
                self.uses_priorities = uses_priorities(selector)
            self.size, self.mass = size, mass
            self.inserts, self.samples = max(self.inserts, inserts), max(self.samples, samples)
            if lost is None:
                return
            self.lost = max(self.lost, lost)
            earlier = self._earlier
            if earlier is not None:  # this process's first Info: what it did not restore
                self.carried_inserts = max(0, earlier.counted[0] - (self.inserts + self.lost))
                self.carried_samples = earlier.carried_samples + max(0, earlier.samples - self.samples)
                self._earlier = None  # last: `counted` switches once every field is set

    def absorb_info(self, info: ReplayInfo) -> None:
        """`absorb` of everything an Info brings: the counters, the lost transitions, the process's
        boot id and its selector."""
        self.absorb(
            info.size,
            info.priority_mass,
            info.inserts,
            info.samples,
            info.lost_transitions,
            info.boot_id,
            info.selector,
        )

    @property
    def counted(self) -> tuple[int, int]:
        """(inserts, samples) of this shard id over the run, restarts included: the inserts it
        acknowledged (lost ones too) and the samples it served. Before a restarted process's first
        Info, its predecessors', so that the sums never dip while it is read."""
        with self._lock:
            return self._counted_locked()

    def _counted_locked(self) -> tuple[int, int]:
        earlier = self._earlier
        if earlier is not None:
            return earlier.counted
        return self.inserts + self.lost + self.carried_inserts, self.samples + self.carried_samples


class Membership:
    """The shard set of a sharded client, kept current from the registry or by probing.

    Args:
        config: where the shards are (`redis_url` + `run`, or `addresses`) and the timings.
        pool: runs parallel Info calls and closes the clients of departed shards.
    """

    def __init__(self, config: ShardedReplayConfig, pool: futures.ThreadPoolExecutor):
        self.config = config
        self.lock = threading.RLock()
        """Guards the shard set and each handle's `failed_at`."""
        self.failovers = 0
        """Times a shard was found unavailable and left out."""
        self.left_priorities = PriorityCounts()
        """Priority updates of shards that left or were closed, by what became of them
        (ShardedReplay's totals)."""
        self._pool = pool
        self._shards: dict[int, ShardHandle] = {}
        self._departed: dict[int, ShardHandle] = {}
        """Shards that left the registry, by id: their counts stay in `totals` (and go on in a
        process of the same id that joins later)."""
        self._registry = ShardRegistry(config.redis_url, config.run) if config.redis_url else None
        self._registry_down_since: float | None = None
        self._registry_warned_at = 0.0
        self._stop = threading.Event()
        self._refusals: dict[str, ReplayAuthenticationError] = {}  # fixed address -> its shard's refusal
        self._following_counters = False
        self.refresh()
        if self._refusals:  # a misconfiguration, not bad luck: say so before anything is sent
            self._close_all()
            raise self.refusal()
        self._watcher = threading.Thread(target=self._watch, name="sharded-replay-discovery", daemon=True)
        self._watcher.start()

    @property
    def where(self) -> str:
        """Where the shards are looked for, for error messages."""
        shards = redact_url(self.config.redis_url) if self.config.redis_url else list(self.config.addresses or ())
        return f"{shards}, run {self.config.run!r}"

    def _new_client(self, address: str) -> ReplayClient:
        config = self.config
        return ReplayClient(
            address,
            retry_for_s=config.failover_after_s,
            max_in_flight=config.max_in_flight,
            credentials=config.credentials,
            priorities=config.priorities,
            same_host_feed=config.same_host_feed,
        )

    # -- following the shard set -----------------------------------------------------------------

    def refresh(self) -> None:
        """Reads the registry (or probes fixed addresses) and updates the live shard set."""
        if self._registry is not None:
            self._refresh_from_registry(self._registry)
        else:
            self._probe_addresses()

    def _refresh_from_registry(self, registry: ShardRegistry) -> None:
        try:
            records = registry.live_shards()
        except ReplayUnavailableError as exc:
            now = time.monotonic()
            if self._registry_down_since is None:
                self._registry_down_since = now
            if now - self._registry_warned_at >= REGISTRY_WARNING_EVERY_S:
                self._registry_warned_at = now
                down_for = now - self._registry_down_since
                log.warning("%s; keeping the last known shards (for %.0f s so far)", exc, down_for)
            return
        if self._registry_down_since is not None:
            log.info("shard registry reachable again after %.0f s", time.monotonic() - self._registry_down_since)
            self._registry_down_since, self._registry_warned_at = None, 0.0
        run = self.config.run
        with self.lock:
            for shard_id in list(self._shards):
                if shard_id not in records:
                    log.info("shard %d left run %r", shard_id, run)
                    self._drop(shard_id)
            for shard_id, record in records.items():
                shard = self._shards.get(shard_id)
                if shard is None or shard.address != record.address or shard.started_at != record.started_at:
                    if shard is not None:
                        self._drop(shard_id)
                    log.info("shard %d joined run %r at %s", shard_id, run, record.address)
                    client = self._new_client(record.address)
                    previous = self._departed.pop(shard_id, None)
                    self._shards[shard_id] = ShardHandle(shard_id, record.address, client, record.started_at, previous)

    def _probe_addresses(self) -> None:
        """Learns each fixed address's shard id from Info; a failed shard is probed again."""
        for address in self.config.addresses or ():
            with self.lock:
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
            except ReplayAuthenticationError as exc:  # no retry fixes it: once per address, not per probe
                with self.lock:
                    first = address not in self._refusals
                    self._refusals[address] = exc
                if first:
                    log.error("replay shard at %s refuses this client's credentials: %s", address, exc)
                client.close()  # a known shard's client reopens its channel on the next probe
                continue
            with self.lock:
                self._refusals.pop(address, None)
            with self.lock:
                other = self._shards.get(info.shard_id)
                if other is not None and other.address != address:
                    raise ValueError(f"shards {other.address} and {address} both have shard id {info.shard_id}")
                if known is not None and known.boot_id and info.boot_id == known.boot_id:
                    shard = known  # the same process: it was out of reach
                    known.failed_at = None
                else:  # a new process (or one not yet told apart): its counts go on from the known one's
                    previous = known if known is not None and known.shard_id == info.shard_id else None
                    shard = ShardHandle(info.shard_id, address, client, previous=previous)
                    if known is not None:
                        self._shards.pop(known.shard_id, None)
                    self._shards[info.shard_id] = shard
                if known is not None:
                    log.info("shard %d at %s is back", info.shard_id, address)
            shard.absorb_info(info)

    def refusal(self) -> ReplayAuthenticationError | None:
        """The latest refusal of this client's credentials by a fixed address's shard, if any."""
        with self.lock:
            latest = next(reversed(self._refusals.values()), None)
        # A fresh instance per raise: callers on several threads may raise it at once.
        return None if latest is None else type(latest)(str(latest), address=latest.address)

    def _drop(self, shard_id: int) -> None:
        shard = self._shards.pop(shard_id)
        self._departed[shard_id] = shard
        self._pool.submit(self._close_dropped, shard.client)

    def _close_dropped(self, client: ReplayClient, priority_timeout: float = 10.0) -> None:
        client.close(priority_timeout)
        counts = client.priority_counts()  # a shard that left keeps counting in the totals
        with self.lock:
            self.left_priorities += counts

    def follow_counters(self) -> None:
        """Has the watcher re-read every live shard's counters (size, mass, inserts, samples) each
        `discovery_s` from now on. A sampler calls it: it sees a shard's new mass only when it
        draws from it, never for a shard it took as empty (nor that shard's inserts, for the
        global limiter), and that shard's writers would then wait on its rate limiter for ever."""
        self._following_counters = True

    def _watch(self) -> None:
        while not self._stop.wait(self.config.discovery_s):
            try:
                self.refresh()
                if self._following_counters:
                    self.read_infos()
            except Exception:  # the watcher must outlive any one bad read
                log.exception("shard discovery failed; retrying")

    # -- liveness --------------------------------------------------------------------------------

    def mark_failed(self, shard: ShardHandle, error: Exception) -> None:
        """Takes `shard` as down (once) until it is seen again."""
        with self.lock:
            if shard.failed_at is None:
                shard.failed_at = time.monotonic()
                self.failovers += 1
                log.warning(
                    "shard %d at %s unavailable, moving on without it: %s", shard.shard_id, shard.address, error
                )

    def all(self) -> dict[int, ShardHandle]:
        """Every known shard by id, live or not (a copy)."""
        with self.lock:
            return dict(self._shards)

    def live(self) -> list[ShardHandle]:
        """The shards currently taken as live."""
        with self.lock:
            return [s for s in self._shards.values() if s.failed_at is None]

    def wait_for(self, count: int, timeout: float) -> None:
        """Waits until at least `count` shards are live.

        Raises:
            ReplayAuthenticationError: fewer, and a shard refuses this client's credentials.
            ReplayUnavailableError: fewer than `count` within `timeout`.
        """
        deadline = time.monotonic() + timeout
        while len(self.live()) < count:
            if time.monotonic() > deadline:
                refusal = self.refusal()
                if refusal is not None:
                    raise refusal
                raise ReplayUnavailableError(
                    f"only {len(self.live())} of {count} shards live after {timeout}s ({self.where})"
                )
            time.sleep(0.05)
            self.refresh()

    # -- counters --------------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """(inserts, samples) of the run, as last seen: every shard id's `ShardHandle.counted`,
        those that left included. A shard that crashes and comes back changes neither sum: the
        inserts it lost and the samples it had served still count."""
        with self.lock:
            counts = [s.counted for s in (*self._shards.values(), *self._departed.values())]
        return sum(inserts for inserts, _ in counts), sum(samples for _, samples in counts)

    def info_or_fail(self, shard: ShardHandle) -> ReplayInfo | None:
        """The shard's Info, or None after taking it as down (unreachable, or hung: no answer in 5 s)."""
        try:
            return shard.client.info(timeout=5.0)
        except (ReplayUnavailableError, DeadlineExceededError) as exc:
            self.mark_failed(shard, exc)
            return None

    def read_infos(self) -> dict[int, ReplayInfo]:
        """Info of every live shard, read in parallel; their counters are absorbed on the way."""
        live = self.live()
        infos = {}
        for shard, info in zip(live, self._pool.map(self.info_or_fail, live), strict=True):
            if info is not None:
                shard.absorb_info(info)
                shard.writers_waiting = info.rate_limiter.waiting_inserts > 0
                infos[shard.shard_id] = info
        return infos

    def credit(self, shards: list[ShardHandle], items: int) -> None:
        """Credits `items` to each of `shards`' rate limiters in parallel (`ReplayClient.credit`),
        to free their waiting writers; a shard that does not answer is taken as down. Each is
        taken as without waiting writers until its next Info says otherwise."""
        for shard in shards:
            shard.writers_waiting = False
        list(self._pool.map(lambda shard: self._credit_or_fail(shard, items), shards))

    def _credit_or_fail(self, shard: ShardHandle, items: int) -> None:
        try:
            shard.client.credit(items, timeout=5.0)
        except (ReplayUnavailableError, DeadlineExceededError) as exc:
            self.mark_failed(shard, exc)

    def lost_transitions(self, infos: dict[int, ReplayInfo]) -> int:
        """Transitions lost to shard crashes: from the registry, else summed over `infos`."""
        if self._registry is not None:
            return self._registry.lost_total()
        return sum(i.lost_transitions for i in infos.values())

    def close(self) -> None:
        """Stops the watcher and closes every shard client and the registry."""
        self._stop.set()
        self._watcher.join(timeout=5)
        self._close_all()

    def _close_all(self, timeout: float = 10.0) -> None:
        """Closes every client at once (one overall `timeout` for their priority answers, not one
        per shard), keeping what became of their priority updates in `left_priorities`."""
        with self.lock:
            shards, self._shards = list(self._shards.values()), {}
        closers = [
            threading.Thread(target=self._close_dropped, args=(shard.client, timeout), name="sharded-replay-close")
            for shard in shards
        ]
        for closer in closers:
            closer.start()
        deadline = time.monotonic() + timeout + 5  # the insert streams' hand-back too
        for closer in closers:
            closer.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._registry is not None:
            self._registry.close()
