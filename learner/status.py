"""The learner's status hash in Redis, for `qfleet status` and the `qfleet train` driver.

    qfleet:{run}:learner:status   hash   updates, updates_per_second, weights_version, achieved_utd,
                                         target_utd, loss, q_mean, policy_loss, imitation_weight
                                         (offline losses; "" otherwise), device, host, pid, metrics,
                                         checkpoint, updated_at; expires `ttl_s` after a report
    qfleet:{run}:learner:reached  hash   updates, weights_version: the latest reported, kept
                                         (REACHED_TTL_S) so a restarted learner knows what it lost;
                                         a new run of the same name deletes it (`forget_reached`)

Values are plain strings (no pickle); `read` gives numbers back as numbers.
"""

from __future__ import annotations

import time

from learner.redis_values import parse_number
from replay import connect_redis

REACHED_TTL_S = 7 * 24 * 3600
"""How long the `reached` hash outlives the last report."""


def learner_status_key(run: str) -> str:
    """The learner status key of run `run`; run="*" makes a pattern matching every run's."""
    return f"qfleet:{run}:learner:status"


class LearnerStatus:
    """Writes (the learner) and reads (status views) one run's learner status hash.

    Args:
        redis_url: the run's Redis.
        run: the run name (key namespace).
    """

    def __init__(self, redis_url: str, run: str = "default"):
        self.redis_url, self.run = redis_url, run
        self._key = learner_status_key(run)
        self._reached_key = f"qfleet:{run}:learner:reached"
        self._redis = connect_redis(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)

    def write(self, fields: dict[str, int | float | str], ttl_s: float = 10.0) -> None:
        """Replaces the status with `fields` (plus updated_at); raises redis.RedisError."""
        mapping = {k: str(v) for k, v in fields.items()} | {"updated_at": f"{time.time():.3f}"}
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._key)
        pipe.hset(self._key, mapping=mapping)
        pipe.pexpire(self._key, int(ttl_s * 1000))
        reached = {k: mapping[k] for k in ("updates", "weights_version") if k in mapping}
        if reached:  # HSET with no fields is an error that would lose the whole write
            pipe.hset(self._reached_key, mapping=reached)
            pipe.expire(self._reached_key, REACHED_TTL_S)
        pipe.execute()

    def reached(self) -> dict[str, int]:
        """The latest counters a learner of this run reported ({} when none): updates,
        weights_version. Raises redis.RedisError."""
        fields = self._redis.hgetall(self._reached_key)
        values = {k.decode(): parse_number(v) for k, v in fields.items()}
        return {k: v for k, v in values.items() if isinstance(v, int)}

    def forget_reached(self) -> None:
        """Deletes the `reached` hash: a new run that reuses this run name must not inherit an
        earlier run's counters. Raises redis.RedisError."""
        self._redis.delete(self._reached_key)

    def read(self) -> dict[str, int | float | str] | None:
        """The latest status, or None when no learner reported within its TTL."""
        fields = self._redis.hgetall(self._key)
        return {k.decode(): parse_number(v) for k, v in fields.items()} if fields else None

    def close(self) -> None:
        self._redis.close()
