"""The seam between the weight store and the transports that carry a payload: a `Transport`
publishes a payload and says where it is (fields of the manifest), and reads it back from a
manifest. Two implement it: `RedisTransport` (here: the payload in chunks in the manifest hash
itself) and `ObjectStoreTransport` (learner/weights_host.py: Ray's object store).

Both check what they read against the manifest the same way: the payload's size and the SHA-256
of its header (`header_digest`: version, random publish id, every tensor's layout), which names
one publish. The tensors' bytes themselves are not hashed by readers (see weights_host.py for why
that is sound and what it saves)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import redis

from learner.errors import MalformedWeightsError, SupersededReadError, WeightStoreError
from learner.weights_codec import header_digest, split_chunks

if TYPE_CHECKING:
    from typing_extensions import Buffer


@dataclass(frozen=True)
class Manifest:
    """The manifest a reader got from Redis: the common fields parsed, the transport's own raw."""

    version: int
    transport: str
    chunks: int
    bytes: int
    header_digest: str
    """SHA-256 (hex) of the payload's header: `learner.weights_codec.header_digest`."""
    fields: dict[str, bytes]
    """The transport's own fields (host, namespace), absent ones left out."""


class Transport(Protocol):
    """Where a payload travels between the learner and its readers."""

    fields: tuple[str, ...]
    """The manifest fields of its own that a reader needs (read with the common ones)."""

    def publish(self, version: int, blob: bytes, announce: Callable[[dict], None]) -> None:
        """Makes `blob` readable as `version`, then calls `announce(fields)` with the manifest
        fields that say where it is, `chunks` among them (at once, or later from a thread)."""

    def read(self, manifest: Manifest) -> Buffer:
        """The payload `manifest` announces, checked against its size and header digest: a buffer
        that `decode_weights(..., in_place=True)` may view (the caller never writes to the tensors)."""

    def flush(self, timeout: float) -> bool:
        """Waits for published versions still on their way; False if `timeout` passed first."""

    def close(self) -> None:
        """Stops what the transport started (payloads already announced stay readable)."""


def check_payload(payload: Buffer, manifest: Manifest) -> str | None:
    """Why `payload` is not the one `manifest` announces (its size, its header digest), or None."""
    size = memoryview(payload).nbytes
    if size != manifest.bytes:
        return f"{size} bytes, the manifest says {manifest.bytes}"
    try:
        digest = header_digest(payload)
    except MalformedWeightsError as exc:
        return str(exc)
    if digest != manifest.header_digest:
        return "its header is not the one the manifest announces (another version or publish)"
    return None


class RedisTransport:
    """The payload in the manifest hash itself (fields chunk:0 .. chunk:{n-1}): every reader
    downloads it whole from Redis. Runs without Ray.

    A reader fetches one chunk at a time into one buffer (a 300 MB policy costs a reader 300 MB
    plus a chunk, and Redis one chunk's reply buffer per reader, not the whole payload), then
    reads the header digest again: unchanged, no publish replaced the hash in between (a publish
    replaces it whole in one MULTI/EXEC, and every publish's digest differs); changed, the read
    is `SupersededReadError` and the store reads the new manifest.

    Args:
        client: the store's Redis connection.
        key: the manifest hash's key.
        chunk_bytes: the largest chunk a publisher writes.
        shown_url: the Redis URL for messages (password hidden).
    """

    fields = ()

    def __init__(self, client: redis.Redis, key: str, chunk_bytes: int, shown_url: str):
        self.client, self.key, self.chunk_bytes, self.shown_url = client, key, chunk_bytes, shown_url

    def publish(self, version: int, blob: bytes, announce: Callable[[dict], None]) -> None:
        chunks = split_chunks(blob, self.chunk_bytes)
        announce({"chunks": len(chunks), **{f"chunk:{i}": chunk for i, chunk in enumerate(chunks)}})

    def read(self, manifest: Manifest) -> np.ndarray:
        payload = np.empty(manifest.bytes, dtype=np.uint8)  # not zero-filled: every byte is written below
        position = 0
        try:
            for index in range(manifest.chunks):
                chunk = self.client.hget(self.key, f"chunk:{index}")
                if chunk is None or position + len(chunk) > manifest.bytes:
                    position = -1
                    break
                payload[position : position + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                position += len(chunk)
                del chunk
            digest_now = self.client.hget(self.key, "header_digest")
        except redis.RedisError as exc:
            raise WeightStoreError(f"cannot fetch weights from {self.shown_url}: {exc}", self.shown_url) from None
        if digest_now != manifest.header_digest.encode():
            raise SupersededReadError(
                f"weights v{manifest.version} in {self.shown_url} were replaced while being read", self.shown_url
            )
        if position != manifest.bytes:
            raise MalformedWeightsError(f"the chunks do not add up to the {manifest.bytes} bytes announced", self.key)
        why = check_payload(payload, manifest)
        if why is not None:
            raise MalformedWeightsError(f"weights v{manifest.version}: {why}", self.key)
        return payload

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass
