"""The parameter store: versioned policy weights, announced in Redis, carried by Redis or by Ray.

    qfleet:{run}:learner:weights_version   int    the announced version (one cheap GET to poll)
    qfleet:{run}:learner:weights           hash   the manifest: format, version, transport, chunks,
                                                  bytes, header_digest, published_at; and the payload's place:
        transport "redis":         payload                       the key of the hash holding its chunks
        transport "object_store":  host, namespace (chunks 1)    the Ray actor handing out the payload's ref
    qfleet:{run}:learner:weights:payload:{id}  hash   transport "redis": chunk:0 .. chunk:{chunks-1}, one
                                                  publish's payload, written once (`RedisTransport`)
    qfleet:{run}:learner:weights:payloads  list   transport "redis": the payload keys, oldest first

The manifest and the version are written in one MULTI/EXEC (the hash replaced whole), after the
payload, so a reader never sees a version without its payload. Versions start at 1 and only grow;
0: nothing published. `format` names the manifest's layout: a reader refuses another one (a learner
and actors of different qfleet versions) with a message that says so.

The payload is safetensors (learner/weights_codec.py), never pickle; `header_digest` (SHA-256 of
its header, which holds a random publish id) names one publish, and readers refuse a payload whose
size or header digest is not the manifest's. Through the object store (learner/weights_host.py)
Redis carries a few hundred bytes per publish, whatever the policy's size, Ray moves the payload
node to node, readers on a node share one copy in its shared memory (the tensors they get are
views of it, handed out only as copies: `SharedWeights`), and the learner hands the publish to a
background thread (it never waits for the weights host); through Redis every reader downloads it whole from one Redis, chunk by chunk into
one buffer of its own, from a key that publish alone wrote (a publish during a read leaves it
consistent; runs without Ray). Readers follow whichever transport the publisher chose.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import redis
import torch

from learner.config import WEIGHTS_OVER_OBJECT_STORE, WEIGHTS_OVER_REDIS, WeightsConfig
from learner.errors import MalformedWeightsError, SupersededReadError, WeightStoreError
from learner.shared_weights import SharedWeights
from learner.weights_codec import decode_weights, encode_weights, header_digest
from learner.weights_host import HostAheadError, ObjectStoreTransport
from learner.weights_transport import Manifest, RedisTransport, Transport
from learner.weights_version import parse_version, weights_keys
from replay import connect_redis, redact_url

log = logging.getLogger(__name__)

REDIS, OBJECT_STORE = WEIGHTS_OVER_REDIS, WEIGHTS_OVER_OBJECT_STORE
"""The transports a manifest names."""

REDIS_TIMEOUT_S = 10.0
"""Redis calls' socket timeout (a Redis-carried payload is read one chunk, at most 512 MiB, per call)."""

MANIFEST_FORMAT = "qfleet-weights-3"
"""The manifest's layout (3: header digest, Redis payloads under keys of their own)."""

OWN_FIELDS = (*RedisTransport.fields, *ObjectStoreTransport.fields)
"""The transports' own manifest fields."""

MANIFEST_FIELDS = ("format", "version", "transport", "chunks", "bytes", "header_digest", *OWN_FIELDS)
"""The manifest fields a reader reads in one HMGET."""


def resolve_transport(setting: str) -> str:
    """The transport a publisher uses for `learner.weights.transport`: "auto" is the object store
    when this process is connected to Ray, else Redis."""
    if setting != "auto":
        return setting
    ray = sys.modules.get("ray")  # not imported: certainly not connected (and no import cost)
    return OBJECT_STORE if ray is not None and ray.is_initialized() else REDIS


