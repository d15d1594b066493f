"""The roof's typed errors: a bad config, a dataset that cannot be used, a run that failed, an
embedded Redis or local Ray that did not start, a node of the bench's local cluster that did not
come up."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key.

    Raised before anything starts; the CLI prints it and exits 2.
    """


class TrainError(RuntimeError):
    """A component of the run failed; the run was stopped (checkpoints written where possible)."""


class RedisLaunchError(RuntimeError):
    """redis-server is missing or did not start.

    Attributes:
        port: the port it was to listen on (None: it never ran).
        log_tail: the last lines redis-server printed (its own reason, when it gave one).
    """

    def __init__(self, message: str, port: int | None = None, log_tail: str = ""):
        super().__init__(f"{message}: {log_tail}" if log_tail else message)
        self.port = port
        self.log_tail = log_tail


class RayLaunchError(RuntimeError):
    """A local Ray could not be started as qfleet requires (private, on loopback).

    Attributes:
        gcs_address: the address Ray's GCS listens on ("" when Ray did not start).
    """

    def __init__(self, message: str, gcs_address: str = ""):
        super().__init__(message)
        self.gcs_address = gcs_address


class ClusterStartError(RuntimeError):
    """A node of the bench's local Ray cluster (system/bench/local_cluster.py) exited or did not
    come up in time. The message quotes the end of the node's log (`LocalDeployment` removes the
    log with its folder).

    Attributes:
        node: the node's name ("head", or a worker's name from the topology).
        reason: what happened.
        log_tail: the last 2,000 characters of the node's log.
    """

    def __init__(self, node: str, reason: str, log_tail: str = ""):
        super().__init__(f"Ray node {node!r} {reason}; the end of its log:\n{log_tail}")
        self.node = node
        self.reason = reason
        self.log_tail = log_tail


class DatasetError(ValueError):
    """A dataset is missing, malformed or does not fit the env; nothing of it was loaded.

    Attributes:
        dataset: the dataset's id or folder, as the user named it.
        field: what is at fault: a metadata key (`observation_space`, `total_steps`), a column
            (`rewards`, `observations`), or `episode 12` for a damaged episode file.
        reason: what is wrong with it, in words.
    """

    def __init__(self, dataset: str, field: str, reason: str):
        super().__init__(f"dataset {dataset!r}: {field}: {reason}")
        self.dataset = dataset
        self.field = field
        self.reason = reason


class ShardFillError(DatasetError):
    """Filling offline shards failed part-way: some shards hold part of the dataset.

    The shards cannot be topped up (`fill_shards` refuses shards that hold data, and a second
    fill would duplicate what is there): stop them and start fresh ones.

    Attributes:
        shard: the address of the shard whose insert or flush failed.
        sent: transitions handed to the shards (all of them) when the failure was reported; inserts
            stream, so the failing shard may have refused some of those.
        total: transitions the fill was to insert.
    """

    def __init__(self, dataset: str, shard: str, sent: int, total: int, cause: str):
        super().__init__(
            dataset,
            "shards",
            f"filling failed at shard {shard} with {sent:,} of {total:,} transitions sent ({cause}); the offline "
            "shards now hold part of the dataset: stop them and fill fresh ones",
        )
        self.shard = shard
        self.sent = sent
        self.total = total
