"""The bench's streaming reader of Redis-carried weights: every byte a Redis subscriber downloads
and copies, one chunk held at a time.

Why: a subscriber of the Redis path holds its own copy of the payload while it downloads, and 32
subscribers on one node download at once (Redis serves them all from one thread, interleaved): 32
x 300 MB is 9.6 GB of copies on top of 32 Ray workers with torch (about 200 MiB each), more than
this VM can give a bench. `StreamingRedisReader` does the Redis path's work per byte (one HGET per
chunk, each chunk copied into a buffer of the reader's) but copies every chunk into the same
chunk-sized buffer, so it never holds the payload whole. It checks what `RedisTransport.read`
checks (the chunks add up to the announced size, the header digest is unchanged after the last
chunk and matches the payload's first bytes) and skips only the tensors' views (the decoder's
strict header parse and `torch.frombuffer` calls: about a millisecond) and the page faults of a
fresh payload-sized buffer: it does slightly less than a real reader, so latencies taken with it
favour the Redis path, never the object store.

Duck-types the two calls a `WeightSubscriber` makes on its store: `fetch` and `close`.
"""

from __future__ import annotations

import numpy as np

from learner import MalformedWeightsError, SupersededReadError, header_digest
from replay import connect_redis

FIELDS = ("version", "chunks", "bytes", "header_digest")


class StreamingRedisReader:
    """Reads `run`'s Redis-carried weights chunk by chunk into one chunk-sized buffer.

    Args:
        redis_url: the run's Redis.
        run: the run name (key namespace).
    """

    def __init__(self, redis_url: str, run: str):
        self.key, self.version_key = f"qfleet:{run}:learner:weights", f"qfleet:{run}:learner:weights_version"
        self.redis = connect_redis(redis_url, socket_timeout=60.0, socket_connect_timeout=5.0)
        self.scratch = np.empty(0, dtype=np.uint8)

    def fetch(self, known_version: int = 0) -> tuple[int, dict] | None:
        """(version, {}) once a version above `known_version` was downloaded whole, else None.

        Raises:
            SupersededReadError: a publish replaced the version while it was read (retried at the
                subscriber's next poll).
            MalformedWeightsError: the chunks do not add up, or the header is not the announced one.
        """
        announced = self.redis.get(self.version_key)
        if announced is None or int(announced) <= known_version:
            return None
        values = self.redis.hmget(self.key, FIELDS)
        if None in values:
            return None
        version, chunks, total = (int(value) for value in values[:3])
        digest = values[3]
        received, header = 0, None
        for index in range(chunks):
            chunk = self.redis.hget(self.key, f"chunk:{index}")
            if chunk is None:
                break
            if self.scratch.nbytes < len(chunk):
                self.scratch = np.empty(len(chunk), dtype=np.uint8)
            self.scratch[: len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)  # the copy a reader makes
            if index == 0:
                header = bytes(chunk[: 8 + min(len(chunk) - 8, int.from_bytes(chunk[:8], "little"))])
            received += len(chunk)
            del chunk
        if self.redis.hget(self.key, "header_digest") != digest:
            raise SupersededReadError(f"weights v{version} were replaced while being read")
        if received != total or header is None or header_digest(header).encode() != digest:
            raise MalformedWeightsError(f"weights v{version}: not the payload announced", self.key)
        return version, {}

    def close(self) -> None:
        self.redis.close()
