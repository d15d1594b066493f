"""The announced weights version, read without torch: one GET of `qfleet:{run}:learner:weights_version`.

`WeightStore.version` reads the same key through the store's connection; this module is for a
process that has not loaded torch yet (an actor of a fresh run deciding whether it may act before
its policy is built: `actors.EnvActor`), which `learner.weights` would load.
"""

from __future__ import annotations

from learner.errors import MalformedWeightsError, WeightStoreError
from learner.redis_values import parse_number


def weights_keys(run: str) -> tuple[str, str]:
    """The run's manifest key and its announced-version key (`learner.weights`' layout)."""
    return f"qfleet:{run}:learner:weights", f"qfleet:{run}:learner:weights_version"


def parse_version(value: bytes | None, key: str, shown_url: str) -> int:
    """The version a GET of `key` returned (0 when the key is absent: nothing published).

    Raises:
        MalformedWeightsError: the value is not an integer >= 0.
    """
    if value is None:
        return 0
    version = parse_number(value)
    if not isinstance(version, int) or version < 0:
        raise MalformedWeightsError(f"{key} in {shown_url} holds {value[:100]!r}, not a version", key=key)
    return version


def announced_version(redis_url: str, run: str) -> int:
    """The run's announced weights version (0: nothing published yet), on a connection of its own.

    Raises:
        WeightStoreError: Redis is unreachable.
        MalformedWeightsError: the key holds something else than an integer >= 0.
    """
    import redis

    from replay import connect_redis, redact_url

    shown_url = redact_url(redis_url)
    key = weights_keys(run)[1]
    client = connect_redis(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
    try:
        value = client.get(key)
    except redis.RedisError as exc:
        raise WeightStoreError(f"cannot read the weights version from {shown_url}: {exc}", shown_url) from None
    finally:
        client.close()
    return parse_version(value, key, shown_url)
