"""One Ray worker node on 127.0.0.1, in a process of its own (for the local test cluster:
system/bench/local_cluster.py).

Ray 2.60 keeps a node on loopback only in its single-machine mode
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the node's address stays 127.0.0.1 and its gRPC servers bind
to it), and in that mode `ray start --address` refuses to add a worker node; without it, Ray
rewrites 127.0.0.1 to the machine's address and its servers listen on every interface. So the
local cluster's worker nodes are started here the way `ray start --address` does it (and Ray's own
`ray.cluster_utils.Cluster`), with `ray._private.node.Node`.

    python system/bench/ray_node.py --address 127.0.0.1:PORT --num-cpus 1 --resources '{"actors": 4}' \
        --sockets /tmp/qfc-x/node-b

With --sockets, the node's raylet and object store sockets get those fixed names in that folder
(else Ray numbers them in the session's folder, which two nodes starting at once could both take).
It prints "ready NODE_ID" once the node is up, and stops the node on SIGTERM. Started in a session
of its own, its process group is the node: SIGKILL to the group is a node lost hard.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before `import ray`: loopback only


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, help="the head's GCS address, 127.0.0.1:PORT")
    parser.add_argument("--num-cpus", type=int, default=0)
    parser.add_argument("--resources", default="{}", help="custom resources as JSON")
    parser.add_argument("--object-store-mb", type=int, default=100, help="object store size (MiB)")
    parser.add_argument("--sockets", help="a folder of this node's own for its socket files")
    args = parser.parse_args()

    import ray._private.node
    from ray._private.parameter import RayParams

    params = RayParams(
        node_ip_address="127.0.0.1",
        gcs_address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=0,
        resources=json.loads(args.resources),
        object_store_memory=args.object_store_mb * 2**20,
        plasma_store_socket_name=os.path.join(args.sockets, "plasma") if args.sockets else None,
        raylet_socket_name=os.path.join(args.sockets, "raylet") if args.sockets else None,
        min_worker_port=0,
        max_worker_port=0,
        node_manager_port=0,
        include_log_monitor=False,
    )
    params.dashboard_agent_listen_port = None  # a free port: the head's agent has the default one
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=True)

    def stop(signum, frame):
        node.kill_all_processes(check_alive=False, allow_graceful=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", node.node_id, flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
