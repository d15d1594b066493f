"""`qfleet actors run`'s checks before it starts any actor."""

from __future__ import annotations

from conftest import shard_kwargs
from replay import redact_url
from system.services.actors import missing_shards


def test_actors_run_warns_when_the_run_has_no_live_shard_and_not_once_it_has(redis_server, start_server):
    # issue #22: `qfleet actors run --run <wrong name>` left its actors waiting with nothing said
    said = missing_shards(redis_server.url, "no-such-run")
    assert "run 'no-such-run' has no live replay shard" in said and "is --run right?" in said
    assert redact_url(redis_server.url) in said

    start_server(**shard_kwargs(redis_server, run="served"))  # registered before start() returns
    assert missing_shards(redis_server.url, "served") == ""
    assert missing_shards(redis_server.url, "no-such-run") != ""
