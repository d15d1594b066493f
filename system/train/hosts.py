"""The replay shards and the learner as Ray actors of a `qfleet train` run.

Each host does its work from `__init__` on, so when Ray restarts a host's dead process the new
one carries on by itself: a shard restores its newest checkpoint and registers again (clients find
it through Redis), a learner resumes from its newest checkpoint and publishes its weights.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replay import ReplayConfig, ReplayCredentials, ReplayServer, ShardAccounting, Spec

if TYPE_CHECKING:  # the learner's modules load torch: a shard's process never needs them
    from system.services.learner import LearnerDescription, LearnerProgress, LearnerResult


def restarted_by_ray() -> bool:
    """Whether Ray restarted this actor's process (after it died)."""
    import ray

    with warnings.catch_warnings():  # Ray's property itself uses an API it deprecated, and says so
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def node_address() -> str:
    """This Ray node's address as the cluster knows it (what `ray start --node-ip-address` set)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return node["NodeManagerAddress"]
    return ray.util.get_node_ip_address()


@dataclass(frozen=True)
class ShardDescription:
    """Where a started shard serves and what it restored (an entry of run.json's "shards")."""

    shard_id: int
    address: str
    metrics: str
    """host:port of its /metrics ("" when off)."""
    pid: int
    restored_from: str
    """The checkpoint it restored ("" when it started empty)."""
    size: int
    refused_checkpoints: list[str]
    """Why checkpoints it found were not restored."""


@dataclass(frozen=True)
class ShardCounters:
    """A shard's table counters."""

    size: int
    inserts: int
    samples: int
    capacity: int
    lost_transitions: int
    """Transitions this shard id acknowledged and then lost to its crashes during the run."""
    pid: int
    """Its process (a restarted shard has a new one)."""
    host: str
    """The machine's hostname (the driver kills a hung shard on its own machine by PID)."""
    accounting: ShardAccounting
    """Its insert ledger: items stored per stream and writer, receipts of abandoned streams."""


class ShardHost:
    """One replay shard serving gRPC from inside a Ray actor.

    Args:
        spec: the item spec.
        config: the shard's settings (shard_id, registry, checkpoint_dir, ...).
        node_ip: bind to this node's IP instead of config.host (on a cluster, so that other nodes
            can reach it).
        credentials: the run's replay credentials, private key included: the shard serves TLS and
            refuses calls without the token (None, given explicitly: plaintext). Ray keeps them with the actor's constructor
            arguments (in its token-protected GCS), so a restarted shard serves with the same.
        items: columns inserted before the shard serves and registers (an offline shard's share of
            a dataset: clients never see it half full). Ray keeps them with the constructor
            arguments too, so a restarted offline shard (no checkpoints) comes back full.
    """

    def __init__(
        self,
        spec: Spec,
        config: ReplayConfig,
        node_ip: bool = False,
        *,
        credentials: ReplayCredentials | None,
        items: dict | None = None,
    ):
        if node_ip:
            config = dataclasses.replace(config, host=node_address())
        server = ReplayServer(spec, config=config, credentials=credentials)
        if items is not None:
            server.table.insert(items)
        self.server = server.start()

    def describe(self) -> ShardDescription:
        """Address, metrics address, pid and what was restored."""
        server = self.server
        return ShardDescription(
            shard_id=server.config.shard_id,
            address=server.address,
            metrics=f"{server.config.host}:{server.metrics_port}" if server.metrics_port else "",
            pid=os.getpid(),
            restored_from=str(server.restored_from or ""),
            size=server.table.info().size,
            refused_checkpoints=list(server.refused_checkpoints),
        )

    def info(self) -> ShardCounters:
        info, accounting = self.server.counters()  # at one moment: the unattributed count is no race
        return ShardCounters(
            size=info.size,
            inserts=info.inserts,
            samples=info.samples,
            capacity=info.capacity,
            lost_transitions=self.server.lost_transitions,
            pid=os.getpid(),
            host=socket.gethostname(),
            accounting=accounting,
        )

    def stop(self) -> ShardCounters:
        """Stops serving and writes the final checkpoint (when it has a checkpoint_dir)."""
        self.server.stop()
        return self.info()


class LearnerHost:
    """A `LearnerService` in a Ray actor: it trains from `__init__` on.

    Args:
        config: the run config (its learner section decides everything the learner does).
        obs_shape, action_space: the env's spaces.
        redis_url, run: the run's Redis.
        checkpoint_dir: learner checkpoints (resumed when present).
        num_threads: torch intra-op threads.
        metrics_host: interface of /metrics (a free port); "node": this Ray node's IP; None: no
            /metrics.
        replay_credentials: the run's replay token and certificate (no private key); required, so
            that plaintext (None) is always a choice made at the call site.
        reached: how far earlier learners of the run got (`learner.LearnerReached`): a resumed or
            restarted learner continues above it (a process Ray restarted also reads what the
            run's Redis remembers).
    """

    def __init__(
        self,
        config,
        obs_shape: tuple[int, ...],
        action_space,
        redis_url: str,
        run: str,
        checkpoint_dir: str,
        num_threads: int = 1,
        metrics_host: str | None = "127.0.0.1",
        *,
        replay_credentials: ReplayCredentials | None,
        reached=None,
    ):
        import torch

        from system.services.learner import LearnerService

        torch.set_num_threads(max(1, num_threads))
        if metrics_host == "node":
            metrics_host = node_address()
        self.service = LearnerService(
            config,
            obs_shape,
            action_space,
            redis_url,
            run,
            checkpoint_dir,
            metrics_host=metrics_host,
            publish_at_resume=True,
            replay_credentials=replay_credentials,
            reached=reached,
            restarted=restarted_by_ray(),
        ).start()

    def describe(self) -> LearnerDescription:
        return self.service.describe()

    def progress(self) -> LearnerProgress:
        return self.service.progress()

    def stop(self) -> LearnerResult:
        return self.service.stop()
