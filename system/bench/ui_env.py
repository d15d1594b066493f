"""`qfleet bench ui-env`: env steps/s of MiniWoB in headless Chromium, per browser and per actor.

An actor steps its `env.num_envs` browsers one after another in its step loop (actors/envs.py's
EnvVector), so an actor's rate is what one EnvVector of B browsers does with uniformly random UI
actions (episodes reset in the same step, as in the actor); per browser is that rate / B. The
policy network is left out: its forward pass on a 105x80 frame is small beside a browser step.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from actors import EnvConfig, EnvVector


def vector_rate(env_id: str, num_envs: int, seconds: float, seed: int = 0) -> dict[str, float]:
    """Steps/s of one EnvVector of `num_envs` browsers under random actions (launch not counted)."""
    vector = EnvVector(EnvConfig(id=env_id, num_envs=num_envs), seed=seed)
    rng = np.random.default_rng(seed)
    try:
        launch = time.perf_counter()
        vector.reset()  # launches the browsers
        launch_s = (time.perf_counter() - launch) / num_envs
        n = vector.envs[0].action_space.n
        steps = episodes = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            step = vector.step(rng.integers(n, size=num_envs))
            steps += num_envs
            episodes += len(step.episodes)
        elapsed = time.perf_counter() - start
    finally:
        vector.close()
    actor = steps / elapsed
    return {
        "actor_steps_per_s": actor,
        "browser_steps_per_s": actor / num_envs,
        "episodes_per_s": episodes / elapsed,
        "launch_s_per_browser": launch_s,
        "restarts": vector.restarts,
    }


def run_ui_env_bench(task: str, counts: list[int], seconds: float, output: str | None) -> int:
    env_id = task if task.startswith("miniwob/") else f"miniwob/{task}-v1"
    results = {}
    for count in counts:
        results[count] = vector_rate(env_id, count, seconds)
        print(f"  {count} browser(s): {results[count]['actor_steps_per_s']:.1f} steps/s", file=sys.stderr)
    print(f"\n{env_id}, random UI actions, {seconds:g} s per case, {os.cpu_count()} CPUs\n")
    print("| browsers per actor | steps/s per actor | steps/s per browser | episodes/s | launch s per browser |")
    print("|---:|---:|---:|---:|---:|")
    for count, r in results.items():
        print(
            f"| {count} | {r['actor_steps_per_s']:.1f} | {r['browser_steps_per_s']:.1f} | "
            f"{r['episodes_per_s']:.2f} | {r['launch_s_per_browser']:.2f} |"
        )
    if output:
        with open(output, "w") as f:
            json.dump({"env": env_id, "seconds": seconds, "results": results}, f, indent=2)
    return 0
