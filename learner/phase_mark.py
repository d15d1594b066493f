"""Where a learner stood in a run with an offline phase, as its checkpoints record it.

A run with an offline dataset trains in two phases: the dataset alone ("offline"), then actors'
data mixed with it ("online"). Each learner checkpoint of such a run carries a `PhaseMark`, so a
resumed (or restarted) learner knows how many offline updates its network has made and whether it
had gone online, instead of guessing from its update count (which a changed `offline.updates`, or
a checkpoint older than the run's records, would get wrong). Deciding the phase from this and the
run's own records is the runner's (system/services/phases.py).
"""

from __future__ import annotations

from dataclasses import dataclass

OFFLINE_PHASE = "offline"
ONLINE_PHASE = "online"


@dataclass(frozen=True)
class PhaseMark:
    """The phase a checkpoint was written in."""

    phase: str
    """"offline" (the dataset alone) or "online" (actors' data too)."""
    offline_updates: int
    """Updates this network made in the offline phase (final once it went online)."""
    online_from: int | None = None
    """The learner's update at which the online phase began (None while offline)."""

    def __post_init__(self) -> None:
        if self.phase not in (OFFLINE_PHASE, ONLINE_PHASE):
            raise ValueError(f"phase {self.phase!r}: must be {OFFLINE_PHASE!r} or {ONLINE_PHASE!r}")
        if self.offline_updates < 0:
            raise ValueError(f"offline_updates={self.offline_updates}: must be >= 0")

    def to_state(self) -> dict:
        """The checkpoint's "phase" entry (plain values: `torch.load(weights_only=True)` reads them)."""
        return {"phase": self.phase, "offline_updates": self.offline_updates, "online_from": self.online_from}

    @classmethod
    def from_state(cls, state: dict) -> PhaseMark | None:
        """The mark of a checkpoint's contents; None when it has none (a run without an offline
        phase, or a checkpoint from before marks were written) or a malformed one (then the
        runner decides from the run's records and the update count, as it would without)."""
        entry = state.get("phase")
        if not isinstance(entry, dict):
            return None
        try:
            online_from = entry.get("online_from")
            return cls(
                str(entry["phase"]),
                int(entry["offline_updates"]),
                None if online_from is None else int(online_from),
            )
        except (KeyError, TypeError, ValueError):
            return None
