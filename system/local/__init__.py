"""What one machine runs for a run: an embedded redis-server (with a password), a local Ray (with a
token of its own, on loopback), the private store of a live run's secrets, signal handling."""

from system.errors import RayLaunchError, RedisLaunchError
from system.local.ray_runtime import init_ray, local_ray_token
from system.local.redis_server import NEW_PASSWORD, RedisProcess, free_port
from system.local.secrets import (
    RunSecrets,
    find_run_secrets,
    load_run_secrets,
    new_secrets_id,
    remove_run_secrets,
    save_run_secrets,
    secrets_dir,
    use_run_secrets,
    was_redacted,
    without_redacted_password,
)
from system.local.signals import dying_with_parent, stop_on_signals

__all__ = [
    "NEW_PASSWORD",
    "RayLaunchError",
    "RedisLaunchError",
    "RedisProcess",
    "RunSecrets",
    "dying_with_parent",
    "find_run_secrets",
    "free_port",
    "init_ray",
    "load_run_secrets",
    "local_ray_token",
    "new_secrets_id",
    "remove_run_secrets",
    "save_run_secrets",
    "secrets_dir",
    "stop_on_signals",
    "use_run_secrets",
    "was_redacted",
    "without_redacted_password",
]
