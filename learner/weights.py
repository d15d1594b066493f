"""The parameter store: versioned policy weights in Redis, as safetensors bytes (no pickle).

    qfleet:{run}:learner:weights           bytes   safetensors; metadata: version, published_at
    qfleet:{run}:learner:weights_version   int     the announced version (one cheap GET to poll)

Both are written in one MULTI/EXEC, so a reader never sees a version without its weights.
Versions start at 1 and only grow; 0 means nothing was published yet.
"""

from __future__ import annotations

import json
import logging
import time

import redis
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from learner.errors import MalformedWeightsError, WeightStoreError
from learner.redis_values import parse_number
from replay import connect_redis, redact_url

log = logging.getLogger(__name__)


def _keys(run: str) -> tuple[str, str]:
    return f"qfleet:{run}:learner:weights", f"qfleet:{run}:learner:weights_version"


class WeightStore:
    """Publishes (learner) and fetches (actors) versioned weights.

    Args:
        redis_url: the run's Redis.
        run: the run name (key namespace).
    """

    def __init__(self, redis_url: str, run: str = "default"):
        self.redis_url, self.run = redis_url, run
        self._weights_key, self._version_key = _keys(run)
        self._shown_url = redact_url(redis_url)
        self._redis = connect_redis(redis_url, socket_timeout=10.0, socket_connect_timeout=2.0)
        self._lower_seen = False  # a version below the one held was announced (logged once)

    def __reduce__(self):
        return (type(self), (self.redis_url, self.run))

    def publish(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Stores `state` as `version` and announces it; returns the size in bytes."""
        tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}
        blob = save_safetensors(tensors, metadata={"version": str(version), "published_at": f"{time.time():.6f}"})
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(self._weights_key, blob)
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
            WeightStoreError: Redis is unreachable.
            MalformedWeightsError: the version or the weights key holds a malformed value.
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
            blob = self._redis.get(self._weights_key)
        except redis.RedisError as exc:
            raise WeightStoreError(f"cannot fetch weights from {self._shown_url}: {exc}", self._shown_url) from None
        if blob is None:
            return None
        try:
            version, tensors = decode_weights(blob)
        except MalformedWeightsError as exc:
            raise MalformedWeightsError(
                f"{self._weights_key} in {self._shown_url}: {exc}", key=self._weights_key
            ) from None
        return (version, tensors) if version > known_version else None

    def close(self) -> None:
        self._redis.close()


def decode_weights(blob: bytes) -> tuple[int, dict[str, torch.Tensor]]:
    """(version, tensors) of a published blob.

    Raises:
        MalformedWeightsError: not safetensors, or no version in its metadata.
    """
    try:
        tensors = load_safetensors(blob)
        header_len = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_len]).get("__metadata__", {})
        return int(metadata["version"]), tensors
    except Exception as exc:
        raise MalformedWeightsError(f"not a qfleet weights blob: {type(exc).__name__}: {exc}") from None
