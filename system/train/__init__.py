"""`qfleet train`: the whole system for one run, and the run directory it leaves behind."""

from system.train.driver import TrainError, plan, run_train, shard_config
from system.train.run_dir import RunDir

__all__ = ["RunDir", "TrainError", "plan", "run_train", "shard_config"]
