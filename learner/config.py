"""`LearnerConfig`: every setting of the learner (the `learner` section of a run config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LearnerConfig:
    """How the learner builds its networks, computes its loss and paces itself."""

    loss: Literal["dqn", "c51", "hl_gauss", "sac"] = "dqn"
    """Discrete actions: "dqn" (double DQN, n-step), "c51" (distributional), "hl_gauss" (HL-Gauss classification); continuous: "sac" (REDQ/RLPD-style ensemble)."""

    network: Literal["auto", "mlp", "cnn"] = "auto"
    """Torso: "mlp" for vectors, "cnn" (Nature DQN) for HxWxC uint8 images; "auto": the CNN for HxWxC images of at least 36x36, else the MLP."""

    hidden_size: int = 256
    """Width of each hidden layer (MLP torso, heads, SAC actor and critics)."""

    num_layers: int = 2
    """Hidden layers of the MLP torso (and of SAC's actor and critics)."""

    layer_norm: bool = False
    """LayerNorm after every hidden layer (RLPD/high-UTD recipes use it; SAC critics always do)."""

    dueling: bool = False
    """Dueling head: Q = V + A - mean(A) (per atom for distributional losses)."""

    batch_size: int = 256
    """Transitions per update."""

    lr: float = 3e-4
    """Adam learning rate (all networks)."""

    gamma: float = 0.99
    """Discount per env step; actors fold it into each transition's n-step `discount` column."""

    td_loss: Literal["huber", "mse"] = "huber"
    """Regression loss of "dqn"."""

    num_bins: int = 51
    """Atoms (C51) or bins (HL-Gauss) of the value distribution."""

    v_min: float = -10.0
    """Lower end of the value support (C51, HL-Gauss); targets are clamped into [v_min, v_max]."""

    v_max: float = 10.0
    """Upper end of the value support."""

    sigma_ratio: float = 0.75
    """HL-Gauss: Gaussian sigma as a multiple of the bin width (0.75 per "Stop Regressing")."""

    target_update: Literal["hard", "soft", "none"] = "hard"
    """Target network: copied every target_update_every updates ("hard"), Polyak-averaged with tau ("soft"), or absent ("none": bootstrap from the online network)."""

    target_update_every: int = 500
    """Updates between hard target copies."""

    tau: float = 0.005
    """Polyak step of soft target updates."""

    max_grad_norm: float | None = 10.0
    """Gradient clipping by global norm; null: none."""

    updates_per_env_step: float = 1.0
    """The update-to-data ratio (UTD), enforced with the replay: the learner waits for data rather than over-train."""

    learning_starts: int = 1000
    """Transitions in replay (all shards) before the first update."""

    priority_eps: float = 1e-3
    """Added to |TD error| to form new priorities (keeps every item sampleable)."""

    publish_every: int = 100
    """Updates between weight publications to the parameter store."""

    checkpoint_every: int = 10_000
    """Updates between learner checkpoints (also written at SIGTERM)."""

    reset_every: int | None = None
    """Updates between periodic resets (Nikishin et al. 2022); null: never."""

    reset_modules: Literal["head", "all"] = "head"
    """What a reset re-initialises, together with its optimizer state: the last layer(s) or every network."""

    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"."""

    prefetch_depth: int = 8
    """Batches the prefetching sampler keeps ready."""

    prefetch_batches_per_request: int = 4
    """Batches drawn per replay round trip by the prefetcher; aim for responses of a few MB: 16 for CartPole-size items, 4 for Atari at batch 32, 1 at batch 256."""

    ensemble_size: int = 10
    """SAC: critics in the ensemble (REDQ uses 10; RLPD 10 with LayerNorm)."""

    ensemble_subset: int = 2
    """SAC: critics the target takes the minimum over, drawn at random per update."""

    init_temperature: float = 1.0
    """SAC: initial entropy temperature (tuned towards -action_dim entropy)."""

    seed: int = 0
    """Seeds network initialisation and the learner's random draws."""

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

        for field in (
            "hidden_size",
            "num_layers",
            "batch_size",
            "target_update_every",
            "publish_every",
            "checkpoint_every",
        ):
            if getattr(self, field) < 1:
                bad(field, "must be >= 1")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if not 0.0 <= self.gamma <= 1.0:
            bad("gamma", "must be in [0, 1]")
        if self.num_bins < 2:
            bad("num_bins", "must be >= 2")
        if not self.v_max > self.v_min:
            bad("v_max", f"must exceed v_min={self.v_min}")
        if not self.sigma_ratio > 0:
            bad("sigma_ratio", "must be > 0")
        if not 0.0 < self.tau <= 1.0:
            bad("tau", "must be in (0, 1]")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            bad("max_grad_norm", "must be > 0, or null")
        if not self.updates_per_env_step > 0:
            bad("updates_per_env_step", "must be > 0")
        if self.learning_starts < 1:
            bad("learning_starts", "must be >= 1")
        if not self.priority_eps > 0:
            bad("priority_eps", "must be > 0")
        if self.reset_every is not None and self.reset_every < 1:
            bad("reset_every", "must be >= 1, or null")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.prefetch_depth < 1 or self.prefetch_batches_per_request < 1:
            bad("prefetch_depth", "prefetch_depth and prefetch_batches_per_request must be >= 1")
        if self.ensemble_size < 2:
            bad("ensemble_size", "must be >= 2")
        if not 1 <= self.ensemble_subset <= self.ensemble_size:
            bad("ensemble_subset", f"must be in [1, ensemble_size={self.ensemble_size}]")
        if not self.init_temperature > 0:
            bad("init_temperature", "must be > 0")

    @property
    def samples_per_insert(self) -> float:
        """The replay ratio that realises the UTD: each update samples batch_size items."""
        return self.updates_per_env_step * self.batch_size


def resolve_device(name: str):
    """A torch.device for "auto" / "cpu" / "cuda[:N]"; "auto" is CUDA when present."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"learner.device={name!r}: CUDA is not available on this machine")
    return device
