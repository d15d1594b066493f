"""Weights through Ray's object store: the learner `ray.put`s each version's payload once, as one
numpy uint8 array, and a small named Ray actor, the weights host, holds its reference and hands it
to readers.

Why a host: an ObjectRef cannot be rebuilt from a string by an unrelated process, so Redis cannot
carry one. Redis carries the host's name and namespace instead (and, like every manifest, the
payload's size and header digest); a reader looks the host up by name, asks it for the newest
version's ref and `ray.get`s it. Ray pulls the object once per node into that node's shared-memory
store, and `ray.get` of a numpy array maps it there read-only without a copy: every reader on the
node shares one copy, `decode_weights(..., in_place=True)` builds the tensors as views of it
(handed out only as copies, by `SharedWeights`: torch would let a reader write through a view, into
every reader's weights), and the only per-reader copy left is the actor loading them into its network. The learner's node
serves one copy per node, from Ray's object manager, not from the learner's Python thread.

Integrity, and why readers do not hash the whole payload: a reader checks that the object is the
size the manifest announces and that its header hashes to the manifest's header digest (SHA-256 of
a few kB). The header holds the version, a random 128-bit publish id and every tensor's name,
dtype, shape and offsets, and the decoder then checks that those offsets tile the object exactly;
so another version's, another run's or another publish's object, a truncated one or a host that
hands out the wrong ref is refused. What this does not catch is an object whose header is the
publisher's but whose tensor bytes differ: Ray objects are immutable once sealed and Ray's
transfers run over TCP, so that takes a bug in Ray or someone able to put objects into the
cluster, and whoever can do that can run code in the readers themselves (Ray's token is the trust
boundary; the manifest in password-protected Redis is what names the right object). Hashing every
byte in every reader (SHA-256 of every chunk, as before) cost each reader about 250 ms of CPU per
300 MB (measured on this 2-core VM), most of a publish's latency with 32 readers on one node; the
header check costs microseconds. Chunks were dropped for the same reason: one object lets the
tensors be views (no tensor straddles two objects) and Ray moves large objects between nodes in
pieces of its own.

The learner never waits on the host: `publish` hands the encoded payload to a background thread
(a latest-wins slot: a version not yet offered is dropped for a newer one) and returns. The
thread puts the payload, offers its ref to the host and announces the version in Redis only
once the host holds it. A host that does not answer within `host_timeout_s`, or answers with
another version than offered, is killed and replaced by a new one under a new name (one name per
host: a hung or foreign actor squatting a name is never adopted again); the error reaches the
learner at its next publish.

Lifetimes: the learner owns the payload objects (it put them) and the host (it created it), so
both end with the learner's process, like the weights they describe. The learner keeps the refs
of its last `keep_versions` versions and the host those of the newest; readers hold borrowed refs
while they pull, and a reader's tensors keep its node's copy mapped until the reader drops them
(after loading them), and Ray frees released objects asynchronously, so up to about 3 x
`keep_versions` payloads may sit in the object store briefly.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from learner.config import WeightsConfig
from learner.errors import HostAheadError, MalformedWeightsError, WeightsHostError, WeightStoreError
from learner.weights_transport import Manifest, check_payload

log = logging.getLogger(__name__)

HOST_START_S = 120.0
"""Longest wait for a new host's worker process to start (seconds on a loaded machine)."""


def host_name(run: str) -> str:
    """A new weights host's Ray actor name, unique to that host: `qfleet-{run}-weights-{8 hex}`."""
    return f"qfleet-{run}-weights-{secrets.token_hex(4)}"


class WeightsHost:
    """The Ray actor holding the newest version's object refs (created by `ObjectStoreTransport`)."""

    def __init__(self):
        self._version, self._refs, self._bytes = 0, [], 0

    def offer(self, version: int, refs: list, total_bytes: int) -> int:
        """Holds `refs` (a list of one ref, so Ray passes it as a ref, unresolved) and their `total_bytes` if
        `version` is newer than the one held; returns the version now held (the publisher checks
        it is `version`)."""
        if version > self._version:
            self._version, self._refs, self._bytes = version, list(refs), total_bytes
        return self._version

    def latest(self) -> tuple[int, list, int]:
        """(version, [payload ref], total bytes) of the newest version offered; (0, [], 0) before the first."""
        return self._version, self._refs, self._bytes


