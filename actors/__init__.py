"""qfleet actors: environments, n-step transitions, the env actor and the fleet that runs them.

Public surface:
    EnvConfig, ActorsConfig, AndroidConfig, FeaturesConfig (configuration);
    FeaturizedEnv, featurize (observations as frozen-encoder features, docs/digiq.md);
    make_env, describe_env, transition_spec, EnvSpaces, EnvVector (environments);
    AndroidGymEnv, check_emulator (qfleet/Android-v0 over android_env);
    BrowserConfig, BrowserGymEnv (MiniWoB in headless Chromium), UIActionSpace, UIAction,
    instruction_tokens, text_candidates (the UI action space shared by Android and MiniWoB);
    InstructionBehaviour, INSTRUCTION_RULES (a MiniWoB behaviour policy following the instruction
    with probability p, for datasets of mixed quality);
    NStepAccumulator, apex_epsilons (the math);
    EnvActor, ActorStats (one actor), WeightSubscriber (its weights, followed in the background),
    Writer, TransitionWriter, actor_writer_id (how its transitions reach replay);
    ActorFleet, FleetStats (many, on Ray);
    ActorRegistry, actor_report_key, STATE_ACTING, STATE_AWAITING_REPLAY, STATE_HELD_BACK (the actors' Redis keys and
    report states), RedisGap (a Redis outage said once), ActorMetrics (`qfleet_actor_*`);
    UnsupportedEnvError, AndroidSetupError, BrowserSetupError, BrowserTimeoutError, EnvFailedError, SimulatorTimeoutError, FleetError,
    ActorRegistryError (actors/errors.py).
"""

import importlib

from actors.config import (
    ANDROID_ID,
    MINIWOB_PREFIX,
    ActorsConfig,
    AndroidConfig,
    BrowserConfig,
    EnvConfig,
    FeaturesConfig,
)
from actors.envs import EnvSpaces, EnvVector, describe_env, make_env, transition_spec
from actors.errors import (
    ActorRegistryError,
    AndroidSetupError,
    BrowserSetupError,
    BrowserTimeoutError,
    EnvFailedError,
    FleetError,
    SimulatorTimeoutError,
    UnsupportedEnvError,
)
from actors.features import FeaturizedEnv, featurize
from actors.metrics import SERIES as METRIC_SERIES
from actors.metrics import ActorMetrics
from actors.nstep import NStepAccumulator, apex_epsilons
from actors.redis_gap import RedisGap
from actors.registry import STATE_ACTING, STATE_AWAITING_REPLAY, STATE_HELD_BACK, ActorRegistry, actor_report_key
from actors.spec import spec_for_spaces
from actors.ui_actions import UIAction, UIActionSpace, instruction_tokens, text_candidates
from actors.writer import TransitionWriter, Writer, actor_writer_id

# Imported on first use: they load torch (and Ray), which config-only commands do not need.
_LAZY = {
    "EnvActor": "actors.actor",
    "ActorStats": "actors.actor",
    "ActorStartup": "actors.actor",
    "ActorFleet": "actors.fleet",
    "FleetStats": "actors.fleet",
    "WeightSubscriber": "actors.weights",
    "AndroidGymEnv": "actors.android",
    "check_emulator": "actors.android",
    "BrowserGymEnv": "actors.browser",
    "InstructionBehaviour": "actors.ui_behaviour",
    "INSTRUCTION_RULES": "actors.ui_behaviour",
}

__all__ = [
    *_LAZY,
    "ANDROID_ID",
    "MINIWOB_PREFIX",
    "METRIC_SERIES",
    "STATE_ACTING",
    "STATE_AWAITING_REPLAY",
    "STATE_HELD_BACK",
    "ActorMetrics",
    "ActorRegistry",
    "ActorRegistryError",
    "RedisGap",
    "ActorsConfig",
    "AndroidConfig",
    "AndroidSetupError",
    "BrowserConfig",
    "BrowserSetupError",
    "BrowserTimeoutError",
    "EnvConfig",
    "FeaturesConfig",
    "FeaturizedEnv",
    "EnvFailedError",
    "EnvSpaces",
    "EnvVector",
    "FleetError",
    "NStepAccumulator",
    "SimulatorTimeoutError",
    "TransitionWriter",
    "UIAction",
    "UIActionSpace",
    "actor_writer_id",
    "UnsupportedEnvError",
    "Writer",
    "actor_report_key",
    "apex_epsilons",
    "describe_env",
    "featurize",
    "instruction_tokens",
    "make_env",
    "spec_for_spaces",
    "text_candidates",
    "transition_spec",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'actors' has no attribute {name!r}")
