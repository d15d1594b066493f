"""Checkpoints through `qfleet replay serve` as a user runs it: kill -9, SIGTERM, bad files."""

from __future__ import annotations

import json
import signal
import urllib.request

import numpy as np
import pytest

from conftest import CARTPOLE_SPEC, make_batch, wait_until
from replay import InvalidBatchError, ReplayClient, ReplayServer, Spec


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(CARTPOLE_SPEC.to_json())
    return str(path)


def test_checkpoint_then_kill_9_then_restart_restores_contents_and_counters(qfleet_serve, spec_file, tmp_path, connect):
    ckpt = str(tmp_path / "ckpt")
    shard = qfleet_serve(
        "replay", "serve", "--spec", spec_file, "--checkpoint-dir", ckpt, "--capacity", "5000", "--seed", "0"
    )
    client = connect(shard.address)
    client.insert(make_batch(1000, priority=np.linspace(0.1, 10, 1000)))
    client.flush()
    client.sample_batches(100, 3)
    sample = client.sample(50)
    client.update_priorities(sample.keys, np.full(50, 20.0))
    saved = client.info()
    result = client.checkpoint()
    assert result.size == 1000 and result.path.startswith(ckpt)

    client.insert(make_batch(500, start=1000))  # after the checkpoint: lost on kill -9
    client.flush()
    client.close()
    shard.proc.kill()
    shard.proc.wait()

    again = qfleet_serve("replay", "serve", "--spec", spec_file, "--checkpoint-dir", ckpt, "--capacity", "5000")
    client = connect(again.address)
    info = client.info()
    assert (info.size, info.inserts, info.samples) == (1000, 1000, saved.samples)
    assert info.priority_mass == pytest.approx(saved.priority_mass)
    assert info.checkpoint_sequence == result.sequence
    assert "restored 1000 items" in again.log()
    # Exactly the acknowledged inserts after the checkpoint are counted lost (no heartbeat, no Redis here).
    assert info.lost_transitions == 500
    assert "shard 0 lost 500 transitions: it had acknowledged 1500 inserts" in again.log()
    # Contents are the inserted items, every column consistent; keys from before still match.
    ids = np.concatenate([s.data["action"] for s in client.sample_batches(200, 10)])
    assert ids.max() < 1000
    assert client.update_priorities(sample.keys, np.ones(50)).applied == 50
    client.close()


def test_sigterm_writes_a_final_checkpoint_and_loses_nothing(qfleet_serve, spec_file, tmp_path, connect):
    ckpt = str(tmp_path / "ckpt")
    shard = qfleet_serve("replay", "serve", "--spec", spec_file, "--checkpoint-dir", ckpt)
    client = connect(shard.address)
    client.insert(make_batch(321))
    client.flush()
    client.close()
    assert shard.signal(signal.SIGTERM) == 0
    assert "final checkpoint of 321 items" in shard.log()

    again = qfleet_serve("replay", "serve", "--spec", spec_file, "--checkpoint-dir", ckpt)
    info = connect(again.address).info()
    assert (info.inserts, info.lost_transitions) == (321, 0)
    again.signal(signal.SIGTERM)


def test_periodic_checkpoints_are_written(start_server, tmp_path, connect):
    server = start_server(capacity=100, checkpoint_dir=str(tmp_path), checkpoint_every_s=0.2)
    connect(server.address).insert(make_batch(7))
    assert wait_until(lambda: list(tmp_path.glob("replay-*.safetensors")), timeout=10)
    assert not list(tmp_path.glob(".*tmp*")), "a temporary file was left in place"


def _server_with_two_checkpoints(directory) -> tuple[str, str]:
    server = ReplayServer(CARTPOLE_SPEC, capacity=1000, checkpoint_dir=str(directory)).start()
    client = ReplayClient(server.address)
    client.insert(make_batch(100))
    client.flush()
    older = client.checkpoint().path
    client.insert(make_batch(100, start=100))
    client.flush()
    newer = client.checkpoint().path
    client.close()
    server.stop(grace=0.1, checkpoint=False)
    return older, newer


@pytest.mark.parametrize("damage", ["truncate", "flip bytes", "garbage"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, damage, connect):
    older, newer = _server_with_two_checkpoints(tmp_path)
    data = bytearray(open(newer, "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip bytes":
        data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])
    else:
        data = bytearray(b"not a checkpoint at all")
    open(newer, "wb").write(bytes(data))

    server = ReplayServer(CARTPOLE_SPEC, capacity=1000, checkpoint_dir=str(tmp_path)).start()
    try:
        assert str(server.restored_from) == older
        assert connect(server.address).info().inserts == 100
        assert len(server.refused_checkpoints) == 1 and newer in server.refused_checkpoints[0]
    finally:
        server.stop(grace=0.1, checkpoint=False)


def test_checkpoint_of_another_spec_is_refused_with_both_specs_named(tmp_path, connect):
    _server_with_two_checkpoints(tmp_path)
    other = Spec({"obs": ((8,), "float32"), "action": ((), "int64")})
    server = ReplayServer(other, capacity=1000, checkpoint_dir=str(tmp_path)).start()
    try:
        assert server.restored_from is None
        assert connect(server.address).info().size == 0
        assert all('"shape":[8]' in m and '"shape":[4]' in m for m in server.refused_checkpoints)
    finally:
        server.stop(grace=0.1, checkpoint=False)


def test_metrics_endpoint_serves_replay_series(qfleet_serve, spec_file, connect):
    shard = qfleet_serve("replay", "serve", "--spec", spec_file, "--metrics-port", "0", "--shard-id", "3")
    client = connect(shard.address)
    client.insert(make_batch(64))
    client.flush()
    sample = client.sample(16)
    client.insert(make_batch(64, start=64))
    client.update_priorities(sample.keys, np.ones(16))
    bad = make_batch(4)
    bad.pop("obs")
    client.insert(bad)
    with pytest.raises(InvalidBatchError):
        client.flush()
    text = urllib.request.urlopen(shard.metrics_url, timeout=10).read().decode()
    for line in [
        'qfleet_replay_inserts_total{shard="3"} 128.0',
        'qfleet_replay_samples_total{shard="3"} 16.0',
        'qfleet_replay_size{shard="3"} 128.0',
        'qfleet_replay_rejected_batches_total{shard="3"} 1.0',
        'qfleet_replay_dropped_priority_updates_total{shard="3"} 0.0',
        'qfleet_replay_limiter_wait_seconds_total{op="sample",shard="3"}',
        'qfleet_replay_rpc_latency_seconds_count{method="sample",shard="3"} 1.0',
        'qfleet_replay_rpc_latency_seconds_bucket{le="0.001",method="insert",shard="3"}',
    ]:
        assert line in text, f"{line!r} missing from /metrics"
    client.close()
    shard.signal(signal.SIGTERM)


def test_spec_from_the_config_environment(qfleet_serve, tmp_path, connect):
    config = tmp_path / "run.yaml"
    config.write_text("env:\n  id: CartPole-v1\nreplay:\n  capacity: 100\n")
    shard = qfleet_serve("replay", "serve", "--config", str(config))
    info = connect(shard.address).info()
    assert info.capacity == 100
    assert json.loads(info.spec.to_json())["obs"] == {"shape": [4], "dtype": "float32"}
    assert set(info.spec) == {"obs", "action", "reward", "next_obs", "discount", "actor_id", "policy_version"}
    shard.signal(signal.SIGTERM)
