"""Benchmarks: `qfleet bench ...` (system/cli/bench.py), the learning suite `qfleet bench learning`
among them. Figures go to docs/benchmarks.md. No product code imports
this; besides the CLI, only tests do: the local multi-node cluster (local_cluster.py,
cluster_topology.py) is also what tests/smoke/test_cluster.py runs on."""
