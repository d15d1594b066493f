"""qfleet system: run config, the `qfleet` CLI, and (later) the Ray driver that wires the rest."""
