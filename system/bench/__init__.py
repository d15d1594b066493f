"""Benchmarks: `qfleet bench replay|sharded|learner|actors` and the learning benchmark
(`python -m system.bench.learning`). Figures go to docs/benchmarks.md; nothing else imports this."""
