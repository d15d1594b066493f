"""`EnvActor`: steps a vector of environments with the latest policy and feeds the replay.

One vector step: switch to weights a background thread fetched (every step by default),
act for all envs with one batched forward, step the envs, turn the steps into n-step transitions
and hand them to the writer. In a fresh run (`fresh_run`, `actors.random_before_policy`) the first
steps are uniform random ones, taken while a background thread imports torch and builds the policy
(`actors.policy_build`). Plain Python: `ActorFleet` runs it as a Ray actor (`run(seconds)` in
chunks); tests and the benchmark run it in-process.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from actors.config import ActorsConfig, EnvConfig
from actors.envs import EnvSpaces, EnvVector, describe_env
from actors.errors import ActorRegistryError
from actors.metrics import ActorMetrics
from actors.nstep import NStepAccumulator, apex_epsilons
from actors.policy_build import build_in_background, random_actions
from actors.redis_gap import RedisGap
from actors.registry import STATE_ACTING, STATE_AWAITING_REPLAY, STATE_HELD_BACK, ActorRegistry
from actors.weights import WeightSubscriber
from actors.writer import INSERT_MAX_BYTES, TransitionWriter, Writer, actor_writer_id
from learner import LearnerConfig, MalformedWeightsError, WeightStoreError, announced_version
from replay import ReplayCredentials, ReplayUnavailableError, ShardedReplay, keep_freed_memory, start_metrics_server

if TYPE_CHECKING:
    from learner import Policy

log = logging.getLogger(__name__)

EPISODES_PER_ENTRY = 1_000
"""Episode records per entry of the run's episode stream (one write)."""
MAX_KEPT_EPISODES = 10_000
"""Episode records an actor keeps while Redis is away; older ones are dropped (and said)."""

NSTEP_BLOCK = 64
"""Most vector steps between n-step emissions (fewer where one would exceed INSERT_MAX_BYTES or
actors.insert_batch: `nstep_block`)."""


