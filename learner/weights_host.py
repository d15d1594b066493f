"""Weights through Ray's object store: the learner `ray.put`s each version's chunks and a small
named Ray actor, the weights host, holds their references and hands them to readers.

Why a host: an ObjectRef cannot be rebuilt from a string by an unrelated process, so Redis cannot
carry one. Redis carries the host's name and namespace instead; a reader looks the host up by
name, asks it for the newest version's refs and `ray.get`s them. Ray pulls each chunk once per
node into that node's object store and readers on the node share it (zero-copy numpy views), so
the learner's node serves one copy per node, from Ray's object manager, not from the learner's
Python thread: slow readers never hold the learner up.

Lifetimes: the learner owns the payload objects (it put them) and the host (it created it), so
both end with the learner's process, like the weights they describe; a restarted learner starts a
new host at its first publish. The learner keeps the refs of its last `keep_versions` versions
and the host those of the newest, so at most `keep_versions` payloads stay pinned, plus copies
that readers are still pulling (they hold borrowed refs until their `ray.get` returns).
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from learner.errors import WeightsHostError

log = logging.getLogger(__name__)


def host_name(run: str) -> str:
    """The weights host's Ray actor name for a run."""
    return f"qfleet-{run}-weights"


class WeightsHost:
    """The Ray actor holding the newest version's object refs (created by `ObjectStorePublisher`)."""

    def __init__(self):
        self._version = 0
        self._refs: list = []

    def offer(self, version: int, refs: list) -> int:
        """Holds `refs` (a list, so Ray passes them as refs, unresolved) if `version` is newer than
        the one held; returns the version now held."""
        if version > self._version:
            self._version, self._refs = version, list(refs)
        return self._version

    def latest(self) -> tuple[int, list]:
        """(version, chunk refs) of the newest version offered; (0, []) before the first."""
        return self._version, self._refs


class ObjectStorePublisher:
    """The learner's side: puts chunks, offers their refs to the host, starts the host if needed.

    Args:
        run: the run (names the host).
        keep_versions: versions whose refs this process keeps (their payloads stay pinned).
        timeout_s: how long a publish waits for the host to take a version.
    """

    def __init__(self, run: str, keep_versions: int, timeout_s: float):
        import ray

        if not ray.is_initialized():
            raise WeightsHostError(
                "learner.weights.transport=object_store needs Ray: this process is not connected to a Ray cluster",
                host_name(run),
            )
        self._ray = ray
        self.name = host_name(run)
        self.namespace = ray.get_runtime_context().namespace
        self.timeout_s = timeout_s
        self._host = None
        self._kept: collections.deque = collections.deque(maxlen=keep_versions)

    def publish(self, chunks: list[memoryview], version: int) -> None:
        """Puts `chunks` into the object store and has the host hand them out as `version`.

        A dead host is replaced once within the call (a learner restarted by Ray, a host killed).

        Raises:
            WeightsHostError: the put or the host failed (the learner's next publish tries again).
        """
        ray = self._ray
        try:
            refs = [ray.put(np.frombuffer(chunk, dtype=np.uint8)) for chunk in chunks]
        except ray.exceptions.RayError as exc:
            raise WeightsHostError(f"cannot put weights v{version} into Ray's object store: {exc}", self.name) from None
        for attempt in (1, 2):
            try:
                ray.get(self._handle().offer.remote(version, refs), timeout=self.timeout_s)
                break
            except ray.exceptions.RayError as exc:
                self._host = None
                if attempt == 2:
                    raise WeightsHostError(
                        f"weights host {self.name} did not take v{version}: {exc}", self.name
                    ) from None
                log.info("weights host %s unreachable (%s): starting a new one", self.name, type(exc).__name__)
        self._kept.append(refs)

    def _handle(self):
        if self._host is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(self._ray.get_runtime_context().get_node_id(), soft=True)
            self._host = (
                self._ray.remote(WeightsHost)
                .options(
                    name=self.name,
                    namespace=self.namespace,
                    get_if_exists=True,
                    num_cpus=0,
                    max_restarts=0,
                    scheduling_strategy=here,
                )
                .remote()
            )
        return self._host


class ObjectStoreReader:
    """A reader's side: finds the host by name and pulls the newest version's chunks.

    Args:
        timeout_s: how long a fetch waits for the host's answer and for the chunks.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._hosts: dict[tuple[str, str], object] = {}

    def fetch(self, name: str, namespace: str) -> tuple[int, list[np.ndarray]]:
        """(version, chunks) of the newest version the host `name` holds; chunks are read-only
        views into this node's object store. (0, []) when it holds none yet.

        Raises:
            WeightsHostError: Ray is not connected, the host is absent or dead, the payload's owner
                died, or the pull timed out.
        """
        import ray

        if not ray.is_initialized():
            raise WeightsHostError(
                f"weights are published through Ray's object store (host {name}): this process is not connected to Ray",
                name,
            )
        key = (name, namespace)
        try:
            host = self._hosts.get(key) or ray.get_actor(name, namespace=namespace)
            self._hosts[key] = host
            version, refs = ray.get(host.latest.remote(), timeout=self.timeout_s)
            chunks = ray.get(refs, timeout=self.timeout_s) if refs else []
        except (ValueError, ray.exceptions.RayError) as exc:  # ValueError: no actor of that name
            self._hosts.pop(key, None)
            raise WeightsHostError(
                f"cannot fetch weights from host {name}: {type(exc).__name__}: {exc}", name
            ) from None
        return version, chunks
