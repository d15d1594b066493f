"""A Redis outage is said once when it starts and once when it ends, whatever the number of rounds
that fail or succeed in between."""

from __future__ import annotations

import logging

from actors import RedisGap


def test_a_gap_is_warned_once_with_its_first_cause_and_its_end_said_once(caplog):
    gap = RedisGap(logging.getLogger("qfleet.test.gap"), away="reports not written", back="Redis is back")
    with caplog.at_level(logging.INFO, logger="qfleet.test.gap"):
        gap.succeeded()  # no gap yet: nothing to say
        gap.failed("connection refused")
        gap.failed("connection reset")
        assert gap.away
        gap.succeeded()
        gap.succeeded()
        gap.failed("timeout")  # a second gap is said again
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [
        (logging.WARNING, "reports not written: connection refused"),
        (logging.INFO, "Redis is back"),
        (logging.WARNING, "reports not written: timeout"),
    ]
    assert gap.away
