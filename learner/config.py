"""`LearnerConfig`: the `learner` section of a run config, one small dataclass per concern.

Each algorithm's settings are their own group (`distributional`, `sac`, ...), but the YAML
section stays flat and backward compatible: a group field marked `flat` takes its keys at the
section's level (`learner.v_min`, named by `flat_key` where it differs from the attribute), and
the nested spelling (`learner.distributional.v_min`) is accepted as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

FLAT = {"flat": True}
"""Field metadata: this group's keys are written at the parent section's level in YAML and `--set`."""


def flat_key(name: str) -> dict[str, str]:
    """Field metadata: the key this field is written as in a flat section, when not its own name."""
    return {"flat_key": name}


def _refuse(field_name: str, value: object, why: str) -> None:
    raise ValueError(f"{field_name}={value!r}: {why}")


@dataclass(frozen=True)
class ArchitectureConfig:
    """The networks: torso, widths and normalisation."""

    torso: Literal["auto", "mlp", "cnn"] = field(default="auto", metadata=flat_key("network"))
    """"mlp" for vectors, "cnn" (Nature DQN) for HxWxC images; "auto": CNN for images >= 36x36."""

    hidden_size: int = 256
    """Width of each hidden layer (MLP torso, heads, SAC actor and critics)."""

    num_layers: int = 2
    """Hidden layers of the MLP torso (and of SAC's actor and critics)."""

    layer_norm: bool = False
    """LayerNorm after every hidden layer (high-UTD recipes use it; SAC critics always do)."""

    dueling: bool = False
    """Dueling head: Q = V + A - mean(A) (per atom for distributional losses)."""

    critic: Literal["discrete", "action_embedding", "spatial"] = "discrete"
    """"iql"'s Q networks: "discrete" (one output per action), "action_embedding" (Digi-Q: Q(s, a)
    takes an embedding of the action as an input, a learned vector per action plus, for UI envs,
    its kind, tap point and place within its kind) or "spatial" (the action embedding plus, for a
    tap, the screen grid's features at the tapped point: needs env.features.grid_rows/grid_cols;
    learner/action_heads.py)."""

    action_embedding_dim: int = 32
    """Width of the learned per-action embedding of the "action_embedding" critic."""

    policy_head: Literal["flat", "factored"] = "flat"
    """The offline losses' policy pi: "flat" (a softmax over every action) or "factored" (UI envs:
    p(kind) x p(action | kind), kinds tap / swipe / type / key / complete; learner/action_heads.py)."""

    def __post_init__(self) -> None:
        if self.action_embedding_dim < 1:
            _refuse("action_embedding_dim", self.action_embedding_dim, "must be >= 1")
        for name in ("hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                _refuse(name, getattr(self, name), "must be >= 1")


@dataclass(frozen=True)
class OptimizerConfig:
    """Adam and gradient clipping, shared by every network."""

    lr: float = 3e-4
    """Adam learning rate (all networks)."""

    max_grad_norm: float | None = 10.0
    """Gradient clipping by global norm; null: none."""

    lr_schedule: Literal["constant", "linear"] = "constant"
    """"constant": `lr` throughout; "linear": from `lr` down to `lr` x `lr_final_fraction` over
    `lr_decay_updates` updates, then held there (`learner.lr_schedule`). Discrete Q losses only
    ("dqn", "c51", "hl_gauss")."""

    lr_final_fraction: float = 0.1
    """The "linear" schedule's floor, as a fraction of `lr`, in (0, 1]."""

    lr_decay_updates: int | None = None
    """Updates the "linear" schedule decays over; null: `qfleet train` sets it to the run's update
    budget, train.total_env_steps x updates_per_env_step (+ offline.updates with an offline phase);
    `qfleet learner run` has no budget and refuses a "linear" schedule without it."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            _refuse("lr", self.lr, "must be > 0")
        if not 0.0 < self.lr_final_fraction <= 1.0:
            _refuse("lr_final_fraction", self.lr_final_fraction, "must be in (0, 1]")
        if self.lr_decay_updates is not None and self.lr_decay_updates < 1:
            _refuse("lr_decay_updates", self.lr_decay_updates, "must be >= 1, or null for the run's update budget")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            _refuse("max_grad_norm", self.max_grad_norm, "must be > 0, or null")


@dataclass(frozen=True)
class DQNConfig:
    """Settings of the "dqn" loss."""

    td_loss: Literal["huber", "mse"] = "huber"
    """Regression loss of "dqn"."""


AUTO = "auto"
"""A support bound derived from the env (`learner.value_support`): set by `qfleet train` from the
env's reward range, discount and time limit before anything starts."""


@dataclass(frozen=True)
class DistributionalConfig:
    """The value support of the "c51" and "hl_gauss" losses."""

    num_bins: int = 51
    """Atoms (C51) or bins (HL-Gauss) of the value distribution."""

    v_min: float | Literal["auto"] = AUTO
    """Lower end of the value support; targets are clamped into [v_min, v_max]. "auto": the lowest
    discounted return the env's reward range and time limit allow, with 10% room (`qfleet train`
    measures the reward range with a few random-policy episodes)."""

    v_max: float | Literal["auto"] = AUTO
    """Upper end of the value support; "auto": the highest return the env allows, with 10% room."""

    value_transform: Literal["none", "symlog"] = "none"
    """"symlog": the bins are evenly spaced in symlog(value) (DreamerV3) between v_min and v_max, so
    a wide fixed range (e.g. +-1e4) keeps fine bins near 0; "none": evenly spaced values."""

    sigma_ratio: float = 0.75
    """HL-Gauss: Gaussian sigma in bin widths (0.75 per "Stop Regressing")."""

    derived: bool = field(default=False, metadata=flat_key("support_derived"))
    """Written by `qfleet train`: whether a bound was "auto" and came from random play (so a clamping
    learner knows to ask for numbers rather than for "auto"); not a setting."""

    def __post_init__(self) -> None:
        if self.num_bins < 2:
            _refuse("num_bins", self.num_bins, "must be >= 2")
        if self.resolved and not self.v_max > self.v_min:
            _refuse("v_max", self.v_max, f"must exceed v_min={self.v_min}")
        if not self.sigma_ratio > 0:
            _refuse("sigma_ratio", self.sigma_ratio, "must be > 0")

    @property
    def resolved(self) -> bool:
        """Whether both bounds are numbers (no "auto" left to derive from the env)."""
        return self.v_min != AUTO and self.v_max != AUTO

    def bounds(self) -> tuple[float, float]:
        """(v_min, v_max) as numbers.

        Raises:
            ValueError: a bound is still "auto" (only `qfleet train` and the services that load a
                run's config derive it from the env).
        """
        if not self.resolved:
            raise ValueError(
                f"learner.v_min={self.v_min!r}, learner.v_max={self.v_max!r}: 'auto' is derived from the env by "
                "`qfleet train` (system.config.resolve_value_support); set numbers to build a learner directly"
            )
        return float(self.v_min), float(self.v_max)


@dataclass(frozen=True)
class SACConfig:
    """Settings of the "sac" loss (REDQ/RLPD-style critic ensemble)."""

    ensemble_size: int = 2
    """Critics in the ensemble, computed in one batched pass. 2 (SAC's clipped double Q, with LayerNorm)
    by default: on CPU an update of 10 (REDQ; RLPD with LayerNorm, for high UTD) costs 3-4x the
    time of 2 (`qfleet bench sac-updates`)."""

    ensemble_subset: int = 2
    """Critics the target takes the minimum over, drawn at random per update."""

    actor_q: Literal["auto", "min", "mean"] = "auto"
    """What the actor maximises over the critics: "min" (SAC and SB3's clipped double Q), "mean"
    (REDQ and RLPD, with 10 critics; more optimistic), or "auto": min when the target takes the
    minimum over every critic (ensemble_subset == ensemble_size, as with the default 2), mean otherwise."""

    init_temperature: float = 1.0
    """Initial entropy temperature (tuned towards an entropy of -action_dim for actions scaled to
    [-1, 1], SAC's and SB3's target)."""

    def __post_init__(self) -> None:
        if self.ensemble_size < 2:
            _refuse("ensemble_size", self.ensemble_size, "must be >= 2")
        if not 1 <= self.ensemble_subset <= self.ensemble_size:
            _refuse("ensemble_subset", self.ensemble_subset, f"must be in [1, ensemble_size={self.ensemble_size}]")
        if not self.init_temperature > 0:
            _refuse("init_temperature", self.init_temperature, "must be > 0")

    def actor_q_for_ensemble(self) -> Literal["min", "mean"]:
        """`actor_q` with "auto" resolved by the ensemble: "min" when the target's subset is every critic."""
        if self.actor_q != "auto":
            return self.actor_q
        return "min" if self.ensemble_subset == self.ensemble_size else "mean"


@dataclass(frozen=True)
class IQLConfig:
    """Settings of the "iql" loss: implicit Q-learning (Kostrikov et al. 2021) for offline data, with
    the policy extracted by AWR or by Digi-Q's Best-of-N (Bai et al. 2025)."""

    expectile: float = 0.7
    """Expectile tau of V's regression towards Q(s, a_data): 0.5 is plain (half) squared error, Digi-Q's
    V regression; towards 1 V approaches the best action the data shows (IQL: 0.7 locomotion, 0.9 mazes)."""

    extraction: Literal["awr", "best_of_n"] = field(default="awr", metadata=flat_key("policy_extraction"))
    """How the policy is extracted: "awr" (advantage-weighted regression on the data actions) or
    "best_of_n" (imitate the highest-Q of n actions sampled from the policy, when it beats V)."""

    temperature: float = field(default=3.0, metadata=flat_key("awr_temperature"))
    """AWR's inverse temperature beta: data actions are weighted by exp(beta * (Q - V))."""

    max_weight: float = field(default=100.0, metadata=flat_key("awr_max_weight"))
    """AWR's weights are clipped at this (IQL clips at 100)."""

    n: int = field(default=16, metadata=flat_key("best_of_n"))
    """Best-of-N: candidate actions per state (1, 4 or 16 in Digi-Q's study), sampled from the current
    policy (i.i.d. draws, or distinct ones with `best_of_n_replacement: false`)."""

    replacement: bool = field(default=True, metadata=flat_key("best_of_n_replacement"))
    """Best-of-N: draw the n candidates i.i.d. from pi (with replacement: a peaked pi offers its
    favourite action n times, so the choice stays close to pi). False: n distinct actions
    (Gumbel-top-k, without replacement, with replacement only when n exceeds the actions), which
    pushes the choice towards argmax-Q over all actions, away from pi's support."""

    include_data_action: bool = field(default=False, metadata=flat_key("best_of_n_include_data_action"))
    """Best-of-N: the data action takes one of the n candidate slots (n - 1 sampled from pi), as Digi-Q's
    `actor_always_include_original_action`: pi then also imitates a data action that beats V and
    beats pi's own samples."""

    advantage_threshold: float = 0.0
    """Best-of-N: the chosen action is imitated only when Q(s, a) - V(s) exceeds this."""

    policy_starts: int = 0
    """Updates of the critics alone before pi's first update (AWR and Best-of-N). Best-of-N copies
    whichever sampled action the target critic scores highest: from an untrained critic that is one
    arbitrary action in nearly every state, and pi collapses onto it before the critic has learned
    anything (MinAtar Breakout, issue 20). Wait until the critic has trained (e.g. 1,000 updates)."""

    policy_warmup: Literal["none", "filtered_bc"] = "none"
    """What pi learns during those `policy_starts` updates: nothing ("none"), or filtered behaviour
    cloning ("filtered_bc": the data actions of the batch's top `top_k_percent` transitions by
    episode return, averaged over those kept as "filtered_bc" does; needs the `episode_return`
    column datasets give; a batch without it teaches pi nothing, with a warning). Digi-Q's actor is a policy already trained on
    such data before Best-of-N improves it, so its N candidates are actions a trained policy
    proposes; from an untrained pi they are near-uniform, and Best-of-N then copies whichever of
    them the critic overrates (MiniWoB click-button: docs/digiq.md)."""

    cql_alpha: float = 0.0
    """Weight of a conservative penalty on the twin Qs (discrete CQL, Kumar et al. 2020):
    alpha * (logsumexp_a Q(s, a) - Q(s, a_data)) added to each twin's TD loss, with Q of every action
    from one pass. It lowers Q at the actions the data rarely holds, which the critic otherwise
    overrates and Best-of-N copies (MiniWoB: docs/digiq.md). 0 (default): plain IQL. Finite, >= 0;
    needs loss "iql"."""

    def __post_init__(self) -> None:
        if not 0.0 < self.expectile < 1.0:
            _refuse("expectile", self.expectile, "must be in (0, 1)")
        finite = {
            "awr_temperature": self.temperature,
            "awr_max_weight": self.max_weight,
            "advantage_threshold": self.advantage_threshold,
            "cql_alpha": self.cql_alpha,
        }
        for key, value in finite.items():
            if not math.isfinite(value):
                _refuse(key, value, "must be finite")
        if not self.temperature >= 0:
            _refuse("awr_temperature", self.temperature, "must be >= 0")
        if not self.max_weight > 0:
            _refuse("awr_max_weight", self.max_weight, "must be > 0")
        if not self.cql_alpha >= 0:
            _refuse("cql_alpha", self.cql_alpha, "must be >= 0")
        if self.n < 1:
            _refuse("best_of_n", self.n, "must be >= 1")
        if self.policy_starts < 0:
            _refuse("policy_starts", self.policy_starts, "must be >= 0")
        if self.policy_warmup not in ("none", "filtered_bc"):
            _refuse("policy_warmup", self.policy_warmup, "must be none or filtered_bc")


@dataclass(frozen=True)
class FilteredBCConfig:
    """Settings of the "filtered_bc" loss: behaviour cloning of the best episodes only."""

    top_k_percent: float = 10.0
    """Imitate the data actions of transitions whose episode return is in the top k% of the batch."""

    def __post_init__(self) -> None:
        if not 0.0 < self.top_k_percent <= 100.0:
            _refuse("top_k_percent", self.top_k_percent, "must be in (0, 100]")


@dataclass(frozen=True)
class TargetConfig:
    """The target network."""

    update: Literal["hard", "soft", "none"] = field(default="hard", metadata=flat_key("target_update"))
    """"hard": copied every `target_update_every` updates; "soft": Polyak with tau; "none": no target."""

    every: int = field(default=500, metadata=flat_key("target_update_every"))
    """Updates between hard target copies."""

    tau: float = 0.005
    """Polyak step of soft target updates."""

    def __post_init__(self) -> None:
        if self.every < 1:
            _refuse("target_update_every", self.every, "must be >= 1")
        if not 0.0 < self.tau <= 1.0:
            _refuse("tau", self.tau, "must be in (0, 1]")


@dataclass(frozen=True)
class ResetConfig:
    """Periodic resets (Nikishin et al. 2022)."""

    every: int | None = field(default=None, metadata=flat_key("reset_every"))
    """Updates between periodic resets; null: never."""

    modules: Literal["head", "all"] = field(default="head", metadata=flat_key("reset_modules"))
    """What a reset re-initialises, with its optimizer state: the last layer(s) or every network."""

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            _refuse("reset_every", self.every, "must be >= 1, or null")


@dataclass(frozen=True)
class PrefetchConfig:
    """The prefetching sampler that keeps batches ready."""

    depth: int = field(default=8, metadata=flat_key("prefetch_depth"))
    """Batches the prefetching sampler keeps queued, in whole requests: floor(depth /
    batches_per_request) of them but at least one (one request when a request is bigger), plus
    the rest of the request the learner is taking batches from."""

    batches_per_request: int = field(default=4, metadata=flat_key("prefetch_batches_per_request"))
    """Batches per replay round trip; aim for a few MB: 16 for CartPole, 4 for Atari at batch 32."""

    same_host_feed: Literal["auto", "off"] = field(default="auto", metadata=flat_key("same_host_feed"))
    """"auto": a shard on the learner's host writes sampled batches into a shared-memory region
    the learner owns instead of the gRPC response (replay/same_host.py); "off": always gRPC. The
    default since it measured at least gRPC + TLS's updates/s in every case of `qfleet bench
    learner` (docs/benchmarks.md, "Same-host feed")."""

    def __post_init__(self) -> None:
        if self.same_host_feed not in ("auto", "off"):
            _refuse("same_host_feed", self.same_host_feed, "must be 'auto' or 'off'")
        if self.depth < 1:
            _refuse("prefetch_depth", self.depth, "must be >= 1")
        if self.batches_per_request < 1:
            _refuse("prefetch_batches_per_request", self.batches_per_request, "must be >= 1")


WEIGHTS_OVER_REDIS, WEIGHTS_OVER_OBJECT_STORE = "redis", "object_store"
"""The transports a weights manifest names (learner/weights.py: REDIS, OBJECT_STORE)."""

WEIGHTS_TRANSPORTS = (WEIGHTS_OVER_OBJECT_STORE, WEIGHTS_OVER_REDIS)


@dataclass(frozen=True)
class WeightsConfig:
    """How published weights travel to actors (learner/weights.py); readers follow whatever the
    publisher chose, so only the learner's setting matters."""

    transport: Literal["auto", "redis", "object_store"] = "auto"
    """"object_store": Ray's object store (Redis holds only the version and where to get it);
    "redis": the payload in Redis (runs without Ray); "auto": the object store when the learner
    runs inside Ray (`qfleet train`), else Redis (`qfleet learner run`)."""

    chunk_bytes: int = 64 * 2**20
    """Transport redis: the largest piece of the payload (Redis caps a string at 512 MB; policies may
    be larger). The object store puts each version as one object, whatever its size."""

    keep_versions: int = 2
    """Versions whose payloads the learner keeps (the newest and the ones before): object store, pinned
    refs; redis, payload keys in Redis (a Redis read overtaken by this many publishes starts again on
    the newest, so raise it when publishes come faster than a reader downloads one)."""

    timeout_s: float = 60.0
    """Object store: how long a reader waits for the payload (Redis calls time out after 10 s)."""

    host_timeout_s: float = 10.0
    """Object store: how long the weights host may take to answer (the learner's offer of a version,
    a reader's request for its refs) before the learner replaces it, or a reader gives up. The
    learner offers from a background thread: training never waits for the host."""

    def __post_init__(self) -> None:
        if self.transport not in ("auto", *WEIGHTS_TRANSPORTS):
            _refuse("weights.transport", self.transport, "must be 'auto', 'redis' or 'object_store'")
        if not 1 <= self.chunk_bytes <= 512 * 2**20:
            _refuse("weights.chunk_bytes", self.chunk_bytes, "must be in [1, 512 MiB]")
        if self.keep_versions < 1:
            _refuse("weights.keep_versions", self.keep_versions, "must be >= 1")
        if not self.timeout_s > 0:
            _refuse("weights.timeout_s", self.timeout_s, "must be > 0")
        if not self.host_timeout_s > 0:
            _refuse("weights.host_timeout_s", self.host_timeout_s, "must be > 0")


@dataclass(frozen=True)
class LearnerConfig:
    """How the learner builds its networks, computes its loss and paces itself.

    YAML keys are flat (option (a) of the restructure: every key of earlier releases still
    works); each group below also accepts its nested spelling, e.g. `learner.sac.ensemble_size`.
    """

    loss: Literal["dqn", "c51", "hl_gauss", "sac", "iql", "filtered_bc"] = "dqn"
    """Discrete: "dqn" (double DQN), "c51", "hl_gauss"; continuous: "sac" (critic ensemble); offline,
    discrete: "iql" (expectile V, AWR or Best-of-N policy), "filtered_bc" (needs `episode_return`)."""

    batch_size: int = 256
    """Transitions per update."""

    gamma: float = 0.99
    """Discount per env step; actors fold it into each transition's n-step `discount` column."""

    updates_per_env_step: float = 1.0
    """The update-to-data ratio (UTD), held with the replay: the learner waits for data."""

    learning_starts: int = 1000
    """Transitions in replay (all shards) before the first update."""

    priority_eps: float = 1e-3
    """Added to |TD error| to form new priorities (keeps every item sampleable)."""

    publish_every: int = 100
    """Updates between weight publications to the parameter store."""

    policy_average_tau: float | None = None
    """The discrete Q losses ("dqn", "c51", "hl_gauss"): publish a Polyak average of the online
    network, moved by this step after every update (about 1 / tau updates of memory), instead of the
    online network itself; actors and evaluations act with it, the loss and targets are unchanged.
    null (the default): publish the online network. The discrete recipe of `qfleet train --env`
    sets 0.005: over 17 CartPole seeds every final evaluation ended at or above 475 with it, against
    15 of 17 without (docs/training.md, "Holding 500"); set null there to switch to another loss."""

    checkpoint_every: int = 10_000
    """Updates between learner checkpoints (also written when it stops)."""

    checkpoint_every_s: float | None = 60.0
    """Seconds between learner checkpoints, whichever of this and `checkpoint_every` comes first:
    a learner that dies loses at most about this much training (None: by updates only)."""

    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"."""

    cuda_graph: bool = True
    """On a CUDA device, the discrete Q losses ("dqn", "c51", "hl_gauss") replay each update as one
    captured CUDA graph (after a few ordinary updates that warm it up): the same math, without the
    host launching each of its ~60-120 small kernels one by one, which bounds a GPU learner's
    updates/s (docs/benchmarks.md, "The learner on a GPU"). No effect on the CPU; false: every
    update runs op by op."""

    policy_acting: Literal["greedy", "sample"] = "greedy"
    """How actors act with an offline loss's policy pi ("iql", "filtered_bc"): "greedy" (its most
    likely action, epsilon-greedy while exploring) or "sample" (draw from pi; epsilon-uniform on top).
    Evaluation is greedy unless `train.eval_acting: policy`."""

    seed: int = 0
    """Seeds network initialisation and the learner's random draws."""

    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig, metadata=FLAT)
    """The networks (keys: network, hidden_size, num_layers, layer_norm, dueling, critic,
    action_embedding_dim, policy_head)."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig, metadata=FLAT)
    """Adam, its learning-rate schedule and clipping (keys: lr, max_grad_norm, lr_schedule,
    lr_final_fraction, lr_decay_updates)."""

    target: TargetConfig = field(default_factory=TargetConfig, metadata=FLAT)
    """The target network (keys: target_update, target_update_every, tau)."""

    dqn: DQNConfig = field(default_factory=DQNConfig, metadata=FLAT)
    """The "dqn" loss (key: td_loss)."""

    distributional: DistributionalConfig = field(default_factory=DistributionalConfig, metadata=FLAT)
    """The "c51" and "hl_gauss" losses (keys: num_bins, v_min, v_max, sigma_ratio)."""

    sac: SACConfig = field(default_factory=SACConfig, metadata=FLAT)
    """The "sac" loss (keys: ensemble_size, ensemble_subset, actor_q, init_temperature)."""

    iql: IQLConfig = field(default_factory=IQLConfig, metadata=FLAT)
    """The "iql" loss (keys: expectile, policy_extraction, awr_temperature, awr_max_weight, best_of_n,
    best_of_n_replacement, best_of_n_include_data_action, advantage_threshold, policy_starts,
    policy_warmup, cql_alpha)."""

    filtered_bc: FilteredBCConfig = field(default_factory=FilteredBCConfig, metadata=FLAT)
    """The "filtered_bc" loss (key: top_k_percent)."""

    resets: ResetConfig = field(default_factory=ResetConfig, metadata=FLAT)
    """Periodic resets (keys: reset_every, reset_modules)."""

    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig, metadata=FLAT)
    """The prefetching sampler (keys: prefetch_depth, prefetch_batches_per_request, same_host_feed)."""

    weights: WeightsConfig = field(default_factory=WeightsConfig)
    """How weights reach the actors (keys: weights.transport, weights.chunk_bytes, ...)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "publish_every", "checkpoint_every", "learning_starts"):
            if getattr(self, name) < 1:
                _refuse(name, getattr(self, name), "must be >= 1")
        if self.checkpoint_every_s is not None and not self.checkpoint_every_s > 0:
            _refuse("checkpoint_every_s", self.checkpoint_every_s, "must be > 0, or null for by updates only")
        if not 0.0 <= self.gamma <= 1.0:
            _refuse("gamma", self.gamma, "must be in [0, 1]")
        if not self.updates_per_env_step > 0:
            _refuse("updates_per_env_step", self.updates_per_env_step, "must be > 0")
        if not self.priority_eps > 0:
            _refuse("priority_eps", self.priority_eps, "must be > 0")
        policy_losses = ("iql", "filtered_bc")
        if self.architecture.critic != "discrete" and self.loss != "iql":
            _refuse("critic", self.architecture.critic, f"needs loss 'iql' (loss is {self.loss!r})")
        if self.iql.cql_alpha != 0 and self.loss != "iql":
            _refuse(
                "cql_alpha",
                self.iql.cql_alpha,
                f"penalises iql's critics of discrete actions: needs loss 'iql' (loss is {self.loss!r}); 0 for the others",
            )
        if self.architecture.policy_head != "flat" and self.loss not in policy_losses:
            _refuse(
                "policy_head",
                self.architecture.policy_head,
                f"needs loss 'iql' or 'filtered_bc' (loss is {self.loss!r})",
            )
        if self.policy_acting != "greedy" and self.loss not in policy_losses:
            _refuse("policy_acting", self.policy_acting, f"needs loss 'iql' or 'filtered_bc' (loss is {self.loss!r})")
        if self.policy_average_tau is not None:
            if not 0.0 < self.policy_average_tau <= 1.0:
                _refuse("policy_average_tau", self.policy_average_tau, "must be in (0, 1], or null")
            if self.loss not in ("dqn", "c51", "hl_gauss"):
                _refuse(
                    "policy_average_tau",
                    self.policy_average_tau,
                    f"needs loss 'dqn', 'c51' or 'hl_gauss' (loss is {self.loss!r}); null for the others",
                )
        if self.optimizer.lr_schedule != "constant" and self.loss not in ("dqn", "c51", "hl_gauss"):
            _refuse(
                "lr_schedule",
                self.optimizer.lr_schedule,
                f"needs loss 'dqn', 'c51' or 'hl_gauss' (loss is {self.loss!r}); 'constant' for the others",
            )
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            _refuse("device", self.device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @property
    def samples_per_insert(self) -> float:
        """The replay ratio that realises the UTD: each update samples batch_size items."""
        return self.updates_per_env_step * self.batch_size


@dataclass(frozen=True)
class ActionabilityConfig:
    """Phase 1 training (`qfleet encoder train`): the model, the label and the optimisation."""

    epochs: int = 10
    """Passes over the training split."""

    batch_size: int = 128
    """(screen, action) pairs per gradient step."""

    learning_rate: float = 1e-3
    """Adam's learning rate."""

    feature_dim: int = 256
    """D, the length of the encoder's feature vector (what replay stores per observation)."""

    action_dim: int = 32
    """Length of the action embedding the classifier reads beside the features."""

    holdout_fraction: float = 0.2
    """Share of the episodes held out to measure accuracy (never trained on)."""

    pixel_tolerance: int = 8
    """A pixel has changed when a channel moved by more than this (of 255): JPEG-like noise is not a change."""

    change_threshold: float = 0.001
    """The screen has changed when more than this fraction of its pixels changed."""

    seed: int = 0
    """Seeds the split, the initial weights and the batches."""

    device: str = "cpu"
    """"cpu", "cuda[:N]", or "auto" (CUDA when present)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "feature_dim", "action_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate}: must be > 0")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction={self.holdout_fraction}: must be in (0, 1)")
        if not 0 <= self.pixel_tolerance < 255:
            raise ValueError(f"pixel_tolerance={self.pixel_tolerance}: must be in [0, 255)")
        if not 0 <= self.change_threshold < 1:
            raise ValueError(f"change_threshold={self.change_threshold}: must be in [0, 1)")


def resolve_device(name: str):
    """A torch.device for "auto" / "cpu" / "cuda[:N]"; "auto" is CUDA when present."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"learner.device={name!r}: CUDA is not available on this machine")
    return device
