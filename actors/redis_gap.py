"""A gap in the run's Redis, said once: one warning when it starts, one line when it ends.

Several parts of a run read or write the run's Redis every round (an actor's reports, the fleet's
desired count, the driver's episode feed). While Redis restarts, each of them goes on without it;
the log should say so once per gap, not once per round.
"""

from __future__ import annotations

import logging


class RedisGap:
    """Tracks whether the last use of the run's Redis failed, and logs only the changes."""

    def __init__(self, logger: logging.Logger, *, away: str, back: str) -> None:
        self._logger = logger
        self._away_text = away
        self._back_text = back
        self.away = False
        """True from a failed use until the next one that succeeds."""

    def failed(self, cause: object) -> None:
        """A use failed (`cause`: the error, or what failed and why): warn unless this gap was
        already said."""
        if not self.away:
            self._logger.warning("%s: %s", self._away_text, cause)
        self.away = True

    def succeeded(self) -> None:
        """A use succeeded: say the gap ended, once, if there was one."""
        if self.away:
            self._logger.info("%s", self._back_text)
        self.away = False
