"""The multi-node topology of a qfleet cluster, in one place: what tests/smoke/test_cluster.py and
`qfleet bench scaling --local-cluster` start on one machine (system/bench/local_cluster.py), what
README's "Deploy on a Ray cluster" tells a user to start, and what docker-compose.yml, deploy/ray/
(the cluster launcher) and deploy/kuberay/ start. tests/integration/test_deploy_files.py
reads those files and compares them with these constants, so none of them can drift apart.

Two kinds of worker node, told apart by the custom resources they offer, and a head that runs the
driver only:

    head     no CPUs for tasks: the `qfleet train` driver, the control-plane Redis (deployments)
    node A   the learner's node (a GPU node in the launcher, KubeRay and compose's GPU profile);
             it also takes shards and actors
    node B   replay shards and env actors; the kind a deployment adds more of
"""

from __future__ import annotations

HEAD_CPUS = 0
"""CPUs the head offers to tasks and actors: none, so nothing of a run lands on it."""

LEARNER_NODE, ACTOR_NODE = "node-a", "node-b"

WORKERS: dict[str, dict[str, float]] = {
    LEARNER_NODE: {"learner": 1, "replay": 2, "actors": 4},
    ACTOR_NODE: {"replay": 2, "actors": 4},
}
"""Each worker node kind's custom resources (`ray start --resources`)."""

TRAIN_SETTINGS: dict[str, object] = {
    "train.num_shards": 2,
    "train.shard_resources": "{replay: 1}",
    "train.learner_resources": "{learner: 1}",
    "actors.resources": "{actors: 1}",
    "actors.num_cpus": 0.1,
    "train.learner_num_cpus": 0.5,
}
"""The `--set` settings every cluster run gets from `qfleet train`'s command line: the learner on
the node with `learner`, each shard on a `replay` slot, each env actor on an `actors` slot (so a
node holds at most 2 shards and 4 actors, whatever its CPU count), and the CPU shares they ask."""


def train_overrides() -> list[str]:
    """TRAIN_SETTINGS as `key=value` strings, as `qfleet train --set` takes them."""
    return [f"{key}={value}" for key, value in TRAIN_SETTINGS.items()]
