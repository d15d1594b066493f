"""Who may call a shard: the run's bearer token, checked before any handler runs.

A shard started with `ReplayCredentials` serves TLS only and installs `TokenInterceptor`: every
call of every method (Insert, Sample, Credit, UpdatePriorities, Info, Checkpoint, any added later)
must carry gRPC metadata `authorization: Bearer <token>`. A call without it, or with another
token, is answered UNAUTHENTICATED by a stand-in handler, so the servicer never sees it and the
table, priorities and checkpoints stay as they were. The refusal names no token.

Clients send the header with every call (`call_metadata`), over the TLS channel only.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc

AUTHORIZATION = "authorization"
"""The metadata key of the token (gRPC's and HTTP's name for it; lower case on the wire)."""

REFUSAL = "this replay shard requires the run's replay token: the call carried none or a wrong one"
"""The UNAUTHENTICATED details a refused call gets (clients recognise nothing else of it)."""


def bearer(token: str) -> str:
    """The `authorization` value that carries `token`."""
    return f"Bearer {token}"


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends with every call."""
    return ((AUTHORIZATION, bearer(token)),)


def _refuse(request_or_iterator, context: grpc.ServicerContext):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler that refuses at once, reading no request, answering as `handler` would.

    It always takes the request as a stream, even for a unary-request method: gRPC reads a unary
    request whole on a worker thread before the handler runs, so a peer that sends headers and
    withholds the body would hold that worker (and 64 such calls every worker). A streaming
    handler runs at once and aborts without reading anything.
    """
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse)
    return grpc.stream_unary_rpc_method_handler(_refuse)


class TokenInterceptor(grpc.ServerInterceptor):
    """Lets through only calls whose `authorization` metadata is `Bearer <token>`.

    The comparison is constant-time (`hmac.compare_digest`). It runs on gRPC's polling thread
    before a handler thread is taken, so it only reads the metadata and counts.

    Args:
        token: the run's replay token.
        on_refused: called once per refused call (the shard counts them).
    """

    def __init__(self, token: str, on_refused: Callable[[], None] = lambda: None):
        if not token:
            raise ValueError("the replay token must not be empty")
        self._expected = bearer(token).encode()
        self._on_refused = on_refused

    def authorized(self, metadata) -> bool:
        """Whether `metadata` (gRPC invocation metadata) carries the token."""
        for key, value in metadata or ():
            if key == AUTHORIZATION:
                given = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
                return hmac.compare_digest(given, self._expected)
        return False

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or self.authorized(handler_call_details.invocation_metadata):
            return handler  # an unknown method stays UNIMPLEMENTED
        self._on_refused()
        return _refusal(handler)
