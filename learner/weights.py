"""The parameter store: versioned policy weights, announced in Redis, carried by Redis or by Ray.

    qfleet:{run}:learner:weights_version   int    the announced version (one cheap GET to poll)
    qfleet:{run}:learner:weights           hash   the manifest: version, transport, chunks, bytes,
                                                  published_at; and the payload's place:
        transport "redis":         chunk:0 .. chunk:{chunks-1}   the payload itself, in chunks
        transport "object_store":  host, namespace               the Ray actor handing out its refs

Both keys are written in one MULTI/EXEC (the hash replaced whole), so a reader never sees a
version without its payload's place. Versions start at 1 and only grow; 0: nothing published.

The payload is safetensors (learner/weights_codec.py), never pickle. Through the object store
(learner/weights_host.py) Redis carries a few hundred bytes per publish, whatever the policy's
size, and Ray moves the payload node to node; through Redis every reader downloads it whole
from one Redis (runs without Ray). Readers follow whichever transport the publisher chose.
"""

from __future__ import annotations

import logging
import sys
import time

import redis
import torch

from learner.config import WeightsConfig
from learner.errors import MalformedWeightsError, WeightStoreError
from learner.redis_values import parse_number
from learner.weights_codec import decode_weights, encode_weights, join_chunks, split_chunks
from learner.weights_host import ObjectStorePublisher, ObjectStoreReader
from replay import connect_redis, redact_url

log = logging.getLogger(__name__)

REDIS, OBJECT_STORE = "redis", "object_store"
"""The transports a manifest names."""


def _keys(run: str) -> tuple[str, str]:
    return f"qfleet:{run}:learner:weights", f"qfleet:{run}:learner:weights_version"


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
        config: the transport and its settings (`learner.weights`); readers only use its timeout.
    """

    def __init__(self, redis_url: str, run: str = "default", config: WeightsConfig | None = None):
        self.redis_url, self.run = redis_url, run
        self.config = config or WeightsConfig()
        self._weights_key, self._version_key = _keys(run)
        self._shown_url = redact_url(redis_url)
        self._redis = connect_redis(
            redis_url, socket_timeout=max(10.0, self.config.timeout_s), socket_connect_timeout=2.0
        )
        self._lower_seen = False  # a version below the one held was announced (logged once)
        self._publisher: ObjectStorePublisher | None = None
        self._reader: ObjectStoreReader | None = None

    def __reduce__(self):
        return (type(self), (self.redis_url, self.run, self.config))

    @property
    def transport(self) -> str:
        """The transport this store publishes with (see `resolve_transport`)."""
        return resolve_transport(self.config.transport)

    def publish(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Stores `state` as `version` and announces it; returns the payload's size in bytes.

        Raises:
            WeightStoreError: Redis is unreachable (`WeightsHostError`: the object store or its
                host failed); nothing was announced.
        """
        blob = encode_weights(state, version)
        chunks = split_chunks(blob, self.config.chunk_bytes)
        manifest = {
            "version": version,
            "chunks": len(chunks),
            "bytes": len(blob),
            "published_at": f"{time.time():.6f}",
        }
        if self.transport == OBJECT_STORE:
            if self._publisher is None:
                config = self.config
                self._publisher = ObjectStorePublisher(self.run, config.keep_versions, config.timeout_s)
            self._publisher.publish(chunks, version)
            manifest.update(
                transport=OBJECT_STORE, host=self._publisher.name, namespace=self._publisher.namespace or ""
            )
        else:
            manifest.update({"transport": REDIS, **{f"chunk:{i}": chunk for i, chunk in enumerate(chunks)}})
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self._weights_key)
            pipe.hset(self._weights_key, mapping=manifest)
            pipe.set(self._version_key, version)
            pipe.execute()
        except redis.RedisError as exc:
            raise WeightStoreError(f"cannot publish weights to {self._shown_url}: {exc}", self._shown_url) from None
        return len(blob)

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
        if value is None:
            return 0
        version = parse_number(value)
        if not isinstance(version, int) or version < 0:
            raise MalformedWeightsError(
                f"{self._version_key} in {self._shown_url} holds {value[:100]!r}, not a version", key=self._version_key
            )
        return version

    def fetch(self, known_version: int = 0) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The newest weights if their version is above `known_version`, else None. A lower
        announced version (an earlier learner's number reused) is ignored, logged once: versions
        only grow, so the weights held are newer.

        Raises:
            WeightStoreError: Redis is unreachable (`WeightsHostError`: the object store's host or
                the payload's owner is gone, or the pull timed out).
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
        try:
            fields = self._redis.hgetall(self._weights_key)
        except redis.ResponseError as exc:  # WRONGTYPE: something else than a manifest (a foreign SET)
            raise MalformedWeightsError(
                f"{self._weights_key} in {self._shown_url}: {exc}", key=self._weights_key
            ) from None
        except redis.RedisError as exc:
            raise WeightStoreError(f"cannot fetch weights from {self._shown_url}: {exc}", self._shown_url) from None
        if not fields:
            return None
        try:
            version, tensors = self._payload({key.decode(errors="replace"): value for key, value in fields.items()})
        except MalformedWeightsError as exc:
            raise MalformedWeightsError(
                f"{self._weights_key} in {self._shown_url}: {exc}", key=self._weights_key
            ) from None
        return (version, tensors) if version > known_version else None

    def _payload(self, fields: dict[str, bytes]) -> tuple[int, dict[str, torch.Tensor]]:
        """Decodes the payload a manifest points at (in the hash itself, or in the object store)."""
        try:
            transport = fields["transport"].decode()
            count, total = int(fields["chunks"]), int(fields["bytes"])
            if transport == REDIS:
                chunks = [fields[f"chunk:{i}"] for i in range(count)]
            elif transport == OBJECT_STORE:
                host, namespace = fields["host"].decode(), fields["namespace"].decode()
            else:
                raise ValueError(f"unknown transport {transport!r}")
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise MalformedWeightsError(f"not a weights manifest: {type(exc).__name__}: {exc}") from None
        if transport == OBJECT_STORE:
            if self._reader is None:
                self._reader = ObjectStoreReader(self.config.timeout_s)
            held, chunks = self._reader.fetch(host, namespace)
            if not chunks:  # a new host that holds no version yet
                return 0, {}
            total = sum(chunk.nbytes for chunk in chunks)
        return decode_weights(join_chunks(chunks, total))

    def close(self) -> None:
        """Closes the Redis connection. Payloads in the object store stay readable while this
        process lives (the run's final evaluation reads the last one after the learner stopped)."""
        self._redis.close()
