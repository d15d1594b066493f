"""What one machine runs for a run: an embedded redis-server, a local Ray, signal handling."""

from system.errors import RedisLaunchError
from system.local.ray_runtime import init_ray
from system.local.redis_server import RedisProcess, free_port
from system.local.signals import stop_on_signals

__all__ = ["RedisLaunchError", "RedisProcess", "free_port", "init_ray", "stop_on_signals"]
