"""Watching runs: `qfleet status`, `qfleet report`, Prometheus discovery and the dashboard generator.

Nothing here starts a component; everything reads what the components report to the run's Redis
or write to the run directory.
"""
