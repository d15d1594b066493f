"""The seam between the weight store and the transports that carry a payload: a `Transport`
publishes a payload and says where it is (fields of the manifest), and reads it back from a
manifest. Two implement it: `RedisTransport` (here: the payload in chunks, in a hash per publish
that the manifest names) and `ObjectStoreTransport` (learner/weights_host.py: Ray's object store).

Both check what they read against the manifest the same way: the payload's size and the SHA-256
of its header (`header_digest`: version, random publish id, every tensor's layout), which names
one publish. The tensors' bytes themselves are not hashed by readers (see weights_host.py for why
that is sound and what it saves)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import redis

from learner.errors import MalformedWeightsError, SupersededReadError, WeightStoreError
from learner.weights_codec import header_digest, split_chunks

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)

MAX_CHUNKS = 100_000
"""Most chunks a reader asks the sizes of (100,000 chunks of 64 MiB: 6.4 TB)."""


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
    """The transport's own fields (redis: payload; object store: host, namespace), absent ones left out."""


class Transport(Protocol):
    """Where a payload travels between the learner and its readers."""

    fields: tuple[str, ...]
    """The manifest fields of its own that a reader needs (read with the common ones)."""

    def publish(self, version: int, blob: bytes, announce: Callable[[dict], None]) -> None:
        """Makes `blob` readable as `version`, then calls `announce(fields)` with the manifest
        fields that say where it is, `chunks` among them (at once, or later from a thread)."""

    def read(self, manifest: Manifest) -> Buffer:
        """The payload `manifest` announces, checked against its size and header digest: a buffer
        that `decode_weights(..., in_place=True)` may view (the caller wraps the views in a
        `SharedWeights`, which hands out only copies)."""

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
    """The payload in Redis, in a hash of its own per publish (fields chunk:0 .. chunk:{n-1}) that
    the manifest names (`payload`): every reader downloads it whole from Redis. Runs without Ray.

    Why a key per publish: a reader fetches one chunk per call (a 300 MB policy costs a reader 300
    MB plus a chunk, and Redis one chunk's reply buffer per reader, not the whole payload), so a read
    spans many calls and can outlast a publish. A payload key is written once and never changed, so
    a publish made meanwhile leaves the read consistent; the publisher deletes a payload once
    `keep` newer ones exist (listed in `{key}:payloads`, so a restarted learner deletes an earlier
    one's too). A read overtaken by `keep` publishes or more may find its payload gone: it is
    `SupersededReadError` and the store reads the new manifest. Redis holds up to `keep` payloads,
    and `keep` + 1 plus one chunk while a publish is being written (chunks are written one call
    each: an unannounced key needs no transaction, and one would hold the whole payload in Redis's
    buffers a second time). A finished run leaves its newest `keep` payloads in its Redis (the
    embedded one goes with the run).

    Args:
        client: the store's Redis connection.
        key: the manifest hash's key (payload keys are `{key}:payload:{random id}`).
        chunk_bytes: the largest chunk a publisher writes.
        keep: payloads kept (the newest and the ones before it).
        shown_url: the Redis URL for messages (password hidden).
    """

    fields = ("payload",)

    def __init__(self, client: redis.Redis, key: str, chunk_bytes: int, keep: int, shown_url: str):
        self.client, self.key, self.chunk_bytes, self.keep, self.shown_url = client, key, chunk_bytes, keep, shown_url
        self.payloads_key = f"{key}:payloads"
        """A list of the payload keys written, oldest first."""

    def publish(self, version: int, blob: bytes, announce: Callable[[dict], None]) -> None:
        chunks = split_chunks(blob, self.chunk_bytes)
        payload_key = f"{self.key}:payload:{secrets.token_hex(8)}"
        try:
            self.client.rpush(self.payloads_key, payload_key)  # listed first: never left behind unlisted
            for i, chunk in enumerate(chunks):
                self.client.hset(payload_key, f"chunk:{i}", chunk)
            announce({"chunks": len(chunks), "payload": payload_key})
        except (redis.RedisError, WeightStoreError) as exc:
            self._forget(payload_key)
            if isinstance(exc, WeightStoreError):
                raise
            raise WeightStoreError(f"cannot publish weights to {self.shown_url}: {exc}", self.shown_url) from None
        self._delete_old()

    def _forget(self, payload_key: str) -> None:
        """Best effort: a payload that was never announced takes no place among the `keep`."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(payload_key)
            pipe.lrem(self.payloads_key, 0, payload_key)
            pipe.execute()
        except redis.RedisError:  # Redis away: the next publishes delete it as an old one
            pass

    def _delete_old(self) -> None:
        """Deletes the payloads older than the newest `keep` (after the announcement: readers of the
        newest never miss it)."""
        try:
            old = self.client.lrange(self.payloads_key, 0, -self.keep - 1)
            if old:
                pipe = self.client.pipeline(transaction=True)
                pipe.delete(*old)
                pipe.ltrim(self.payloads_key, len(old), -1)
                pipe.execute()
        except redis.RedisError as exc:  # deleted at the next publish
            log.warning("cannot delete old weights payloads in %s: %s", self.shown_url, exc)

    def read(self, manifest: Manifest) -> np.ndarray:
        payload_key = self._payload_key(manifest)
        try:
            sizes = self._chunk_sizes(payload_key, manifest)
            try:
                payload = np.empty(manifest.bytes, dtype=np.uint8)  # not zero-filled: every byte is written below
            except MemoryError:
                raise MalformedWeightsError(
                    f"weights v{manifest.version}: {manifest.bytes} bytes do not fit in this reader's memory", self.key
                ) from None
            position = 0
            for index, size in enumerate(sizes):
                chunk = self.client.hget(payload_key, f"chunk:{index}")
                if chunk is None:
                    raise self._superseded(manifest)
                if len(chunk) != size:
                    raise MalformedWeightsError(
                        f"weights v{manifest.version}: chunk {index} changed while being read", self.key
                    )
                payload[position : position + size] = np.frombuffer(chunk, dtype=np.uint8)
                position += size
                del chunk
        except redis.RedisError as exc:
            raise WeightStoreError(f"cannot fetch weights from {self.shown_url}: {exc}", self.shown_url) from None
        why = check_payload(payload, manifest)
        if why is not None:
            raise MalformedWeightsError(f"weights v{manifest.version}: {why}", self.key)
        payload.flags.writeable = False  # shared by the tensors handed out: see SharedWeights
        return payload

    def _payload_key(self, manifest: Manifest) -> str:
        try:
            payload_key = manifest.fields["payload"].decode()
        except (KeyError, UnicodeDecodeError) as exc:
            raise MalformedWeightsError(f"not a Redis manifest: {type(exc).__name__}: {exc}", self.key) from None
        if not payload_key.startswith(f"{self.key}:payload:"):
            raise MalformedWeightsError(f"payload {payload_key[:100]!r} is not a key of this run's weights", self.key)
        return payload_key

    def _chunk_sizes(self, payload_key: str, manifest: Manifest) -> list[int]:
        """Each chunk's size, asked before allocating the payload: they must add up to the bytes the
        manifest announces (a forged `bytes` never allocates more than Redis holds)."""
        if manifest.chunks > MAX_CHUNKS:
            raise MalformedWeightsError(f"weights v{manifest.version}: {manifest.chunks} chunks", self.key)
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(payload_key)
        for index in range(manifest.chunks):
            pipe.hstrlen(payload_key, f"chunk:{index}")
        exists, *sizes = pipe.execute()
        if not exists:
            raise self._superseded(manifest)
        if sum(sizes) != manifest.bytes or (manifest.bytes and 0 in sizes):  # 0: a chunk missing
            raise MalformedWeightsError(
                f"weights v{manifest.version}: the {manifest.chunks} chunks hold {sum(sizes)} bytes, "
                f"the manifest says {manifest.bytes}",
                self.key,
            )
        return sizes

    def _superseded(self, manifest: Manifest) -> SupersededReadError:
        return SupersededReadError(
            f"weights v{manifest.version} in {self.shown_url} were deleted while being read "
            f"({self.keep} newer versions were published meanwhile)",
            self.shown_url,
        )

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass
