"""The actors' errors keep their message and declared fields across processes (Ray pickles them)."""

import pickle

import pytest

from actors import (
    ActorRegistryError,
    AndroidSetupError,
    EnvFailedError,
    FleetError,
    SimulatorTimeoutError,
    UnsupportedEnvError,
)

ERRORS = [
    (UnsupportedEnvError("env.id='X-v0': unknown", env_id="X-v0"), {"env_id": "X-v0"}),
    (
        AndroidSetupError("env.android.task: t not found", setting="env.android.task"),
        {"env_id": "qfleet/Android-v0", "setting": "env.android.task"},
    ),
    (EnvFailedError("env 'X-v0' #2: gone", env_id="X-v0", env_index=2), {"env_id": "X-v0", "env_index": 2}),
    (SimulatorTimeoutError("android reset took over 5 s", timeout_s=5.0), {"timeout_s": 5.0}),
    (FleetError("actor 3 failed 3 times", actor_id=3), {"actor_id": 3}),
    (ActorRegistryError("cannot read at redis://h", redis_url="redis://h"), {"redis_url": "redis://h"}),
]


@pytest.mark.parametrize(
    ("error", "fields"), ERRORS, ids=lambda e: type(e).__name__ if isinstance(e, Exception) else ""
)
def test_an_error_round_trips_through_pickle_with_its_fields(error, fields):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert {name: getattr(copy, name) for name in fields} == fields


def test_android_setup_errors_are_unsupported_env_errors():
    assert issubclass(AndroidSetupError, UnsupportedEnvError) and issubclass(UnsupportedEnvError, ValueError)
