"""qfleet actors: environments, n-step transitions, the env actor and the fleet that runs them.

Public surface:
    EnvConfig, ActorsConfig, AndroidConfig (configuration);
    make_env, describe_env, transition_spec, EnvSpaces, EnvVector, UnsupportedEnvError,
    EnvFailedError (environments); AndroidGymEnv, AndroidSetupError, SimulatorTimeoutError,
    check_emulator (qfleet/Android-v0 over android_env);
    NStepAccumulator, apex_epsilons (the math);
    EnvActor, ActorStats (one actor), WeightSubscriber (its weights, followed in the background),
    ActorFleet, FleetStats, FleetError (many, on Ray);
    ActorRegistry, ActorRegistryError, actor_report_key (the actors' Redis keys), ActorMetrics (`qfleet_actor_*`).
"""

import importlib

from actors.config import ActorsConfig, AndroidConfig, EnvConfig
from actors.envs import EnvFailedError, EnvSpaces, EnvVector, describe_env, make_env, transition_spec
from actors.metrics import ActorMetrics
from actors.nstep import NStepAccumulator, apex_epsilons
from actors.registry import ActorRegistry, ActorRegistryError, actor_report_key
from actors.spec import UnsupportedEnvError, spec_for_spaces

# Imported on first use: they load torch (and Ray), which config-only commands do not need.
_LAZY = {
    "EnvActor": "actors.actor",
    "ActorStats": "actors.actor",
    "ActorFleet": "actors.fleet",
    "FleetError": "actors.fleet",
    "FleetStats": "actors.fleet",
    "WeightSubscriber": "actors.weights",
    "AndroidGymEnv": "actors.android",
    "AndroidSetupError": "actors.android",
    "SimulatorTimeoutError": "actors.android",
    "check_emulator": "actors.android",
}

__all__ = [
    *_LAZY,
    "ActorMetrics",
    "ActorRegistry",
    "ActorRegistryError",
    "ActorsConfig",
    "AndroidConfig",
    "EnvConfig",
    "EnvFailedError",
    "EnvSpaces",
    "EnvVector",
    "NStepAccumulator",
    "UnsupportedEnvError",
    "actor_report_key",
    "apex_epsilons",
    "describe_env",
    "make_env",
    "spec_for_spaces",
    "transition_spec",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'actors' has no attribute {name!r}")
