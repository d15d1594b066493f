"""The replay shards and the learner as Ray actors of a `qfleet train` run.

Each host does its work from `__init__` on, so when Ray restarts a host's dead process the new
one carries on by itself: a shard restores its newest checkpoint and registers again (clients find
it through Redis), a learner resumes from its newest checkpoint and publishes its weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time

from replay import ReplayConfig, ReplayServer, Spec

log = logging.getLogger("qfleet.train")


def node_address() -> str:
    """This Ray node's address as the cluster knows it (what `ray start --node-ip-address` set)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return node["NodeManagerAddress"]
    return ray.util.get_node_ip_address()


class ShardHost:
    """One replay shard serving gRPC from inside a Ray actor.

    Args:
        spec: the item spec.
        config: the shard's settings (shard_id, registry, checkpoint_dir, ...).
        node_ip: bind to this node's IP instead of config.host (on a cluster, so that other nodes
            can reach it).
    """

    def __init__(self, spec: Spec, config: ReplayConfig, node_ip: bool = False):
        if node_ip:
            config = dataclasses.replace(config, host=node_address())
        self.server = ReplayServer(spec, config=config).start()

    def describe(self) -> dict:
        """Address, metrics address, pid and what was restored."""
        info = self.server.table.info()
        metrics = f"{self.server.config.host}:{self.server.metrics_port}" if self.server.metrics_port else ""
        return {
            "shard_id": self.server.config.shard_id,
            "address": self.server.address,
            "metrics": metrics,
            "pid": os.getpid(),
            "restored_from": str(self.server.restored_from or ""),
            "size": info.size,
            "refused_checkpoints": list(self.server.refused_checkpoints),
        }

    def info(self) -> dict:
        info = self.server.table.info()
        return {"size": info.size, "inserts": info.inserts, "samples": info.samples, "capacity": info.capacity}

    def stop(self) -> dict:
        """Stops serving and writes the final checkpoint (when it has a checkpoint_dir)."""
        self.server.stop()
        return self.info()


class LearnerHost:
    """The learner's training loop in a thread of a Ray actor, with /metrics and a status report.

    Args:
        config: the run config (its learner section decides everything the learner does).
        obs_shape, action_space: the env's spaces.
        redis_url, run: the run's Redis.
        checkpoint_dir: learner checkpoints (resumed when present).
        num_threads: torch intra-op threads.
        metrics_host: interface of /metrics (a free port); "node": this Ray node's IP; None: no
            /metrics.
    """

    REPORT_EVERY_S = 1.0

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
    ):
        import torch
        from prometheus_client import start_http_server

        from learner import Learner, LearnerStatus, WeightStore, make_replay
        from replay import ShardedCollector

        torch.set_num_threads(max(1, num_threads))
        self.replay = make_replay(config.learner, redis_url=redis_url, run=run)
        self.store = WeightStore(redis_url, run)
        self.learner = Learner(
            config.learner, self.replay, obs_shape, action_space, run=run, weight_store=self.store,
            checkpoint_dir=checkpoint_dir, log_every_s=60.0,
        )  # fmt: skip
        self.learner.metrics.registry.register(ShardedCollector(self.replay))
        self.metrics_address = ""
        self._http = None
        if metrics_host == "node":
            metrics_host = node_address()
        if metrics_host is not None:
            self._http, _ = start_http_server(0, addr=metrics_host, registry=self.learner.metrics.registry)
            host = socket.gethostname() if metrics_host == "0.0.0.0" else metrics_host
            self.metrics_address = f"{host}:{self._http.server_port}"
        if self.learner.resumed_from is not None:
            self.learner.publish()  # actors of the resumed run act with the trained weights at once
        self.status = LearnerStatus(redis_url, run)
        self._stop = threading.Event()
        self._summary = None
        self._error: str | None = None
        self._progress: dict = {}
        self._last = (time.monotonic(), self.learner.updates)
        self._thread = threading.Thread(target=self._train, name="learner", daemon=True)
        self._thread.start()
        self._reporter = threading.Thread(target=self._report_loop, name="learner-status", daemon=True)
        self._reporter.start()

    def _train(self) -> None:
        try:
            self._summary = self.learner.run(stop=self._stop)
        except Exception as exc:  # reported to the driver through `progress`
            log.exception("learner failed")
            self._error = f"{type(exc).__name__}: {exc}"

    def _report_loop(self) -> None:
        while not self._stop.wait(self.REPORT_EVERY_S):
            self._measure()
            try:
                self.status.write(self._status_fields())
            except Exception as exc:  # Redis hiccup: the next report tries again
                log.debug("learner status not written: %s", exc)

    def _measure(self) -> None:
        now, updates = time.monotonic(), self.learner.updates
        last_time, last_updates = self._last
        stats = self.replay.stats()
        rate = (updates - last_updates) / max(now - last_time, 1e-9)
        self.learner.metrics.updates_per_second.set(rate)  # the loop itself logs (and sets it) rarely here
        self._progress = {
            "updates": updates,
            "updates_per_second": rate,
            "version": self.learner.version,
            "inserts": stats["inserts"],
            "achieved_utd": updates / stats["inserts"] if stats["inserts"] else 0.0,
            "device": str(self.learner.device),
            "error": self._error,
            "resumed_from": str(self.learner.resumed_from or ""),
        }
        self._last = (now, updates)

    def _status_fields(self) -> dict:
        p, last = self._progress, self.learner.last_result
        return {
            "updates": p["updates"],
            "updates_per_second": round(p["updates_per_second"], 2),
            "weights_version": p["version"],
            "achieved_utd": round(p["achieved_utd"], 4),
            "target_utd": self.learner.config.updates_per_env_step,
            "loss": round(float(last.loss), 6) if last is not None else "",
            "q_mean": round(float(last.q_mean), 4) if last is not None else "",
            "device": p["device"],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "metrics": self.metrics_address,
        }

    def describe(self) -> dict:
        """Device, pid, metrics address and where it resumed from."""
        return {
            "device": str(self.learner.device),
            "pid": os.getpid(),
            "metrics": self.metrics_address,
            "resumed_from": str(self.learner.resumed_from or ""),
            "updates": self.learner.updates,
            "version": self.learner.version,
        }

    def progress(self) -> dict:
        """The latest measurement (updated every REPORT_EVERY_S); `error` is set if the loop died."""
        if not self._progress:
            self._measure()
        return dict(self._progress, error=self._error)

    def stop(self) -> dict:
        """Ends the loop after the current update; it publishes and checkpoints. Returns a summary."""
        self._stop.set()
        self._thread.join()
        self._reporter.join()
        summary = self._summary
        result = {
            "updates": self.learner.updates,
            "version": self.learner.version,
            "checkpoint": str(summary.checkpoint) if summary and summary.checkpoint else "",
            "error": self._error,
        }
        self.replay.close()
        self.store.close()
        self.status.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        return result
