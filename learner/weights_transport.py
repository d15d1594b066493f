"""The seam between the weight store and the transports that carry a payload: a `Transport`
publishes chunks and says where they are (fields of the manifest), and reads them back from a
manifest. Two implement it: `RedisTransport` (here: the chunks in the manifest itself) and
`ObjectStoreTransport` (learner/weights_host.py: Ray's object store)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from learner.errors import MalformedWeightsError
from learner.weights_codec import join_chunks


@dataclass(frozen=True)
class Manifest:
    """The manifest hash a reader got from Redis: the common fields parsed, the rest raw."""

    version: int
    transport: str
    chunks: int
    bytes: int
    fields: dict[str, bytes]
    """Every field, for the transport's own (chunk:i; or host, namespace, digest:i)."""


class Transport(Protocol):
    """Where a payload travels between the learner and its readers."""

    def publish(self, version: int, chunks: list[memoryview], announce: Callable[[dict], None]) -> None:
        """Makes `chunks` readable as `version`, then calls `announce(fields)` with the manifest
        fields that say where they are (at once, or later from a thread of its own)."""

    def read(self, manifest: Manifest) -> bytearray:
        """The payload `manifest` announces, joined into one writable buffer."""

    def flush(self, timeout: float) -> bool:
        """Waits for published versions still on their way; False if `timeout` passed first."""

    def close(self) -> None:
        """Stops what the transport started (payloads already announced stay readable)."""


class RedisTransport:
    """The payload in the manifest hash itself (fields chunk:0 .. chunk:{n-1}): every reader
    downloads it whole from Redis. Runs without Ray."""

    def publish(self, version: int, chunks: list[memoryview], announce: Callable[[dict], None]) -> None:
        announce({f"chunk:{i}": chunk for i, chunk in enumerate(chunks)})

    def read(self, manifest: Manifest) -> bytearray:
        try:
            chunks = [manifest.fields[f"chunk:{i}"] for i in range(manifest.chunks)]
        except KeyError as exc:
            raise MalformedWeightsError(f"not a weights manifest: chunk {exc} missing") from None
        return join_chunks(chunks, manifest.bytes)

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass
