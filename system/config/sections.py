"""The `train`, `redis` and `ray` sections of a run config: what `qfleet train` needs beyond the
packages' own sections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from replay import redact_url


@dataclass(frozen=True)
class TrainConfig:
    """One `qfleet train` run: its length, its directory, its shards, evaluation and placement."""

    total_env_steps: int = 100_000
    """Env steps over all actors at which the run stops (a resumed run counts on); 0: an offline-only
    run (with an `offline:` dataset and updates): the offline phase, a final evaluation, no actors."""

    run_dir: str | None = None
    """Run directory (config, metrics.jsonl, checkpoints, plots); null: runs/<run name>."""

    run_name: str | None = None
    """Namespace of the run's Redis keys and metric labels; null: the run directory's name."""

    seed: int | None = None
    """Seeds everything when set: learner.seed, actors.seed, shard i's sampling (seed + i)."""

    num_shards: int = 1
    """Replay shards (each a Ray actor serving gRPC); actors spread their inserts over them."""

    checkpoint_replay: bool = True
    """Shards checkpoint into the run directory at shutdown, for --resume; false: resume empty."""

    shard_checkpoint_every_s: float | None = 30.0
    """Seconds between a shard's checkpoints during the run (with checkpoint_replay): a shard that
    dies restores the newest and loses only what came after it (counted); null: only at shutdown."""

    max_component_failures: int = 5
    """A run stops (cleanly, resumable) when one component fails this many times within
    failure_window_s; fewer failures are ridden out (Ray restarts it, or the driver replaces it)."""

    failure_window_s: float = 600.0
    """The window of max_component_failures, in seconds."""

    silent_after_s: float = 30.0
    """A shard that answers no call for this long is hung: the driver has Ray restart it."""

    restart_grace_s: float = 120.0
    """A shard coming back from a restart is hung only when it has not answered for this long
    (starting a process and restoring a checkpoint can take much longer than silent_after_s on a
    busy host); once it has answered, silent_after_s applies again."""

    eval_every_steps: int = 10_000
    """Env steps between evaluations of the latest weights (0: only at the end)."""

    eval_episodes: int = 10
    """Episodes per evaluation (run side by side, one env each)."""

    eval_skip_when_busy: bool = True
    """Evaluations run beside training, one at a time: True skips a scheduled evaluation requested
    while one runs and another already waits (training is never held up, the log says so); False
    queues every one (each holds its weights until evaluated), so every scheduled point is
    evaluated: `qfleet bench learning` sets it so that "held" is judged on the whole schedule."""

    eval_epsilon: float = 0.0
    """Exploration during evaluation: a uniform action with this probability (0: none; Atari protocols
    often use 0.001 to 0.05)."""

    eval_acting: Literal["greedy", "policy"] = "greedy"
    """How evaluation acts: "greedy" (argmax of Q, or of the offline losses' pi) or "policy" (as the
    actors act: with `learner.policy_acting: sample`, a draw from pi; else greedy as well)."""

    log_every_s: float = 10.0
    """Seconds between progress lines in the terminal (metrics.jsonl gets a record every second)."""

    metrics_port: int | None = 0
    """Port of the driver's /metrics (qfleet_train_*); 0: a free one; null: off."""

    metrics_host: str = "127.0.0.1"
    """Interface the driver's /metrics binds to; "node": this Ray node's IP (the cluster default)."""

    learner_num_cpus: float = 1.0
    """CPUs the learner requests from Ray (also its torch threads, at least 1)."""

    learner_num_gpus: float | None = None
    """GPUs the learner requests from Ray; null: 1 if the cluster has one and learner.device != cpu."""

    learner_resources: dict[str, float] | None = None
    """Custom Ray resources the learner requests, e.g. {learner: 1} (a node started with
    `ray start --resources '{"learner": 1}'`)."""

    shard_resources: dict[str, float] | None = None
    """Custom Ray resources each replay shard requests, e.g. {replay: 1}: shards go only to nodes
    that offer them, spread over those nodes (a node lost takes as few shards as it can), and a
    shard whose node is lost restarts on another that offers them."""

    @property
    def learner_threads(self) -> int:
        """The learner's torch intra-op threads: `learner_num_cpus`, at least 1."""
        return max(1, int(self.learner_num_cpus))

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        if self.total_env_steps < 0:
            bad("total_env_steps", "must be >= 0 (0: offline only)")
        if self.run_name is not None and (not self.run_name or ":" in self.run_name or "/" in self.run_name):
            bad("run_name", "must be a non-empty name without ':' or '/'")
        if not 1 <= self.num_shards <= 1024:
            bad("num_shards", "must be in [1, 1024]")
        if self.shard_checkpoint_every_s is not None and not self.shard_checkpoint_every_s > 0:
            bad("shard_checkpoint_every_s", "must be > 0, or null")
        if self.max_component_failures < 1:
            bad("max_component_failures", "must be >= 1")
        if not self.failure_window_s > 0:
            bad("failure_window_s", "must be > 0")
        if not self.silent_after_s > 0:
            bad("silent_after_s", "must be > 0")
        if not self.restart_grace_s > 0:
            bad("restart_grace_s", "must be > 0")
        if self.eval_every_steps < 0:
            bad("eval_every_steps", "must be >= 0")
        if self.eval_episodes < 1:
            bad("eval_episodes", "must be >= 1")
        if not 0.0 <= self.eval_epsilon <= 1.0:
            bad("eval_epsilon", "must be in [0, 1]")
        if not self.log_every_s > 0:
            bad("log_every_s", "must be > 0")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            bad("metrics_port", "must be a port number (0: any free port), or null")
        if self.learner_num_cpus < 0:
            bad("learner_num_cpus", "must be >= 0")
        if self.learner_num_gpus is not None and self.learner_num_gpus < 0:
            bad("learner_num_gpus", "must be >= 0, or null")
        for name in ("learner_resources", "shard_resources"):
            if any(not amount >= 0 for amount in (getattr(self, name) or {}).values()):
                bad(name, "amounts must be >= 0")


@dataclass(frozen=True)
class RedisConfig:
    """The run's Redis (shard registry, weight store, actor and learner reports)."""

    url: str | None = None
    """e.g. redis://redis:6379/0; null: `qfleet train` starts a redis-server on a loopback port."""

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            shown = redact_url(self.url)
            raise ValueError(f"url={shown!r}: expected redis://HOST:PORT/DB (or rediss://, unix://)")


@dataclass(frozen=True)
class RayConfig:
    """Where the run's Ray actors live."""

    address: str | None = None
    """An existing Ray cluster ("auto", or HOST:PORT of its head); null: start Ray on this machine."""

    num_cpus: int | None = None
    """Local Ray only: CPUs it offers; null: enough for the learner and every actor (>= the cores)."""

    worker_niceness: int = 0
    """Local Ray only: the niceness (0-19) of Ray's worker processes, i.e. the learner, actors,
    shards and weights host. Ray's own default, 15, puts them behind every ordinary process on the
    machine (the `qfleet train` driver, Ray's daemons, anything else running): on a busy 2-core
    machine the learner then ran about a quarter fewer updates/s. 15: Ray's default."""

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus={self.num_cpus}: must be >= 1, or null")
        if not 0 <= self.worker_niceness <= 19:
            raise ValueError(f"worker_niceness={self.worker_niceness}: must be 0-19")
