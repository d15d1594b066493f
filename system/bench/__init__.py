"""Benchmarks: `qfleet bench ...` (system/cli/bench.py) and the learning benchmark
(`python -m system.bench.learning`). Figures go to docs/benchmarks.md. No product code imports
this; besides the CLI, only tests do: the local multi-node cluster (local_cluster.py,
cluster_topology.py) is also what tests/smoke/test_cluster.py runs on."""
