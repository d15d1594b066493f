"""`DatasetError` (defined in system/errors.py with the roof's other errors, so the CLI can catch it
without importing the dataset code)."""

from system.errors import DatasetError

__all__ = ["DatasetError"]