def nstep_block(insert_batch: int, num_envs: int, step_bytes: int) -> int:
    """Vector steps between the n-step accumulator's emissions: at most NSTEP_BLOCK, and small
    enough that one emission (block x num_envs transitions) fits in an insert message of
    `insert_batch` and in INSERT_MAX_BYTES (`step_bytes`: the bytes of one vector step's
    transitions), so what an actor holds back unsent stays within about one message; at least 1."""
    return max(1, min(NSTEP_BLOCK, insert_batch // num_envs, INSERT_MAX_BYTES // max(1, step_bytes)))


@dataclass
class ActorStats:
    """Counters of one actor since it (last) started; returned by every `run` chunk."""

    actor_id: int
    pid: int
    env_steps: int
    episodes: int
    policy_version: int
    epsilon: float
    env_restarts: int
    transitions_inserted: int
    transitions_lost: int
    malformed_weights: int
    """Malformed weight-store values (version, blob) read from Redis and skipped; logged once per key."""
    weight_fetch_failures: int
    """Weight fetches that failed (the actor acted with its current weights and retried)."""
    recent_return: float | None
    """Mean return of the last 100 episodes (None before the first)."""
    steps_per_second: float
    """Env steps per second over the last chunk."""
    random_steps: int = 0
    """Env steps acted uniformly at random before the policy was built (a fresh run's first steps,
    `actors.random_before_policy`); their transitions carry policy_version 0, as those of the
    untrained initial network do. Included in `env_steps`."""
    startup: ActorStartup | None = None
    """When this process's envs were ready, its first step and first insert were taken (the run's
    start-up breakdown); None from a caller that builds stats by hand."""


@dataclass
class ActorStartup:
    """Unix times of an actor process's start-up milestones (None until reached)."""

    created_at: float
    """Its constructor began (the process is up, its modules imported)."""
    envs_at: float | None = None
    """Its envs were made and reset."""
    ready_at: float | None = None
    """Its constructor ended: envs, replay writer, weights and registry connected, a shard serving
    (in a fresh run that acts before its policy: everything but the policy and the weights)."""
    policy_at: float | None = None
    """Its policy was built (torch imported, the network made): from here it acts with the policy."""
    first_step_at: float | None = None
    """Its first env step returned."""
    first_insert_at: float | None = None
    """Its first batch of transitions was handed to replay."""


BUILD_POLL_S = 0.5
"""How long one `step` waits for a background build once the actor made its share of random steps."""

BUILD_WARN_S = 30.0
"""A background build of the policy still running after this long is logged once, with the random
steps taken so far (it takes ~1.7 s of CPU: a host that busy, or a build that hangs, is worth a
look)."""

REPLAY_WAIT_LOG_S = 30.0
"""While no shard serves, an actor says so this often (`await_replay`)."""


def await_replay(replay: ShardedReplay, actor_id: int, run: str, waiting: Callable[[], None] | None = None) -> None:
    """Returns once at least one of run `run`'s shards serves. In a fresh run the actors start
    beside the shards (`system.train.launch`): an actor built before any shard registered waits
    here, without a limit, instead of stepping into inserts that would wait `insert_retry_s` and
    then count its first transitions lost; the driver, which waits for its shards with a limit,
    stops the actors if a shard never comes. Where a shard serves already, it returns at once.

    Args:
        waiting: called before the first wait and again with each warning (every
            REPLAY_WAIT_LOG_S), so that the actor's report says what it waits for.
    """
    waited = 0.0
    timeout = 0.0  # a first look: no report and no warning where a shard serves already
    while True:
        try:
            replay.wait_for_shards(1, timeout=timeout)
            return
        except ReplayUnavailableError as exc:
            if timeout:
                waited += timeout
                # its message names where the actor looks: the run and the (redacted) Redis
                log.warning(
                    "actor %d: no replay shard of run %r serves after %.0f s; still waiting (%s)",
                    actor_id,
                    run,
                    waited,
                    exc,
                )
            if waiting is not None:
                waiting()
            timeout = REPLAY_WAIT_LOG_S


def actor_epsilon(actor_id: int, num_actors: int, config: ActorsConfig) -> float:
    """Actor `actor_id`'s epsilon on the Ape-X schedule over max(num_actors, actor_id + 1)."""
    return float(apex_epsilons(max(num_actors, actor_id + 1), config.epsilon, config.epsilon_alpha)[actor_id])


class EnvActor:
    """One actor: envs, a local policy, n-step transitions into the sharded replay.

    Args:
        actor_id: this actor's number (stamps its transitions, picks its epsilon and seed).
        num_actors: fleet size the epsilon schedule spreads over.
        env, actors, learner: the run's config sections (the learner's decides the network).
        redis_url, run: the run's Redis (shard registry, weight store, actor keys).
        replay: inserts go here; default: a ShardedReplay discovering the run's shards.
        replay_credentials: the run's replay token and certificate, for that default ShardedReplay
            (None: shards that serve plaintext). Required, so that plaintext is always a choice
            made at the call site.
        writer: takes the transitions instead (then `replay` must be None); default: a
            TransitionWriter into `replay`. The actor closes it.
        fresh_run: the run has no learned weights to act with yet (a fresh online run,
            `system.train.launch.fresh_online_start`): with `actors.random_before_policy` the actor
            steps with uniform random actions while a background thread builds its policy, unless
            the weight store already announces a version (a process restarted after the learner's
            first publish acts with those weights from its first step, as every actor of a resumed
            run does). False: the policy is built, and the newest weights loaded, before any step.
    """

    def __init__(
        self,
        actor_id: int,
        num_actors: int,
        env: EnvConfig,
        actors: ActorsConfig,
        learner: LearnerConfig,
        redis_url: str,
        run: str = "default",
        replay: ShardedReplay | None = None,
        writer: Writer | None = None,
        *,
        replay_credentials: ReplayCredentials | None,
        fresh_run: bool = False,
    ):
        if writer is not None and replay is not None:
            raise ValueError("give a writer or a replay to write into, not both")
        self.startup = ActorStartup(created_at=time.time())
        # The cyclic collector paused while the imports and the build make their ~10^5 long-lived
        # objects: its passes over them cost ~17% of the CPU of `import torch` here (1.33 -> 1.11
        # s), on the path to the run's first env step. The little cyclic garbage they leave (about
        # 0.5 MB) is frozen with them; the collector runs again before anything is awaited, or,
        # where the policy is built in the background, once that build ended (or at the latest after
        # `actors.policy_build.GC_PAUSE_MAX_S`).
        collecting = gc.isenabled()
        gc.disable()
        self._policy_build: Future | None = None  # the background build, while it runs
        try:
            keep_freed_memory()  # insert messages of pixel envs are megabytes each
            self.actor_id, self.config = actor_id, actors
            seed = actors.seed + actor_id
            self.rng = np.random.default_rng(seed)
            spaces = describe_env(env)
            self.action_space = spaces.action_space
            self.policy: Policy | None = None  # once built
            self.weights: WeightSubscriber | None = None  # built with the policy
            self.epsilon = actor_epsilon(actor_id, num_actors, actors)
            block = nstep_block(actors.insert_batch, env.num_envs, env.num_envs * spaces.spec.item_nbytes())
            self.nstep = NStepAccumulator(env.num_envs, actors.n_step, learner.gamma, block=block)
            self.env_steps = self.vector_steps = self.episodes = self.random_steps = 0
            # This actor's share of the transitions the learner needs before its first update: random
            # steps beyond it add nothing the policy's own would not, and take the CPU the learner
            # and the shards need to start (on an idle 2-core VM the first update came 1.1 s later).
            # The n-step accumulator holds the last n - 1 steps of every env back: they come on top.
            share = -(-learner.learning_starts // max(num_actors, 1))
            self.random_steps_cap = max(1, share + actors.n_step * env.num_envs)
            self._flushed_at_cap = False
            self._returns: deque[float] = deque(maxlen=100)  # of the last 100 episodes
            self._lengths: deque[int] = deque(maxlen=100)
            self._counted = {"env_steps": 0, "episodes": 0, "env_restarts": 0, "random_steps": 0}  # in the metrics
            self._versions = np.zeros(env.num_envs, np.int64)  # policy_version column of one step
            self._episode_buffer: list[tuple[float, int, int, int]] = []  # for the episode stream
            self._redis_gap = RedisGap(
                log,
                away=f"actor {actor_id}: Redis is away (reports and episode records kept or retried later)",
                back=f"actor {actor_id}: Redis is back",
            )
            acts_first = (
                fresh_run
                and actors.random_before_policy
                and _build_in_background_pays(env)
                and not _weights_announced(redis_url, run, actor_id)
            )
            self._build_started = time.monotonic()
            self._build_warned = False
            self._build_error: BaseException | None = None  # a failed background build, raised by every step

            def build_policy():
                return _build_policy(learner, spaces, seed, redis_url, run)

            if not acts_first:
                self._adopt(*build_policy())

            # Envs first (an env that cannot start fails before anything connects), then the
            # connections; if any step fails, what was opened is closed again.
            self._opened: list = []
            self.metrics = ActorMetrics(run, actor_id)
            self.metrics.epsilon.set(self.epsilon)
            try:
                if self.weights is not None:
                    self._open(self.weights)
                self.envs = self._open(EnvVector(env, seed=seed * 10_000, max_rebuilds=actors.env_max_rebuilds))
                self.obs = self.envs.reset()
                self.startup.envs_at = time.time()
                if writer is None:
                    replay = replay or ShardedReplay(
                        redis_url=redis_url,
                        run=run,
                        writer_id=actor_writer_id(run, actor_id),
                        writer_index=actor_id,  # actors 0..n-1 cover every shard, whatever the run's name
                        max_in_flight=actors.max_inserts_in_flight,
                        insert_wait_s=actors.insert_retry_s,
                        credentials=replay_credentials,
                    )
                    writer = TransitionWriter(
                        replay,
                        batch_items=actors.insert_batch,
                        metrics=self.metrics,
                        name=f"actor {actor_id}",
                        on_held_back=self._report_held_back,
                    )
                self.writer = self._open(writer)
                self.registry = self._open(ActorRegistry(redis_url, run))
                self.metrics_address = ""
                self.node = _ray_node()
                if actors.metrics_port is not None:
                    bind = actors.metrics_host
                    if bind == "node":
                        import ray

                        bind = ray.util.get_node_ip_address()
                    server = self._open(start_metrics_server(actors.metrics_port, bind, self.metrics.registry))
                    host = socket.gethostname() if bind == "0.0.0.0" else bind
                    self.metrics_address = f"{host}:{server.server_port}"
                if acts_first:  # the collector's pause ends with the build, or at its bound (`build_in_background`)
                    self._build_started = time.monotonic()
                    self._policy_build = build_in_background(build_policy, f"actor-{actor_id}-policy", collecting)
            except BaseException:
                self._release()
                raise
            if self._policy_build is None:
                # The imports (torch, gymnasium, grpc) leave ~10^5 long-lived objects; freezing them
                # keeps the collector's full passes from walking them again and again in the step loop.
                gc.freeze()
        finally:
            if collecting and self._policy_build is None:
                gc.enable()
        # What follows waits on others (a shard, the weights, Redis), for as long as they take:
        # with the collector running (the pause is process-wide: every thread's garbage waits),
        # except while a background build holds it paused a few seconds more (GC_PAUSE_MAX_S at most).
        try:
            if replay is not None:
                await_replay(
                    replay,
                    actor_id,
                    run,
                    # refreshed with each warning; the slack outlives a stalled process between two
                    lambda: self._report(self.stats(), STATE_AWAITING_REPLAY, ttl_s=REPLAY_WAIT_LOG_S + 30),
                )
            if self.policy is not None:
                self._pull_newest_weights()  # a (re)started actor acts with them from its first step
            self.startup.ready_at = time.time()
            self._report(self.stats())  # up: from here a missing chunk is not for want of resources
        except BaseException:
            self._release()
            raise

    def _adopt(self, policy: Policy, weights: WeightSubscriber) -> None:
        """Takes a built policy and its weight subscriber: the actor acts with them from now on."""
        self.policy, self.weights = policy, weights
        self.startup.policy_at = time.time()

    def _take_built_policy(self) -> None:
        """Switches to the policy once the background build has finished (nothing while it runs,
        but a warning once it has run for BUILD_WARN_S), with the newest published weights; raises
        what the build raised, and keeps it for every later step."""
        build = self._policy_build
        if build is None:
            return
        if not build.done():
            self._warn_slow_build()
            return
        self._policy_build = None
        try:
            policy, weights = build.result()
        except BaseException as exc:
            self._build_error = exc
            raise
        import torch  # loaded by the build

        # Torch fixes a thread's intra-op thread count on that thread: the build's
        # `set_num_threads(1)` held for the build's thread, this one acts.
        torch.set_num_threads(1)
        self._open(weights)
        self._adopt(policy, weights)
        log.info(
            "actor %d: policy built after %d random env steps; acting with it from now on",
            self.actor_id,
            self.random_steps,
        )
        self._pull_newest_weights()  # the learner may have published while it was built

    def _warn_slow_build(self) -> None:
        """Logs once that the background build has run for more than BUILD_WARN_S."""
        building_s = time.monotonic() - self._build_started
        if not self._build_warned and building_s > BUILD_WARN_S:
            self._build_warned = True
            log.warning(
                "actor %d: its policy has been building for %.0f s (%d uniform random env steps so far); "
                "it acts at random until the build ends",
                self.actor_id,
                building_s,
                self.random_steps,
            )

    def _pull_newest_weights(self) -> None:
        """Loads the newest weights in the store now (see `_pull_weights`); while Redis is away the
        actor acts with those it has and the background subscriber brings them once it is back."""
        try:
            self._pull_weights(wait=True)
        except WeightStoreError as exc:
            log.warning("actor %d starts with its initial weights while Redis is away: %s", self.actor_id, exc)

    def _open(self, resource):
        self._opened.append(resource)
        return resource

    def _release(self) -> None:
        build, self._policy_build = self._policy_build, None
        if build is not None:  # an import cannot be interrupted: not awaited, its subscriber closed when it ends
            build.add_done_callback(functools.partial(_close_built_subscriber, self.actor_id))
        while self._opened:
            resource = self._opened.pop()
            try:
                resource.close()
            except Exception as exc:  # release the rest regardless
                log.warning("actor %d: closing %s failed: %s", self.actor_id, type(resource).__name__, exc)

    # -- the loop ---------------------------------------------------------------------------------

    def step(self) -> None:
        """One step of every env, with the newest weights the background subscriber holds (checked
        every weight_poll_steps steps: by default every step, so that a step loop slowed down by
        inserts the rate limiter holds back still acts with a version published meanwhile). Before
        a background build of the policy has ended, uniform random actions (policy_version 0), up
        to `random_steps_cap` (the actor's share of learner.learning_starts); past it the actor
        waits for the build (up to BUILD_POLL_S per call, without stepping)."""
        if self.policy is None:
            if self._build_error is not None:  # the actor cannot act with a policy: it stops acting
                raise self._build_error
            capped = self.random_steps >= self.random_steps_cap
            if capped and self._policy_build is not None:  # its share made: wait for the build a while
                if not self._flushed_at_cap:  # the learner's first batch must not wait in a buffer
                    self._flushed_at_cap = True
                    self.writer.flush()
                futures.wait([self._policy_build], timeout=BUILD_POLL_S)
            self._take_built_policy()
            if capped and self.policy is None:
                return  # still building: no step (`run` comes back here until its deadline)
        elif self.vector_steps % self.config.weight_poll_steps == 0:
            self._pull_weights()
        obs = self.obs
        if self.policy is None:
            actions = random_actions(self.action_space, len(obs), self.rng)
        else:
            actions = self.policy.act(obs, self.epsilon, self.rng)
        out = self.envs.step(actions)
        if self.policy is None:
            self.random_steps += len(actions) - len(out.failed)
        version = self.policy_version
        if self._versions[0] != version:
            self._versions = np.full(len(actions), version, np.int64)
        transitions = self.nstep.add(
            obs,
            actions,
            out.reward,
            out.final_obs,
            out.terminated,
            out.truncated,
            extras={"policy_version": self._versions},
            aborted=out.aborted if out.failed else None,
        )
        self.obs = out.obs
        self.vector_steps += 1
        self.env_steps += len(actions) - len(out.failed)
        if transitions is not None:
            transitions["actor_id"] = np.full(len(transitions["reward"]), self.actor_id, np.int32)
            self.writer.add(transitions)
        for episode in out.episodes:
            self._episode(episode.episode_return, episode.length)
        if self.startup.first_insert_at is None:
            self._mark_first_steps()

    def _mark_first_steps(self) -> None:
        """Stamps the first env step and the first batch handed to replay (the run's start-up)."""
        now = time.time()
        if self.startup.first_step_at is None:
            self.startup.first_step_at = now
        if self.writer.sent:
            self.startup.first_insert_at = now

    def run(self, seconds: float, max_steps: int | None = None) -> ActorStats:
        """Steps for `seconds` (or `max_steps` env steps), then flushes inserts and episode
        records and reports; the supervisor calls this in a loop."""
        start, steps_before = time.monotonic(), self.env_steps
        deadline = start + seconds
        while time.monotonic() < deadline and (max_steps is None or self.env_steps - steps_before < max_steps):
            self.step()
        self.flush()
        elapsed = max(time.monotonic() - start, 1e-9)
        stats = self.stats((self.env_steps - steps_before) / elapsed)
        self._report(stats)
        return stats

    # -- data out ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Sends buffered transitions and waits until replay acknowledged them (or they were
        counted lost); writes pending episode records."""
        self.writer.flush()
        if self.startup.first_insert_at is None and self.writer.sent:  # the first batch left only now
            self._mark_first_steps()
        while self._episode_buffer:  # in entries of at most EPISODES_PER_ENTRY
            entry = self._episode_buffer[:EPISODES_PER_ENTRY]
            if not self._to_redis("write episode records", self.registry.add_episodes, self.actor_id, entry):
                break  # kept for the next flush: Redis is away for a moment
            del self._episode_buffer[: len(entry)]
        if len(self._episode_buffer) > MAX_KEPT_EPISODES:  # a long outage: the newest are kept
            dropped = len(self._episode_buffer) - MAX_KEPT_EPISODES
            del self._episode_buffer[:dropped]
            log.warning(
                "actor %d: %d episode records dropped while Redis is away (the newest %d kept)",
                self.actor_id,
                dropped,
                MAX_KEPT_EPISODES,
            )

    def _to_redis(self, what: str, write, *args) -> bool:
        """One write to the run's Redis; False (said once per gap, the chunk goes on) while Redis
        is away: a restarting Redis costs reports and episode records a delay, not the actor."""
        try:
            write(*args)
        except ActorRegistryError as exc:
            self._redis_gap.failed(f"cannot {what}: {exc}")
            return False
        self._redis_gap.succeeded()
        return True

    def _episode(self, episode_return: float, length: int) -> None:
        self.episodes += 1
        self._returns.append(episode_return)
        self._lengths.append(length)
        self._episode_buffer.append((float(episode_return), length, self.policy_version, self.env_steps))

    # -- weights ----------------------------------------------------------------------------------

    @property
    def policy_version(self) -> int:
        """The version of the weights the actor acts with: 0 for the initial network, and for the
        uniform random actions taken before the policy was built (no learned weights either)."""
        return 0 if self.policy is None else self.policy.version

    def _pull_weights(self, wait: bool = False) -> None:
        """Loads newer weights: those the subscriber fetched in the background, or (`wait`)
        whatever is newest in the store right now."""
        fetched = self.weights.fetch_now() if wait else self.weights.take()
        if fetched is None:
            return
        version, state = fetched
        if version <= self.policy.version:
            return
        self.policy.load(state, version)
        self.metrics.weight_pulls.inc()
        self.metrics.weight_version.set(version)

    # -- state -----------------------------------------------------------------------------------

    def stats(self, steps_per_second: float = 0.0) -> ActorStats:
        """Counters so far; also brings the Prometheus series up to date (once per chunk, so the
        per-step loop pays nothing for them)."""
        restarts = self.envs.restarts
        for name, value, counter in (
            ("env_steps", self.env_steps, self.metrics.env_steps),
            ("episodes", self.episodes, self.metrics.episodes),
            ("env_restarts", restarts, self.metrics.env_restarts),
            ("random_steps", self.random_steps, self.metrics.random_steps),
        ):
            counter.inc(value - self._counted[name])
            self._counted[name] = value
        if self._returns:
            self.metrics.episode_return.set(float(np.mean(self._returns)))
            self.metrics.episode_length.set(float(np.mean(self._lengths)))
        return ActorStats(
            actor_id=self.actor_id,
            pid=os.getpid(),
            env_steps=self.env_steps,
            episodes=self.episodes,
            policy_version=self.policy_version,
            epsilon=self.epsilon,
            env_restarts=restarts,
            transitions_inserted=self.writer.inserted,
            transitions_lost=self.writer.lost,
            malformed_weights=0 if self.weights is None else self.weights.malformed.total,
            weight_fetch_failures=0 if self.weights is None else self.weights.fetch_failures,
            recent_return=float(np.mean(self._returns)) if self._returns else None,
            steps_per_second=steps_per_second,
            random_steps=self.random_steps,
            startup=dataclasses.replace(self.startup),
        )

    def _report(self, stats: ActorStats, state: str = STATE_ACTING, ttl_s: float = 30.0) -> None:
        """Replaces the actor's report: `stats` and `state`, for `ttl_s` seconds."""
        fields = {k: v for k, v in vars(stats).items() if v is not None and k != "startup"}
        fields.update(host=socket.gethostname(), metrics=self.metrics_address, state=state, insert_wait_s=0)
        if self.node:
            fields["node"] = self.node
        self._to_redis("report its state", self.registry.report, self.actor_id, fields, ttl_s)

    def _report_held_back(self, waited: float) -> None:
        """Says in the actor's report that its inserts have waited `waited` s on replay (called
        from the writer's watch thread: the step loop is blocked in the insert meanwhile)."""
        self._to_redis(
            "report its state",
            self.registry.report,
            self.actor_id,
            {"state": STATE_HELD_BACK, "insert_wait_s": f"{waited:.0f}"},
        )

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> ActorStats:
        """Flushes what is buffered, drops this actor's report, releases everything."""
        try:
            self.flush()
        finally:
            stats = self.stats()
            try:
                self._to_redis("remove its report", self.registry.remove, self.actor_id)  # else it expires
            finally:
                self._release()
        return stats


def _build_in_background_pays(env: EnvConfig) -> bool:
    """Whether building the policy in the background shortens the way to the first env step: not
    where torch is loaded already (nothing left to wait for) or where the env runs a features
    encoder (`env.features`: the encoder loads torch, and runs it on the acting thread, anyway)."""
    return env.features.encoder == "none" and not _torch_loaded()


def _torch_loaded() -> bool:
    """Whether this process has imported torch."""
    return "torch" in sys.modules


def _close_built_subscriber(actor_id: int, build: Future) -> None:
    """Closes the weight subscriber a background build made for an actor closed before it ended
    (the build's done-callback)."""
    if build.exception() is not None:
        return
    try:
        build.result()[1].close()
    except Exception as exc:
        log.warning("actor %d: closing its policy's weight subscriber failed: %s", actor_id, exc)


def _weights_announced(redis_url: str, run: str, actor_id: int) -> bool:
    """Whether the run's weight store announces a version (torch-free: one GET). Where it cannot be
    read (Redis away, a malformed value) the answer is yes: the actor then builds its policy before
    its first step, as where weights exist, and never acts at random where it should not."""
    try:
        return announced_version(redis_url, run) > 0
    except (WeightStoreError, MalformedWeightsError) as exc:
        log.warning("actor %d: cannot read the weights version (%s); building its policy before acting", actor_id, exc)
        return True


def _build_policy(
    learner: LearnerConfig, spaces: EnvSpaces, seed: int, redis_url: str, run: str
) -> tuple[Policy, WeightSubscriber]:
    """An actor's `learner.Policy` (initial weights seeded by `seed`) and the `WeightSubscriber`
    that follows the run's weight store: imports torch (~0.9 s of CPU), on the caller's thread."""
    import torch  # here, not at the module's import: the driver imports this module to start actors

    from learner import Policy, WeightStore

    torch.set_num_threads(1)  # actors scale by processes, not by intra-op threads
    policy = Policy(learner, spaces.obs_shape, spaces.action_space, seed=seed)
    return policy, WeightSubscriber(WeightStore(redis_url, run, learner.weights))


def _ray_node() -> str:
    """The Ray node this actor runs on ("ray-" + the node id's first 12 hex digits: several nodes
    may share a host), or "" outside Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return "ray-" + ray.get_runtime_context().get_node_id()[:12]
