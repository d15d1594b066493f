"""`learner.announced_version`: the run's announced weights version read without torch, as an actor
of a fresh run reads it to decide whether it may act before its policy is built (real redis-server)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from learner import MalformedWeightsError, WeightStore, WeightStoreError, announced_version
from replay import connect_redis


def test_the_announced_version_is_0_before_a_publish_and_the_publishs_after(redis_server):
    assert announced_version(redis_server.url, "announced") == 0
    store = WeightStore(redis_server.url, "announced")
    try:
        store.publish({"w": torch.zeros(2)}, version=6)
        assert announced_version(redis_server.url, "announced") == 6 == store.version()
        assert announced_version(redis_server.url, "another-run") == 0
    finally:
        store.close()


def test_a_malformed_version_and_an_unreachable_redis_are_refused_with_their_errors(redis_server):
    raw = connect_redis(redis_server.url)
    try:
        raw.set("qfleet:bad:learner:weights_version", "soon")
    finally:
        raw.close()
    with pytest.raises(MalformedWeightsError, match="qfleet:bad:learner:weights_version .* holds b'soon'"):
        announced_version(redis_server.url, "bad")
    redis_server.stop()
    with pytest.raises(WeightStoreError, match="cannot read the weights version"):
        announced_version(redis_server.url, "bad")


def test_reading_the_announced_version_does_not_load_torch():
    # the whole read, up to the refused connection (nothing listens on port 1)
    code = (
        "import sys, learner\n"
        "try:\n    learner.announced_version('redis://127.0.0.1:1/0', 'run')\n"
        "except learner.WeightStoreError:\n    print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
