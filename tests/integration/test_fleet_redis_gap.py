"""A Redis restart in the middle of a run costs the fleet's scaling reads a few rounds, never the
run: while Redis is away the fleet keeps its size and says so once."""

from __future__ import annotations

import logging
import signal
from types import SimpleNamespace

from actors import ActorFleet
from actors.fleet import desired_count_gap
from actors.registry import ActorRegistry


def test_the_desired_count_is_not_read_while_redis_is_away_and_read_again_after(redis_server, caplog):
    registry = ActorRegistry(redis_server.url, run="gap")
    fleet = SimpleNamespace(registry=registry, _desired_gap=desired_count_gap())  # the state ActorFleet._desired uses
    try:
        registry.set_desired(3)
        assert ActorFleet._desired(fleet) == 3
        redis_server.proc.send_signal(signal.SIGKILL)
        redis_server.proc.wait(timeout=30)
        with caplog.at_level(logging.INFO, logger="actors.fleet"):
            assert ActorFleet._desired(fleet) is None
            assert ActorFleet._desired(fleet) is None
            redis_server.stop()
            redis_server.start()
            registry.set_desired(5)
            assert ActorFleet._desired(fleet) == 5
        said = [r.getMessage() for r in caplog.records if r.name == "actors.fleet"]
        assert len([m for m in said if "not read while Redis is away" in m]) == 1, said
        assert said[-1] == "desired actor count read again"
    finally:
        registry.close()
