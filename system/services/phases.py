"""Which phase a (re)started learner of a run with an offline dataset trains in, and how many
offline updates it has left.

Two records know where such a run was: the learner's checkpoint (`learner.PhaseMark`: the phase it
was written in, the offline updates its network made, where online began) and the run's state.json
(`phase`, `online_from`, written by the driver as the learner reports). They disagree when one is
older than the other: a checkpoint refused as corrupt leaves an older one; a driver killed before
its next state.json write leaves an older state.json. Phases only go forward (offline -> online),
so **the later phase wins**, whichever record holds it: a run that either record saw online
resumes online and never runs the offline phase again. Otherwise **the checkpoint's offline
updates count**: they are what the resumed network has learnt (state.json counts no offline
updates; the updates made after the checkpoint are lost, as in any resume, and made again). A
checkpoint without a mark (written before marks were, or no checkpoint: a fresh learner) counts
its update count as offline updates, up to `offline.updates`.
"""

from __future__ import annotations

from dataclasses import dataclass

from learner import PhaseMark
from system.config import FINISHED, OFFLINE, ONLINE


@dataclass(frozen=True)
class PhaseDecision:
    """Where a starting learner of a run with an offline dataset stands."""

    phase: str
    """"offline" (updates on the dataset alone remain), "online", or "finished" (an offline-only
    run whose offline updates are all made: it trains no more)."""
    offline_updates: int
    """Offline updates the network has made."""
    offline_left: int
    """Offline updates still to make (0 unless `phase` is "offline")."""
    online_from: int | None
    """The learner update at which the online phase began (None while it has not)."""
    note: str = ""
    """Why the records disagreed and which one won ("" when they agree): logged by the learner."""

    def utd_from(self, updates: int) -> int:
        """The update from which a learner now at `updates` counts its UTD (online updates only):
        where the online phase began, or, before it, where the offline phase will end."""
        return self.online_from if self.online_from is not None else updates + self.offline_left

    def mark(self) -> PhaseMark:
        """The checkpoint mark of this decision (a finished run's is its offline phase's)."""
        if self.phase == ONLINE:
            return PhaseMark(ONLINE, self.offline_updates, self.online_from)
        return PhaseMark(OFFLINE, self.offline_updates)


def decide_phase(
    offline_target: int,
    offline_only: bool,
    learner_updates: int,
    checkpoint: PhaseMark | None,
    run_phase: str | None,
    run_online_from: int | None = None,
) -> PhaseDecision:
    """The phase a learner starting at `learner_updates` trains in (see the module's rule).

    Args:
        offline_target: `offline.updates` (as configured now: a resume may raise it while the
            run is still offline).
        offline_only: train.total_env_steps is 0: no online phase follows the offline one.
        learner_updates: the learner's update count (from its checkpoint, or where a fresh learner
            counts on from).
        checkpoint: the mark of the checkpoint resumed from (None: none, or one without a mark).
        run_phase: state.json's `phase` (None: not recorded: a new run, or killed before its first
            state.json).
        run_online_from: state.json's `online_from["updates"]` (None: not recorded).
    """
    done = checkpoint.offline_updates if checkpoint is not None else min(learner_updates, offline_target)
    # Without a mark, online began where the offline phase ended (the rule before marks).
    unmarked_start = learner_updates if checkpoint is not None else min(learner_updates, offline_target)
    online_in = [
        name
        for name, phase in (("checkpoint", checkpoint and checkpoint.phase), ("state.json", run_phase))
        if phase == ONLINE
    ]
    if online_in or offline_target == 0:
        online_from = next(
            (at for at in (checkpoint and checkpoint.online_from, run_online_from) if at is not None), unmarked_start
        )
        note = ""
        if online_in and done < offline_target:
            note = (
                f"the {' and the '.join(online_in)} had the run online, its network with {done:,} of "
                f"offline.updates={offline_target:,} offline updates: it resumes online (phases only go forward; "
                "the offline phase is not run again)"
            )
        return PhaseDecision(ONLINE, done, 0, min(online_from, learner_updates), note)
    if done < offline_target:
        return PhaseDecision(OFFLINE, done, offline_target - done, None)
    if offline_only:
        return PhaseDecision(FINISHED, done, 0, None)
    return PhaseDecision(ONLINE, done, 0, unmarked_start)
