"""What a run records: its counters (state.json) and the lines of metrics.jsonl.

Each record is a dataclass whose `to_json()` gives the line's object: {"kind": "progress" |
"episodes" | "eval" | "learner" | "phase", ...}, with the keys (and their order) `qfleet report` and older runs use.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from learner import CLAMPED_WARNING_FRACTION
from replay import reconcile
from system.train.faults import FaultCounts

log = logging.getLogger(__name__)

RECENT_EPISODES = 100
"""The "recent return" is the mean over this many latest episodes."""


class RunCounters:
    """The run's counters: this session's plus what earlier sessions of a resumed run did.

    Args:
        state: state.json of the run so far (empty for a fresh run).
        eval_every_steps: train.eval_every_steps (where the first evaluation of a fresh run is).
        eval_every_updates: offline.eval_every_updates (the first offline-phase evaluation).
        resumed: a `--resume` (whether or not the run's state.json was written).
    """

    def __init__(self, state: dict, eval_every_steps: int, eval_every_updates: int = 0, resumed: bool = False):
        self.start_env_steps = int(state.get("env_steps", 0))
        """Env steps of the earlier sessions."""
        self.start_episodes = int(state.get("episodes", 0))
        self.start_wall_s = float(state.get("wall_s", 0.0))
        self.next_eval = int(state.get("next_eval", 0)) or eval_every_steps
        """Env steps at which the next evaluation is due."""
        if eval_every_steps and self.next_eval % eval_every_steps:
            # a resume that changed train.eval_every_steps: the fleet's chunks end on the new
            # interval's multiples, so the next evaluation is due at the first of them at the latest
            self.next_eval = min(self.next_eval, (self.start_env_steps // eval_every_steps + 1) * eval_every_steps)
        self.evals = int(state.get("evals", 0))
        last_eval = state.get("last_eval")
        self.last_eval: tuple[int, float] | None = tuple(last_eval) if last_eval else None
        """(env steps, mean return) of the latest evaluation."""
        self.env_steps = self.start_env_steps
        """Env steps of the whole run so far."""
        self.learner_restarts = int(state.get("learner_restarts", 0))
        """Times a learner resumed from a checkpoint after its process died (all sessions)."""
        self.learner_updates_lost = int(state.get("learner_updates_lost", 0))
        """Updates lost with those learners (made after their newest checkpoint)."""
        self.fresh_learners: list[int] = [int(at) for at in state.get("fresh_learners", [])]
        """Env steps at which a resume started a fresh learner (no good checkpoint, --fresh-learner)."""
        self.faults = FaultCounts.from_json(state.get("faults"))
        """Faults of the whole run so far (the supervisor counts them)."""
        self.shards_lost = int(state.get("shards_lost", 0))
        """Transitions that shards acknowledged and lost when they died, over the run (each shard
        id's ledger in its checkpoint directory counts across sessions)."""
        self.transitions_given_back = int(state.get("transitions_given_back", 0))
        """Transitions a shard stored of batches that replay then handed back to an actor
        unacknowledged (no shard took the re-send in time): the actor counted them lost, and
        the shard holds them or counted them lost too (replay/accounting.py), over the run."""
        self.accounting_tracked = "transitions_inserted" in state or not state
        """Whether every shard keeps an insert ledger (train.checkpoint_replay): only then are the
        stored-for-the-actors counts facts (else they stay out of state, records and status)."""
        self.transitions_untracked = int(state.get("transitions_untracked", 0))
        """Items the shards counted beyond their ledgers' stream slots (in no actor's total)."""
        self.receipts_unresolved = int(state.get("receipts_unresolved", 0))
        """Receipts naming a stream no shard's ledger holds (their stored-twice items are unknown)."""
        self.receipts_dropped = int(state.get("receipts_dropped", 0))
        """Receipts the shards refused (another writer's stream, or no room left)."""
        self.transitions_unattributed = int(state.get("transitions_unattributed", 0))
        """present + lost by shards - stored twice - given back - stored for the actors: items no
        actor is credited with (a plain client's inserts, untracked streams, unresolved receipts);
        0 when everything adds up."""
        self.start_fleet_lost = int(state.get("transitions_lost", 0)) - self.shards_lost + self.transitions_given_back
        """Batches of earlier sessions that no shard acknowledged."""
        self.fleet_lost = 0
        """This session's batches that no shard acknowledged (the actors count them)."""
        self.transitions_inserted = int(state.get("transitions_inserted", 0))
        """Transitions stored for the actors over the run, each once, as the shards' insert ledgers
        count them (a killed actor's last chunk included): present + lost by shards - stored twice."""
        self.credit_baseline: dict[int, int] | None = {} if not (state or resumed) else None
        """Per writer tag, the ledger count this session's credit starts from: 0 in a fresh run; in a
        resumed one, the counts at this session's first poll of every shard (None before it).
        What an earlier session stored after its last state.json (a killed driver) is not
        credited: that session's env steps stay as its state recorded them."""
        self.stored_by_writer: dict[int, int] = {}
        """Items stored for each writer tag over the run, at the latest poll of every shard."""
        self.env_steps_unreported = 0
        """Env steps of this session that no actor process reported (it was killed before its
        next report) but whose transitions the shards stored: counted into `env_steps`."""
        self.transitions_stored_twice = int(state.get("transitions_stored_twice", 0))
        """Transitions a shard stored (held, or lost with it) whose writer then re-sent them to
        another shard, having had no reply (replay/accounting.py)."""
        self.phase: str | None = state.get("phase")
        """"offline" (the learner on the dataset alone) or "online" (actors act) in a run with an
        offline dataset; None in an online-only run."""
        self.online_from: dict | None = state.get("online_from")
        """Where the online phase began: {"wall_s", "env_steps", "updates"} (None before it, and in
        an online-only run)."""
        self.next_offline_eval = int(state.get("next_offline_eval", 0)) or eval_every_updates
        """Learner updates at which the next offline-phase evaluation is due."""
        self.offline_until: int | None = None
        """The update at which the learner's offline phase ends, as the learner reports it (None
        before its first report; not saved: each session's learner says)."""
        self.updates = 0
        """The learner's updates at its latest report."""
        self.replay_inserts = int(state.get("replay_inserts", 0))
        """Items the shards acknowledged over the run, lost ones included, at the latest poll of
        every shard (`take_shard_accounting`; a resumed run starts from its state.json's)."""
        self.session_episodes = 0
        self.returns: deque[float] = deque(maxlen=RECENT_EPISODES)
        self._started = time.monotonic()

    @property
    def episodes(self) -> int:
        return self.start_episodes + self.session_episodes

    @property
    def transitions_lost(self) -> int:
        """Transitions lost over the whole run (never stored, or lost by a shard's crash), each
        once: what an actor counted lost that a shard had stored (given back) counts once."""
        return self.start_fleet_lost + self.fleet_lost + self.shards_lost - self.transitions_given_back

    def count_env_steps(self, run: str, fleet) -> None:
        """Sets the run's env steps from this session's fleet (`actors.FleetStats`): what its
        processes reported, plus, for each actor id, the transitions the shards' ledgers stored
        for it beyond the env steps its processes reported. Each stored transition is one env
        step of its own (n-step windows included), so an actor took at least as many env steps as
        the shards stored for it: a process killed after inserting and before its next report is
        counted. A lower bound as long as the ledgers' per-writer counts are exact, so nothing is
        credited once a shard dropped or could not resolve a receipt (a re-sent batch would then
        count twice for its writer). Short by what a dead process still had buffered. Never goes
        back."""
        unreported = 0
        start = self.credit_baseline
        exact = not (self.receipts_dropped or self.receipts_unresolved or self.transitions_unattributed)
        if self.accounting_tracked and start is not None and exact and self.stored_by_writer:
            from actors import actor_writer_id
            from replay import writer_tag

            for actor_id in fleet.actor_ids:
                tag = writer_tag(actor_writer_id(run, actor_id))
                reported = fleet.env_steps_by_actor.get(actor_id, 0)
                stored = self.stored_by_writer.get(tag, 0) - start.get(tag, 0)
                unreported += max(0, stored - reported)
        self.env_steps_unreported = unreported
        self.env_steps = max(self.env_steps, self.start_env_steps + fleet.env_steps + unreported)

    def accounting(self) -> dict[str, int]:
        """The stored-for-the-actors counts as state.json and progress records hold them; empty
        when a shard keeps no ledger (nothing there would be a fact)."""
        if not self.accounting_tracked:
            return {}
        return {
            "transitions_inserted": self.transitions_inserted,
            "transitions_stored_twice": self.transitions_stored_twice,
            "transitions_given_back": self.transitions_given_back,
            "transitions_unattributed": self.transitions_unattributed,
            "transitions_untracked": self.transitions_untracked,
            "receipts_unresolved": self.receipts_unresolved,
            "receipts_dropped": self.receipts_dropped,
        }

    def wall_s(self) -> float:
        """Seconds the run has trained, over all its sessions (rounded to ms)."""
        return round(self.start_wall_s + time.monotonic() - self._started, 3)

    def recent_return(self) -> float | None:
        return sum(self.returns) / len(self.returns) if self.returns else None

    def add_episodes(self, returns: list[float]) -> None:
        self.returns.extend(float(r) for r in returns)
        self.session_episodes += len(returns)

    def start_online(self, updates: int) -> PhaseRecord:
        """The online phase begins now, at the learner's `updates`: counted, and its record."""
        self.phase = "online"
        self.online_from = {"wall_s": self.wall_s(), "env_steps": self.env_steps, "updates": updates}
        return PhaseRecord("online", **self.online_from)

    def state(self) -> dict:
        """What state.json holds (a resumed run starts from it)."""
        phases = {}
        if self.phase is not None:
            phases = {"phase": self.phase, "online_from": self.online_from, "next_offline_eval": self.next_offline_eval}
        return {
            **phases,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "wall_s": self.wall_s(),
            "next_eval": self.next_eval,
            "evals": self.evals,
            "last_eval": list(self.last_eval) if self.last_eval else None,
            "learner_restarts": self.learner_restarts,
            "learner_updates_lost": self.learner_updates_lost,
            "fresh_learners": self.fresh_learners,
            "transitions_lost": self.transitions_lost,
            "shards_lost": self.shards_lost,
            "replay_inserts": self.replay_inserts,
            **self.accounting(),
            "faults": self.faults.to_json(),
        }


ACCOUNTING_FIELDS = (
    "transitions_inserted",
    "transitions_stored_twice",
    "transitions_given_back",
    "transitions_unattributed",
    "transitions_untracked",
    "receipts_unresolved",
    "receipts_dropped",
)
"""A progress record's stored-for-the-actors counts (`RunCounters.accounting`): left out of its
JSON when no shard ledger counts them."""

STALENESS_FIELDS = ("policy_staleness", "sample_staleness", "sample_age_s")
"""A progress record's staleness figures: left out of its JSON while unknown (None)."""


@dataclass(frozen=True)
class ProgressRecord:
    """The run at one moment (every RECORD_EVERY_S, and once more, `final`, after the learner stopped)."""

    wall_s: float
    time: float
    """Unix time."""
    env_steps: int
    env_steps_per_s: float
    episodes: int
    recent_return: float | None
    last_eval: list | None
    """[env steps, mean return] of the latest evaluation."""
    updates: int
    updates_per_s: float
    achieved_utd: float
    """Updates per item inserted into the replay over the run (lost items included)."""
    learner_inserts: int
    """The inserts that UTD is of, as the learner counted them (`LearnerProgress.inserts`): exact,
    where `updates / achieved_utd` is rounded."""
    target_utd: float
    weights_version: int
    replay_size: int
    replay_inserts: int
    """Items the shards acknowledged over the run, those lost to shard crashes included: what the
    learner's UTD counts (a lost shard's env steps were made, and learnt from)."""
    actors: int
    actor_restarts: int
    env_restarts: int
    transitions_lost: int
    """Transitions lost over the run: batches no shard acknowledged, plus what shards that died
    had acknowledged after their newest checkpoint."""
    random_steps: int = 0
    """Env steps this session's actors acted uniformly at random before their policies were built
    (a fresh run's first steps, `actors.random_before_policy`; included in `env_steps`)."""
    transitions_inserted: int | None = None
    """Transitions stored for the actors over the run, each once (the shards' ledgers; None, and
    left out of the JSON with the fields below, when a shard keeps no ledger)."""
    transitions_stored_twice: int | None = None
    """Transitions stored by a shard and, with no reply reaching the writer, again elsewhere."""
    transitions_given_back: int | None = None
    """Transitions a shard stored of batches handed back to an actor unacknowledged (counted
    lost once in `transitions_lost`)."""
    transitions_unattributed: int | None = None
    """present + lost by shards - stored twice - given back - stored for the actors (0: exact)."""
    transitions_untracked: int | None = None
    """Transitions of streams beyond the shards' ledger slots (in no actor's total)."""
    receipts_unresolved: int | None = None
    """Receipts naming a stream no shard's ledger holds."""
    receipts_dropped: int | None = None
    """Receipts the shards refused."""
    faults: dict[str, int] = field(default_factory=dict)
    """FaultCounts of the run so far."""
    silent: dict[str, float] = field(default_factory=dict)
    """Components that have not answered for a while: name -> seconds."""
    final: bool = False
    """The run's last counters (the key is written only when true)."""
    phase: str | None = None
    """"offline" or "online" in a run with an offline dataset (the key is written only then)."""
    policy_staleness: float | None = None
    """The learner's weights version minus the mean of the versions the live actors act with
    (None, and left out of the JSON, while no actor runs)."""
    sample_staleness: float | None = None
    """The learner's version minus the mean version that produced its latest batch (None, and
    left out, before it sampled actors' data)."""
    sample_age_s: float | None = None
    """Seconds since the versions of the learner's latest batch were published (batch mean; None,
    and left out, as `sample_staleness`)."""

    clamped_fraction: float | None = None
    """Share of the learner's latest batch's targets outside the value support (c51, hl_gauss; the
    key is written only then)."""

    actors_held_back: int | None = None
    """Live actors whose inserts wait on replay's rate limiter now: held back by the UTD, the
    learner being slower than the actors (None, and left out, while no actor runs or their reports
    cannot be read)."""

    def to_json(self) -> dict:
        record = {"kind": "progress", **dataclasses.asdict(self)}
        for name in ("clamped_fraction", "actors_held_back"):
            if record[name] is None:
                del record[name]
        for name in (*ACCOUNTING_FIELDS, *STALENESS_FIELDS):
            if record[name] is None:
                del record[name]
        if not self.final:
            del record["final"]
        if self.phase is None:
            del record["phase"]
        return record


@dataclass(frozen=True)
class EpisodesRecord:
    """Episodes that actors finished since the previous record, one list entry each."""

    wall_s: float
    env_steps: int
    returns: list[float]
    lengths: list[int]
    actors: list[int]
    policy_versions: list[int]

    def to_json(self) -> dict:
        return {"kind": "episodes", **dataclasses.asdict(self)}


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation of published weights."""

    env_steps: int
    """Env steps of the run when the weights were taken."""
    wall_s: float
    weights_version: int
    final: bool
    mean_return: float
    std_return: float
    returns: list[float]
    lengths: list[int]
    seconds: float
    phase: str | None = None
    """"offline" or "online" in a run with an offline dataset (phase and updates are written only then)."""
    updates: int | None = None
    """The learner's updates when the weights were taken (runs with an offline dataset)."""
    scheduled_env_steps: int | None = None
    """The multiple of train.eval_every_steps this periodic evaluation is for (`env_steps` is at
    or shortly past it: the driver sees the count as actors' chunks end); written only then."""

    def to_json(self) -> dict:
        record = {"kind": "eval", **dataclasses.asdict(self)}
        if self.phase is None:
            del record["phase"], record["updates"]
        if self.scheduled_env_steps is None:
            del record["scheduled_env_steps"]
        return record


@dataclass(frozen=True)
class PhaseRecord:
    """A run with an offline dataset entered a phase: "offline" (the learner on the dataset alone)
    or "online" (actors started; batches mix the dataset with their data)."""

    phase: str
    wall_s: float
    env_steps: int
    updates: int
    """The learner's updates when the phase began."""

    def to_json(self) -> dict:
        return {"kind": "phase", **dataclasses.asdict(self)}


@dataclass(frozen=True)
class LearnerEventRecord:
    """The learner came back without some of its training: "restarted" (Ray restarted its dead
    process; it resumed from its newest good checkpoint), "resumed" (a resume after a session that
    ended without its stop checkpoint: a killed driver) or "fresh" (a resume found no good
    checkpoint and --fresh-learner let a fresh learner continue)."""

    event: str
    wall_s: float
    env_steps: int
    updates: int
    """The update it continued from."""
    updates_lost: int
    """Updates an earlier learner had reported beyond that."""
    resumed_from: str
    """The checkpoint ("" for a fresh learner)."""

    def to_json(self) -> dict:
        return {"kind": "learner", **dataclasses.asdict(self)}


def progress_line(record: ProgressRecord, total_env_steps: int) -> str:
    """The line `qfleet train` prints every train.log_every_s."""
    recent = "-" if record.recent_return is None else f"{record.recent_return:.1f}"
    last_eval = record.last_eval
    evaluated = "-" if last_eval is None else f"{last_eval[1]:.1f} @ {last_eval[0]:,}"
    phase = "" if record.phase is None else f"{record.phase} phase: "
    return (
        f"[{record.wall_s:7.0f} s] {phase}env steps {record.env_steps:,}/{total_env_steps:,} "
        f"({record.env_steps_per_s:,.0f}/s) | episodes {record.episodes:,}, return {recent} (eval {evaluated}) | "
        f"updates {record.updates:,} ({record.updates_per_s:,.0f}/s), "
        f"utd {record.achieved_utd:.3f}/{record.target_utd:g} | "
        f"replay {record.replay_size:,} | weights v{record.weights_version}"
        + _held_back_text(record)
        + _clamped_text(record)
        + _faults_text(record)
    )


def _held_back_text(record: ProgressRecord) -> str:
    """ " | held back by the UTD: n/m actors" while actors' inserts wait on the learner, else ""."""
    if not record.actors_held_back:
        return ""
    return (
        f" | held back by the UTD: {record.actors_held_back}/{record.actors} actors wait for the learner "
        f"(updates {record.updates_per_s:,.0f}/s at UTD {record.target_utd:g})"
    )


def _clamped_text(record: ProgressRecord) -> str:
    """ " | CLAMPED TARGETS n% (...)" while the value support clamps more than a small share of the
    learner's batch, else ""."""
    fraction = record.clamped_fraction
    if fraction is None or fraction <= CLAMPED_WARNING_FRACTION:
        return ""
    return f" | CLAMPED TARGETS {fraction:.0%} of the batch (learner.v_min/v_max cannot hold the returns)"


def offline_progress_line(record: ProgressRecord, offline_updates: int, dataset_size: int) -> str:
    """The line `qfleet train` prints every train.log_every_s in the offline phase (no actors yet)."""
    last_eval = record.last_eval
    evaluated = "-" if last_eval is None else f"{last_eval[1]:.1f}"
    return (
        f"[{record.wall_s:7.0f} s] offline phase: updates {record.updates:,}/{offline_updates:,} "
        f"({record.updates_per_s:,.0f}/s) on {dataset_size:,} dataset transitions | eval {evaluated} | "
        f"weights v{record.weights_version}" + _faults_text(record)
    )


def _faults_text(record: ProgressRecord) -> str:
    """ " | faults: ..., lost N | silent: ..." when there is anything to say, else ""."""
    text = ""
    faults = FaultCounts.from_json(record.faults).describe()
    if faults or record.transitions_lost:
        text += f" | faults: {faults or 'none'}; {record.transitions_lost:,} transitions lost"
        if record.transitions_stored_twice:
            text += f", {record.transitions_stored_twice:,} stored twice"
        if record.transitions_given_back:
            text += f", {record.transitions_given_back:,} given back"
    if record.transitions_unattributed:
        text += f" | unattributed: {record.transitions_unattributed:,} transitions"
    if record.silent:
        text += " | silent: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in record.silent.items())
    return text


def take_shard_accounting(counters: RunCounters, shards: list) -> None:
    """Sets the run's lost-by-shards, inserted, stored-twice and given-back counts from every
    shard's counters and insert ledger (`ShardCounters`, one per shard id: call it with all of
    them, or not at all, so that the counts of the last call are kept)."""
    counters.shards_lost = sum(shard.lost_transitions for shard in shards)
    counters.replay_inserts = sum(shard.inserts for shard in shards) + counters.shards_lost
    reconciled = reconcile(shard.accounting for shard in shards)
    counters.accounting_tracked = reconciled.tracked
    if not reconciled.tracked:
        counters.transitions_given_back = 0
        return
    counters.transitions_stored_twice = reconciled.stored_twice
    counters.transitions_given_back = reconciled.given_back
    counters.transitions_untracked = reconciled.untracked_items
    counters.receipts_unresolved = reconciled.unresolved
    counters.receipts_dropped = reconciled.dropped_receipts + reconciled.refused
    counters.transitions_inserted = sum(items for tag, items in reconciled.by_writer.items() if tag)
    counters.stored_by_writer = {tag: items for tag, items in reconciled.by_writer.items() if tag}
    if counters.credit_baseline is None:  # a resumed run's first poll: its credit starts here
        counters.credit_baseline = dict(counters.stored_by_writer)
    present = sum(shard.inserts for shard in shards)
    unattributed = (
        present
        + counters.shards_lost
        - counters.transitions_stored_twice
        - counters.transitions_given_back
        - counters.transitions_inserted
    )
    if unattributed and unattributed != counters.transitions_unattributed:
        log.warning(
            "%s transitions unattributed: %s in shards + %s lost by shards - %s stored twice - %s given back "
            "!= %s stored for the actors (%s untracked, %s receipts unresolved, %s dropped)",
            f"{unattributed:,}",
            f"{present:,}",
            f"{counters.shards_lost:,}",
            f"{counters.transitions_stored_twice:,}",
            f"{counters.transitions_given_back:,}",
            f"{counters.transitions_inserted:,}",
            f"{counters.transitions_untracked:,}",
            f"{counters.receipts_unresolved:,}",
            f"{counters.receipts_dropped:,}",
        )
    counters.transitions_unattributed = unattributed