class WeightStore:
    """Publishes (learner) and fetches (actors, evaluation) versioned weights.

    Args:
        redis_url: the run's Redis.
        run: the run name (key namespace).
        config: the transport and its settings (`learner.weights`); readers use only its timeouts.
    """

    def __init__(self, redis_url: str, run: str = "default", config: WeightsConfig | None = None):
        self.redis_url, self.run = redis_url, run
        self.config = config or WeightsConfig()
        self._weights_key, self._version_key = weights_keys(run)
        self._shown_url = redact_url(redis_url)
        self._redis = connect_redis(redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=2.0)
        self._lower_seen = False  # a version below the one held was announced (logged once)
        self._transports: dict[str, Transport] = {}
        self._transports_lock = threading.Lock()

    def __reduce__(self):
        return (type(self), (self.redis_url, self.run, self.config))

    @property
    def transport(self) -> str:
        """The transport this store publishes with (see `resolve_transport`)."""
        return resolve_transport(self.config.transport)

    def _transport(self, name: str) -> Transport:
        """The transport called `name`, started at its first use (the publisher's, or a reader's)."""
        with self._transports_lock:
            if name not in self._transports:
                factories = {
                    REDIS: lambda: RedisTransport(
                        self._redis,
                        self._weights_key,
                        self.config.chunk_bytes,
                        self.config.keep_versions,
                        self._shown_url,
                    ),
                    OBJECT_STORE: lambda: ObjectStoreTransport(self.run, self.config),
                }
                self._transports[name] = factories[name]()
            return self._transports[name]

    def publish(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Stores `state` as `version` and announces it; returns the payload's size in bytes.

        Through Redis the version is announced when this returns. Through the object store this
        returns once the payload is encoded, and a background thread announces it when the weights
        host holds it (`flush` waits for that): the caller never waits for the host.

        Raises:
            WeightStoreError: Redis is unreachable; nothing was announced. Object store: the previous
                version was not announced (`WeightsHostError`: its host failed and was replaced; a
                `WeightStoreError`: Redis refused), or Ray is not connected; this version is on its way.
        """
        blob = encode_weights(state, version)
        transport = self.transport
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "transport": transport,
            "bytes": len(blob),
            "header_digest": header_digest(blob),
            "published_at": f"{time.time():.6f}",
        }
        self._transport(transport).publish(version, blob, lambda place: self._announce({**manifest, **place}))
        return len(blob)

    def _announce(self, manifest: dict) -> None:
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self._weights_key)
            pipe.hset(self._weights_key, mapping=manifest)
            pipe.set(self._version_key, manifest["version"])
            pipe.execute()
        except redis.RedisError as exc:
            raise WeightStoreError(f"cannot publish weights to {self._shown_url}: {exc}", self._shown_url) from None

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until every published version was announced or failed; False if `timeout` passed."""
        return self._transport(self.transport).flush(timeout)

    def version(self) -> int:
        """The announced version (0 if none): one small GET.

        Raises:
            WeightStoreError: Redis is unreachable.
            MalformedWeightsError: the key holds something else than an integer >= 0.
        """
        try:
            value = self._redis.get(self._version_key)
        except redis.RedisError as exc:
            raise WeightStoreError(
                f"cannot read the weights version from {self._shown_url}: {exc}", self._shown_url
            ) from None
        return parse_version(value, self._version_key, self._shown_url)

    def fetch(self, known_version: int = 0) -> tuple[int, SharedWeights] | None:
        """The newest weights if their version is above `known_version`, else None. A lower
        announced version (an earlier learner's number reused) is ignored, logged once: versions
        only grow, so the weights held are newer.

        The weights are a `SharedWeights`: views of the payload as read (through the object store,
        this node's shared-memory copy that every reader on the node maps; through Redis, a
        read-only buffer of this reader's own), handed out only as copies (`load_into` a network,
        or a tensor's copy by name).

        Raises:
            WeightStoreError: Redis is unreachable (`WeightsHostError`: the object store's host is
                gone, slow or holds less than announced, the object is not the announced publish,
                the payload's owner is gone, or the pull timed out; `SupersededReadError`: newer
                publishes overtook two reads in a row).
            MalformedWeightsError: the version, the manifest or the payload is malformed.
        """
        announced = self.version()
        if announced < known_version and not self._lower_seen:
            self._lower_seen = True
            log.warning(
                "weights v%d announced in %s, below the v%d held: ignored until a higher version comes",
                announced,
                self._shown_url,
                known_version,
            )
        if announced <= known_version:
            return None
        for attempt in (1, 2):  # a second read when a newer version was published meanwhile
            manifest = self._manifest()
            if manifest is None or manifest.version <= known_version:
                return None
            try:
                payload = self._transport(manifest.transport).read(manifest)
                break
            except (HostAheadError, SupersededReadError):
                if attempt == 2:
                    raise
            except MalformedWeightsError as exc:
                raise MalformedWeightsError(
                    f"{self._weights_key} in {self._shown_url}: {exc}", self._weights_key
                ) from None
        try:
            version, tensors = decode_weights(payload, in_place=True)
        except MalformedWeightsError as exc:
            raise MalformedWeightsError(f"{self._weights_key} in {self._shown_url}: {exc}", self._weights_key) from None
        if version != manifest.version:
            raise MalformedWeightsError(
                f"{self._weights_key} in {self._shown_url}: the manifest says v{manifest.version}, its payload v{version}",
                self._weights_key,
            )
        return version, SharedWeights(payload, tensors)

    def _manifest(self) -> Manifest | None:
        """The manifest's fields, parsed (None: no manifest).

        Raises:
            MalformedWeightsError: not a manifest, or one of another format (another qfleet version).
        """
        try:
            values = self._redis.hmget(self._weights_key, MANIFEST_FIELDS)
        except redis.ResponseError as exc:  # WRONGTYPE: something else than a manifest (a foreign SET)
            raise MalformedWeightsError(
                f"{self._weights_key} in {self._shown_url}: {exc}", key=self._weights_key
            ) from None
        except redis.RedisError as exc:
            raise WeightStoreError(f"cannot fetch weights from {self._shown_url}: {exc}", self._shown_url) from None
        fields = {name: value for name, value in zip(MANIFEST_FIELDS, values, strict=True) if value is not None}
        if not fields:
            return None
        if fields.get("format") != MANIFEST_FORMAT.encode():
            written = fields.get("format", b"none").decode(errors="replace")[:40]
            raise MalformedWeightsError(
                f"{self._weights_key} in {self._shown_url}: a manifest of format {written!r}, not {MANIFEST_FORMAT!r}: "
                "written by another qfleet version; run the learner and the actors from the same version",
                self._weights_key,
            )
        try:
            transport = fields["transport"].decode()
            if transport not in (REDIS, OBJECT_STORE):
                raise ValueError(f"unknown transport {transport[:40]!r}")
            version, chunks, total = (_count(fields[name]) for name in ("version", "chunks", "bytes"))
            digest = fields["header_digest"].decode()
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise MalformedWeightsError(
                f"{self._weights_key} in {self._shown_url}: not a weights manifest: {type(exc).__name__}: {exc}",
                self._weights_key,
            ) from None
        own = {name: value for name, value in fields.items() if name in OWN_FIELDS}
        return Manifest(version, transport, chunks, total, digest, own)

    def close(self) -> None:
        """Announces a version still on its way (object store: up to host_timeout_s + 10 s), then
        closes the Redis connection. Payloads in the object store stay readable while this process
        lives (the run's final evaluation reads the last one after the learner stopped)."""
        for transport in self._transports.values():
            transport.close()
        self._redis.close()


def _count(value: bytes) -> int:
    """A manifest's integer field (ASCII digits only)."""
    if not value.isdigit():
        raise ValueError(f"{value[:40]!r} is not an integer >= 0")
    return int(value)
