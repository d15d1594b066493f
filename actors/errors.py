"""Typed errors of the actors package.

Each takes its message first and its data as declared keyword fields, so an error raised in a Ray
actor pickles to the driver with its fields intact.
"""

from __future__ import annotations

from actors.config import ANDROID_ID


class UnsupportedEnvError(ValueError):
    """The environment id is unknown or its spaces are not ones qfleet's learners handle.

    Attributes:
        env_id: the environment id asked for.
    """

    def __init__(self, message: str, *, env_id: str = ""):
        super().__init__(message)
        self.env_id = env_id


class AndroidSetupError(UnsupportedEnvError):
    """The Android launch settings cannot work (missing binary, no KVM, unknown AVD, bad task).

    Attributes:
        setting: the config key at fault, e.g. "env.android.kvm_device".
    """

    def __init__(self, message: str, *, setting: str = ""):
        super().__init__(message, env_id=ANDROID_ID)
        self.setting = setting


class BrowserSetupError(UnsupportedEnvError):
    """The browser cannot be launched (Chromium or ChromeDriver missing at the configured path).

    Attributes:
        setting: the config key at fault, e.g. "env.browser.chromium_path".
    """

    def __init__(self, message: str, *, setting: str = ""):
        super().__init__(message)
        self.setting = setting


class BrowserTimeoutError(RuntimeError):
    """A browser env's reset (or launch) did not finish in time; the browser was killed.

    Attributes:
        timeout_s: the limit it ran past (env.browser.reset_timeout_s).
    """

    def __init__(self, message: str, *, timeout_s: float = 0.0):
        super().__init__(message)
        self.timeout_s = timeout_s


class EnvFailedError(RuntimeError):
    """An environment kept raising when rebuilt; its actor cannot go on.

    Attributes:
        env_id: the environment id.
        env_index: the failing env's place in its actor's vector.
    """

    def __init__(self, message: str, *, env_id: str = "", env_index: int = -1):
        super().__init__(message)
        self.env_id = env_id
        self.env_index = env_index


class SimulatorTimeoutError(RuntimeError):
    """An Android step or reset did not finish in time; the simulator was closed.

    Attributes:
        timeout_s: the limit it ran past (step_timeout_s or reset_timeout_s).
    """

    def __init__(self, message: str, *, timeout_s: float = 0.0):
        super().__init__(message)
        self.timeout_s = timeout_s


class FleetError(RuntimeError):
    """Actors keep failing (the same error, again and again); the run cannot go on.

    Attributes:
        actor_id: the actor that kept failing (-1: not one actor).
    """

    def __init__(self, message: str, *, actor_id: int = -1):
        super().__init__(message)
        self.actor_id = actor_id


class ActorRegistryError(RuntimeError):
    """The run's Redis (the actors' keys) is unreachable.

    Attributes:
        redis_url: the Redis that could not be reached (its password hidden).
    """

    def __init__(self, message: str, *, redis_url: str = ""):
        super().__init__(message)
        self.redis_url = redis_url