@dataclass(frozen=True)
class _Offer:
    version: int
    blob: bytes
    announce: Callable[[dict], None]


class ObjectStoreTransport:
    """Publishes through a weights host in a background thread; reads from the host a manifest names.

    Args:
        run: the run (names the hosts).
        config: keep_versions, host_timeout_s (the host's answers), timeout_s (payload pulls).
    """

    def __init__(self, run: str, config: WeightsConfig):
        self.run, self.config = run, config
        self.host: str | None = None
        """The current host's name (None before the first publish, or after it was replaced)."""
        self._handle = None
        self._kept: collections.deque = collections.deque(maxlen=config.keep_versions)
        self._slot: _Offer | None = None
        self._busy = False
        self._error: WeightStoreError | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._read_from: tuple[tuple[str, str], object] | None = None  # the host last read from

    # -- publishing (the learner) --------------------------------------------------------------------

    fields = ("host", "namespace")

    def publish(self, version: int, blob: bytes, announce: Callable[[dict], None]) -> None:
        """Queues `blob` as `version` and returns at once; `announce(fields)` runs once the host
        holds it. A queued version not yet offered is dropped for this one.

        Raises:
            WeightsHostError: this process is not connected to Ray, or this transport is closed
                (nothing queued); or the previous version's host failed and was replaced (this
                version is queued all the same).
            WeightStoreError: Redis refused the previous version's announcement (this version is
                queued all the same).
        """
        import ray

        if not ray.is_initialized():
            raise WeightsHostError(
                "learner.weights.transport=object_store needs Ray: this process is not connected to a Ray cluster"
            )
        with self._changed:
            if self._closed:
                raise WeightsHostError("the weights publisher is closed", self.host or "")
            error, self._error = self._error, None
            self._slot = _Offer(version, blob, announce)
            self._changed.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver_loop, name="weights-publisher", daemon=True)
                self._thread.start()
        if error is not None:
            raise error

    def flush(self, timeout: float) -> bool:
        """Waits until every queued version was delivered (or failed); False if `timeout` passed."""
        with self._changed:
            return self._changed.wait_for(lambda: self._slot is None and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Delivers the queued version (up to `timeout`, default host_timeout_s + 10 s) and stops the
        thread. The host and the kept payloads stay while this process lives (the run's final
        evaluation reads the last version after the learner stopped)."""
        self.flush(self.config.host_timeout_s + 10.0 if timeout is None else timeout)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _deliver_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._slot is not None or self._closed)
                if self._slot is None:
                    return
                offer, self._slot, self._busy = self._slot, None, True
            error = None
            try:
                self._deliver(offer)
            except WeightStoreError as exc:
                error = exc
                log.warning("weights v%d not published: %s", offer.version, exc)
            except Exception as exc:  # a bug or an unexpected Ray error: reported, the thread goes on
                error = WeightsHostError(f"weights v{offer.version} not published: {type(exc).__name__}: {exc}")
                log.exception("weights v%d not published", offer.version)
            with self._changed:
                self._busy = False
                if error is not None:
                    self._error = error
                self._changed.notify_all()

    def _deliver(self, offer: _Offer) -> None:
        """Puts the payload (one numpy object: readers map it zero-copy), has a host take it
        (replacing a failed host once), then announces."""
        import ray

        total = len(offer.blob)
        try:
            refs = [ray.put(np.frombuffer(offer.blob, dtype=np.uint8))]
        except ray.exceptions.RayError as exc:
            raise WeightsHostError(f"cannot put weights v{offer.version} into Ray's object store: {exc}") from None
        for attempt in (1, 2):
            try:
                self._offer(offer.version, refs, total)
                break
            except WeightsHostError as exc:
                log.warning("%s: replacing the weights host", exc)
                self._replace_host()
                with self._changed:
                    superseded = self._slot is not None
                if attempt == 2 or superseded:
                    raise
        self._kept.append(refs)
        offer.announce({"chunks": 1, "host": self.host, "namespace": ray.get_runtime_context().namespace or ""})

    def _offer(self, version: int, refs: list, total: int) -> None:
        import ray

        handle, name = self._current_host()
        pending = handle.offer.remote(version, refs, total)
        ready, _ = ray.wait([pending], timeout=self.config.host_timeout_s)
        if not ready:
            try:
                ray.cancel(pending)
            except Exception as exc:  # the host is killed next in any case
                log.debug("cannot cancel the offer to %s: %s", name, exc)
            raise WeightsHostError(
                f"weights host {name} did not take v{version} within {self.config.host_timeout_s:g} s", name
            )
        try:
            held = ray.get(pending)
        except ray.exceptions.RayError as exc:
            raise WeightsHostError(
                f"weights host {name} failed to take v{version}: {type(exc).__name__}", name
            ) from None
        if held != version:
            raise WeightsHostError(f"weights host {name} holds v{held} and refused v{version}", name)

    def _current_host(self):
        """(handle, name) of the current host, starting a new one (a new name) if there is none."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._handle is not None:
            return self._handle, self.host
        name = host_name(self.run)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        handle = (
            ray.remote(WeightsHost).options(name=name, num_cpus=0, max_restarts=0, scheduling_strategy=here).remote()
        )
        ready, _ = ray.wait([handle.__ray_ready__.remote()], timeout=HOST_START_S)
        if not ready:
            ray.kill(handle)
            raise WeightsHostError(f"weights host {name} did not start within {HOST_START_S:g} s", name)
        self._handle, self.host = handle, name
        log.info("weights host %s started", name)
        return handle, name

    def _replace_host(self) -> None:
        import ray

        if self._handle is not None:
            try:
                ray.kill(self._handle)
            except Exception as exc:  # already gone
                log.debug("cannot kill weights host %s: %s", self.host, exc)
        self._handle, self.host = None, None

    # -- reading (actors, evaluation) ----------------------------------------------------------------

    def read(self, manifest: Manifest) -> np.ndarray:
        """The payload `manifest` announces, pulled from its host: a read-only numpy array over
        this node's shared-memory copy (no copy of its own), its size and header digest checked.

        Raises:
            HostAheadError: the host holds a newer version (published since the manifest was read).
            WeightsHostError: Ray is not connected, the host is absent, dead, slow or holds less than
                announced, the object is not the one announced, the payload's owner died, or the
                pull timed out.
        """
        import ray

        try:
            name, namespace = manifest.fields["host"].decode(), manifest.fields["namespace"].decode()
        except (KeyError, UnicodeDecodeError) as exc:
            raise MalformedWeightsError(f"not an object store manifest: {type(exc).__name__}: {exc}") from None
        if not ray.is_initialized():
            raise WeightsHostError(
                f"weights are published through Ray's object store (host {name}): this process is not connected to Ray",
                name,
            )
        try:
            host = self._host_handle(name, namespace)
            held, refs, held_bytes = ray.get(host.latest.remote(), timeout=self.config.host_timeout_s)
        except (ValueError, ray.exceptions.RayError) as exc:  # ValueError: no actor of that name
            self._read_from = None
            raise WeightsHostError(f"cannot reach weights host {name}: {type(exc).__name__}: {exc}", name) from None
        if held > manifest.version:
            raise HostAheadError(f"weights host {name} holds v{held}, newer than the v{manifest.version} read", name)
        if held < manifest.version:
            raise WeightsHostError(f"weights host {name} holds v{held}, Redis announces v{manifest.version}", name)
        if len(refs) != 1 or manifest.chunks != 1 or held_bytes != manifest.bytes:
            raise WeightsHostError(
                f"weights host {name} holds {len(refs)} objects of {held_bytes} bytes for v{held}, "
                f"the manifest says {manifest.chunks} of {manifest.bytes}",
                name,
            )
        try:
            payload = ray.get(refs[0], timeout=self.config.timeout_s)
        except ray.exceptions.RayError as exc:
            raise WeightsHostError(
                f"cannot pull weights v{held} from host {name}: {type(exc).__name__}", name
            ) from None
        is_bytes = isinstance(payload, np.ndarray) and payload.dtype == np.uint8 and payload.ndim == 1
        why = check_payload(payload, manifest) if is_bytes else f"a {type(payload).__name__}, not a byte array"
        if why is not None:
            raise WeightsHostError(f"the object weights host {name} hands out for v{held} is refused: {why}", name)
        return payload

    def _host_handle(self, name: str, namespace: str):
        import ray

        key = (name, namespace)
        if self._read_from is None or self._read_from[0] != key:
            self._read_from = (key, ray.get_actor(name, namespace=namespace))
        return self._read_from[1]
