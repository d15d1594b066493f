"""`qfleet replay serve`: one standalone replay shard until SIGTERM/SIGINT."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time

import yaml

from replay import ReplayCredentials, ReplayServer, Spec
from system.config import ConfigError, RunConfig, env_spaces
from system.local.secrets import use_run_secrets
from system.local.signals import stop_on_signals
from system.services.credentials import service_credentials

log = logging.getLogger(__name__)


def load_spec(spec_file: str | None, config: RunConfig) -> Spec:
    """The spec from a JSON/YAML spec file, else from the config's environment."""
    if spec_file is None:
        return env_spaces(config.env).spec
    path = pathlib.Path(spec_file)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--spec {path}: cannot read: {exc}") from None
    try:
        return Spec.from_json(json.dumps(data))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--spec {path}: {exc}") from None


def serve(config: RunConfig, spec: Spec, report_every_s: float, credentials: ReplayCredentials | None) -> int:
    """Runs the shard in the foreground (TLS + token with `credentials`); returns the exit code."""
    if config.replay.redis_url:
        use_run_secrets(config.replay.redis_url)
    server = ReplayServer(spec, config=config.replay, credentials=credentials)
    stop = stop_on_signals(log, "stopping (final checkpoint if configured)")
    server.start()
    if server.restored_from is not None:
        info = server.table.info()
        log.info(
            "restored %d items (inserts=%d, samples=%d) from %s",
            info.size,
            info.inserts,
            info.samples,
            server.restored_from,
        )
    for message in server.refused_checkpoints:
        log.warning("%s", message)
    metrics = f"http://{config.replay.host}:{server.metrics_port}/metrics" if server.metrics_port else "off"
    security = "TLS, token required" if server.secure else "plaintext, no token"
    # One stable line that scripts (and tests) parse for the bound ports.
    print(
        f"qfleet replay: shard {config.replay.shard_id} serving at {server.address}; metrics {metrics} ({security})",
        flush=True,
    )
    last = server.table.info()
    last_time = time.monotonic()
    while not stop.wait(report_every_s):
        info, now = server.table.info(), time.monotonic()
        dt = now - last_time
        log.info(
            "size %d/%d | inserts %d (%.0f/s) | samples %d (%.0f/s) | dropped priority updates %d",
            info.size,
            info.capacity,
            info.inserts,
            (info.inserts - last.inserts) / dt,
            info.samples,
            (info.samples - last.samples) / dt,
            info.dropped_priority_updates,
        )
        last, last_time = info, now
    server.stop()
    log.info("stopped")
    return 0


def main_serve(config: RunConfig, spec_file: str | None, report_every_s: float, insecure: bool = False) -> int:
    """Entry of `qfleet replay serve` after argument parsing.

    Raises:
        ConfigError: a bad spec or config, or no replay credentials in the environment without
            --insecure (see system/services/credentials.py).
    """
    spec = load_spec(spec_file, config)
    credentials = service_credentials("qfleet replay serve", insecure, server=True, host=config.replay.host)
    try:
        return serve(config, spec, report_every_s, credentials)
    except MemoryError:
        need = config.replay.capacity * spec.item_nbytes() / 2**30
        raise ConfigError(
            f"replay.capacity={config.replay.capacity}: the table needs {need:.1f} GiB for this spec "
            f"({spec.item_nbytes():,} bytes per item) and that memory is not available; lower it"
        ) from None
    except OSError as exc:
        print(f"qfleet replay serve: {exc}", file=sys.stderr)
        return 1
