"""Connecting to a run's Redis with its password, and showing its URL without one.

The password comes from the URL (`redis://:PASSWORD@host:port/db`, a deployment's choice) or, when
the URL has none, from the `QFLEET_REDIS_PASSWORD` environment variable: `qfleet train` sets it for
its embedded redis-server, a deployment sets it on every node from a secret. URLs that qfleet
prints, logs or writes to a run folder go through `redact_url` first.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

PASSWORD_ENV = "QFLEET_REDIS_PASSWORD"
"""The run's Redis password when its URL carries none."""


def connect_redis(
    url: str, *, socket_timeout: float = 10.0, socket_connect_timeout: float = 2.0, password: str | None = None
):
    """A `redis.Redis` for `url`, authenticated with `password`, the URL's own password, or
    `QFLEET_REDIS_PASSWORD` (in that order)."""
    import redis

    parts = urlsplit(url)
    in_url = parts.password or any(key == "password" for key, _ in parse_qsl(parts.query))
    password = password or (None if in_url else os.environ.get(PASSWORD_ENV)) or None
    extra = {"password": password} if password else {}
    return redis.Redis.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout, **extra
    )


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***` (safe to print, log and store): the one in the
    address (`redis://:PASSWORD@host`) and a `password=` query parameter (redis-py's form for
    `unix://` URLs)."""
    parts = urlsplit(url)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = urlencode([(key, "***" if key == "password" else value) for key, value in pairs], safe="*/")
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    if netloc == parts.netloc:  # keep the URL's own spelling (unix:///path keeps its slashes)
        return url.replace(f"?{parts.query}", f"?{query}", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
