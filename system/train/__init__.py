"""`qfleet train`: the whole system for one run, and the run directory it leaves behind.

plan.py (checks, no processes) -> launch.py (Components) -> supervise.py (the loop) ->
shutdown.py (in order); hosts.py: shards and learner as Ray actors; records.py: metrics.jsonl.
"""

from system.errors import TrainError
from system.train.driver import run_train
from system.train.plan import Plan, evaluates_in_driver, plan, shard_config
from system.train.run_dir import RunDir

__all__ = ["Plan", "RunDir", "TrainError", "evaluates_in_driver", "plan", "run_train", "shard_config"]
