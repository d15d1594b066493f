"""`DatasetError` and `ShardFillError` (defined in system/errors.py with the roof's other errors, so
the CLI can catch them without importing the dataset code)."""

from system.errors import DatasetError, ShardFillError

__all__ = ["DatasetError", "ShardFillError"]
