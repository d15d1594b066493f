"""qfleet's roof: it wires `replay`, `learner` and `actors` into runs, in rooms by role.

config/    RunConfig (a section per package) from YAML and `--set`; dataclass -> options/help
cli/       `qfleet`: one module per command, `main` a dispatch table
train/     `qfleet train`: plan, launch, Ray hosts, supervision, records, evaluation, shutdown
services/  one component as its own process: a replay shard, the learner, a fleet of actors
observe/   status, report, Prometheus discovery, the Grafana dashboard generator
local/     what a machine runs for a run: embedded redis-server (password), local Ray (token,
           loopback), the private store of a live run's secrets, signal handling
bench/     `qfleet bench ...` and the learning benchmark (never imported by the rest)
"""
