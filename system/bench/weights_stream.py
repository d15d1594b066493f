"""What the bench's subscribers do with a publish, the same on both paths: copy every byte of the
payload once, chunk by chunk, into one reused chunk-sized buffer (standing in for the load into a
network's parameters, the copy every actor makes). `copy_through` does it for the object store's
payload (mapped from the node's shared memory); `StreamingRedisReader` for Redis-carried weights,
copying each chunk as it arrives.

Why the Redis path streams: a subscriber of the Redis path holds its own copy of the payload
while it downloads, and 32 subscribers on one node download at once (Redis serves them all from
one thread, interleaved): 32 x 300 MB is 9.6 GB of copies on top of 32 Ray workers with torch
(about 200 MiB each), more than this VM can give a bench. `StreamingRedisReader` does the Redis
path's work per byte (one HGET per chunk of the publish's payload key, each chunk copied into the
reader's buffer) but never holds the payload whole. It checks what `RedisTransport.read` checks
(the manifest's format, the chunks add up to the announced size, the header, however many chunks
it spans, matches the header digest) and skips only the tensors' views (the decoder's strict header
parse and `torch.frombuffer` calls: about a millisecond) and the page faults of a fresh
payload-sized buffer: it does slightly less than a real reader, so latencies taken with it favour
the Redis path, never the object store.

Duck-types the two calls a `WeightSubscriber` makes on its store: `fetch` and `close`.
"""

from __future__ import annotations

import numpy as np

from learner import (
    MAX_HEADER_BYTES,
    WEIGHTS_MANIFEST_FORMAT,
    MalformedWeightsError,
    SupersededReadError,
    header_digest,
)
from replay import connect_redis

FIELDS = ("format", "version", "chunks", "bytes", "header_digest", "payload")


def copy_through(payload, scratch: np.ndarray) -> None:
    """Copies every byte of `payload` (any buffer) once, chunk by chunk, into `scratch`."""
    data = np.frombuffer(payload, dtype=np.uint8)
    step = scratch.nbytes
    for start in range(0, data.nbytes, step):
        piece = data[start : start + step]
        scratch[: piece.nbytes] = piece


def _keep_header(head: bytearray, chunk: bytes) -> None:
    """Appends to `head` what of `chunk` is the payload's length field or header (it may span chunks)."""
    used = 0
    while used < len(chunk):
        wanted = 8 if len(head) < 8 else 8 + min(int.from_bytes(head[:8], "little"), MAX_HEADER_BYTES)
        if len(head) >= wanted:
            return
        piece = chunk[used : used + wanted - len(head)]
        head += piece
        used += len(piece)


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
            SupersededReadError: the payload was deleted while it was read (newer versions
                published; retried at the subscriber's next poll).
            MalformedWeightsError: another manifest format, the chunks do not add up, or the header
                is not the announced one.
        """
        announced = self.redis.get(self.version_key)
        if announced is None or int(announced) <= known_version:
            return None
        values = dict(zip(FIELDS, self.redis.hmget(self.key, FIELDS), strict=True))
        if values["format"] != WEIGHTS_MANIFEST_FORMAT.encode():
            raise MalformedWeightsError(f"a manifest of format {values['format']!r}", self.key)
        version, chunks, total = (int(values[name]) for name in ("version", "chunks", "bytes"))
        digest, payload_key = values["header_digest"], values["payload"]
        received, head = 0, bytearray()
        for index in range(chunks):
            chunk = self.redis.hget(payload_key, f"chunk:{index}")
            if chunk is None:
                raise SupersededReadError(f"weights v{version} were deleted while being read")
            if self.scratch.nbytes < len(chunk):
                self.scratch = np.empty(len(chunk), dtype=np.uint8)
            self.scratch[: len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)  # the copy a reader makes
            _keep_header(head, chunk)
            received += len(chunk)
            del chunk
        if received != total or header_digest(bytes(head)).encode() != digest:
            raise MalformedWeightsError(f"weights v{version}: not the payload announced", self.key)
        return version, {}

    def close(self) -> None:
        self.redis.close()
