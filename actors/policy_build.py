"""Acting before the policy exists: uniform random actions while a background thread builds it.

In a fresh online run no learned weights exist yet: an actor's first policy is an untrained
network, whose actions are no better than uniform random ones (Stable-Baselines3's off-policy
algorithms and CleanRL's DQN act uniformly at random before `learning_starts` for that reason:
SB3 `OffPolicyAlgorithm._sample_action`, CleanRL `dqn.py`). Building that network costs an actor
about 1.7 s of CPU on the way to the run's first env step (`import torch` ~0.9 s of it,
docs/benchmarks.md "Start-up"), so an actor of a fresh run (`actors.random_before_policy`) starts
stepping with `random_actions` while `build_in_background` imports torch and builds the policy,
and switches to the policy at its first step after the build.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import numpy as np

from learner import ActionSpace

T = TypeVar("T")


def random_actions(space: ActionSpace, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` actions drawn uniformly from `space`: discrete, int64 indices in [0, num_actions)
    (what epsilon-greedy draws when it explores), or, for a UI space with a layout (MiniWoB,
    Android), a kind uniformly and then an action of that kind uniformly (as a factored policy
    draws them: else the hundreds of taps of a screen grid would crowd out the few keys and swipes);
    continuous, float32 vectors uniform in [low, high] per dimension (SB3's `action_space.sample()`
    before `learning_starts`)."""
    if space.discrete and space.layout is not None:
        kind_of = np.asarray(space.layout.kind_of, np.int64)
        by_kind = np.argsort(kind_of, kind="stable")  # the actions, grouped by kind
        kinds = np.arange(len(space.layout.kinds))
        first = np.searchsorted(kind_of[by_kind], kinds)
        size = np.searchsorted(kind_of[by_kind], kinds, side="right") - first  # every kind has an action
        kind = rng.integers(0, len(kinds), count)
        return by_kind[first[kind] + rng.integers(0, size[kind])]
    if space.discrete:
        return rng.integers(0, space.num_actions, count)
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    return rng.uniform(low, high, size=(count, low.shape[0])).astype(np.float32)


GC_PAUSE_MAX_S = 15.0
"""The longest a background build keeps the cyclic collector paused (a build takes ~1.7 s of CPU;
one slowed down far beyond that by a loaded host must not leave the acting thread's garbage
uncollected for as long as it lasts)."""


def build_in_background(
    build: Callable[[], T], name: str, resume_collector: bool, pause_max_s: float = GC_PAUSE_MAX_S
) -> Future[T]:
    """Runs `build` on a daemon thread; its result (or its exception) arrives in the returned future.

    The caller paused the cyclic garbage collector for the imports and the build (`EnvActor`: its
    passes over their ~10^5 long-lived objects cost ~17% of `import torch`); the thread freezes what
    the build left and, with `resume_collector`, enables the collector again once the build ended,
    failed or not, or after `pause_max_s` if the build is still running then (the pause is
    process-wide). A build that ends after that bound has its garbage collected before the freeze.
    """
    future: Future[T] = Future()
    bound = threading.Timer(pause_max_s, gc.enable) if resume_collector else None
    if bound is not None:
        bound.daemon = True
        bound.start()

    def work() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = build()
        except BaseException as exc:  # handed to whoever takes the result
            error = exc
        # the collector runs again before the result is handed over
        if bound is not None:
            bound.cancel()
        if gc.isenabled():  # the pause ended at its bound: collect what piled up before freezing
            gc.collect()
        gc.freeze()
        if resume_collector:
            gc.enable()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future
