"""Errors of `qfleet train` (a bad config is system.config's ConfigError)."""


class TrainError(RuntimeError):
    """A component of the run failed; the run was stopped (checkpoints written where possible)."""
