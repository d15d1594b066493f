"""`qfleet discovery`: Prometheus HTTP service discovery over a qfleet Redis.

Prometheus' `http_sd_configs` polls GET /targets and gets the target groups of every run whose
components are registered in that Redis (or of the runs named with --run): the driver, the
learner, each live shard and each reporting actor, labelled job/run/shard/actor. Components that
leave (their keys expire) drop out on the next poll. deploy/prometheus/prometheus.yml points at it.

    GET /targets   200 application/json: [{"targets": ["10.0.0.5:41233"], "labels": {...}}, ...]
                   503 text/plain when Redis cannot be read (Prometheus keeps its last targets)
    GET /          a one-line description
"""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler

from replay import BoundedHTTPServer, HTTPLimits, redact_url
from system.observe.discovery import discover_all

log = logging.getLogger(__name__)


class DiscoveryServer:
    """Serves /targets for Prometheus.

    Args:
        redis_url: the Redis the runs register in.
        host, port: where to listen (port 0: a free one; `port` tells which after `start`).
        runs: only these runs; None: every run in the Redis.
        limits: the bounds on its threads, connections and time (None: `replay.HTTPLimits()`).
    """

    def __init__(
        self,
        redis_url: str,
        host: str = "127.0.0.1",
        port: int = 9101,
        runs: list[str] | None = None,
        limits: HTTPLimits | None = None,
    ):
        self.redis_url, self.runs = redis_url, runs
        self.shown_url = redact_url(redis_url)
        """`redis_url` as the 503 body shows it: without its password."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/targets":
                    try:
                        body, status, kind = json.dumps(server.targets()).encode(), 200, "application/json"
                    except Exception as exc:  # Redis down or a registry unreadable: tell Prometheus, keep serving
                        body, status, kind = f"cannot read {server.shown_url}: {exc}\n".encode(), 503, "text/plain"
                elif path == "/":
                    body, status, kind = (
                        b"qfleet discovery: Prometheus http_sd targets at /targets\n",
                        200,
                        "text/plain",
                    )
                else:
                    body, status, kind = b"not found; try /targets\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # noqa: A002 (http.server's name)
                log.debug("%s %s", self.address_string(), format % args)

        # A fixed pool and per-connection time limits: slow or idle clients cannot pile up threads.
        self._http = BoundedHTTPServer(host, port, Handler, limits or HTTPLimits(), name="qfleet-discovery")

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    def targets(self) -> list[dict]:
        """The current target groups (raises redis.RedisError when Redis cannot be read)."""
        return discover_all(self.redis_url, self.runs)

    def start(self) -> DiscoveryServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.close()


def main_discovery(run_dir: str | None, redis_url: str | None, runs: list[str], host: str, port: int) -> int:
    """`qfleet discovery`: serve until Ctrl-C/SIGTERM; ConfigError (exit 2) on bad input."""
    import signal
    import time

    import redis

    from replay import connect_redis
    from system.errors import ConfigError
    from system.local.secrets import use_run_secrets, without_redacted_password

    secrets_id = None
    if run_dir is not None:
        from system.train.run_dir import RunDir

        info = RunDir(run_dir).read_json("run.json")
        if info is None:
            raise ConfigError(f"{run_dir}: no run.json (not a qfleet train run directory, or it never started)")
        redis_url = redis_url or without_redacted_password(info["redis_url"])
        runs, secrets_id = runs or [info["run"]], info.get("secrets_id")
    if redis_url is None:
        raise ConfigError("give --redis-url (every run in that Redis), or a RUN_DIR")
    if not 0 <= port < 65536:
        raise ConfigError(f"--port {port}: must be a port number (0: any free port)")
    use_run_secrets(redis_url, secrets_id)
    shown_url = redact_url(redis_url)
    try:
        client = connect_redis(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
        client.ping()
        client.close()
    except (redis.RedisError, ValueError) as exc:
        raise ConfigError(f"--redis-url {shown_url}: {exc}") from None
    try:
        server = DiscoveryServer(redis_url, host, port, runs or None)
    except OSError as exc:
        raise ConfigError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror}") from None
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    which = ", ".join(runs) if runs else "every run"
    print(f"qfleet discovery: http://{host}:{server.port}/targets ({which} in {shown_url})", flush=True)
    seen = None
    try:
        while not stop:
            try:
                groups = server.targets()
                now = sorted((g["labels"]["run"], g["labels"]["job"]) for g in groups)
                if now != seen:
                    seen = now
                    jobs: dict[str, int] = {}
                    for _, job in now:
                        jobs[job] = jobs.get(job, 0) + 1
                    listed = ", ".join(f"{job} {n}" for job, n in sorted(jobs.items())) or "none"
                    print(f"qfleet discovery: {len(now)} targets ({listed})", flush=True)
            except Exception as exc:
                if seen != "error":
                    print(f"qfleet discovery: cannot read {shown_url}: {exc}", flush=True)
                    seen = "error"
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
