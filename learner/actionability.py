"""Phase 1 of Digi-Q: representation fine-tuning with an actionability objective.

Digi-Q (Bai et al. 2025, "Digi-Q: Learning Q-Value Functions for Training Device-Control Agents",
section 4.1) fine-tunes its encoder to predict whether an action changes the screen, so that the
frozen features the Q-function later reads carry what can be acted on. Here: from recorded
(screen, action, next screen) triples, label = the screens differ (more than `change_threshold`
of the pixels moved by more than `pixel_tolerance`); a `SmallEncoder`, an action embedding and a
classifier head are trained together by binary cross-entropy (positives weighted by the class
ratio, since most random clicks change nothing); accuracy is measured on held-out episodes. Only
the encoder is kept, and frozen, afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learner.config import ActionabilityConfig, resolve_device
from learner.encoders import SmallEncoder


def screen_changed(
    obs: np.ndarray, next_obs: np.ndarray, pixel_tolerance: int = 8, change_threshold: float = 0.001
) -> np.ndarray:
    """[N] bool: did each screen change? obs, next_obs: [N, H, W, C] uint8. Computed in chunks,
    so a large dataset needs no int16 copy of itself."""
    changed = np.empty(len(obs), bool)
    for start in range(0, len(obs), 1024):
        a = obs[start : start + 1024].astype(np.int16)
        b = next_obs[start : start + 1024].astype(np.int16)
        moved = (np.abs(a - b) > pixel_tolerance).any(axis=-1)
        changed[start : start + 1024] = moved.reshape(len(a), -1).mean(axis=1) > change_threshold
    return changed


class ActionabilityModel(nn.Module):
    """Encoder + action embedding + classifier head: the logit that action a changes screen s."""

    def __init__(self, obs_shape: tuple[int, int, int], num_actions: int, config: ActionabilityConfig):
        super().__init__()
        self.encoder = SmallEncoder(obs_shape, config.feature_dim)
        self.action_embedding = nn.Embedding(num_actions, config.action_dim)
        self.head = nn.Sequential(nn.Linear(config.feature_dim + config.action_dim, 256), nn.ReLU(), nn.Linear(256, 1))

    def forward(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[B] logits."""
        joint = torch.cat([self.encoder(frames), self.action_embedding(actions)], dim=1)
        return self.head(joint).squeeze(1)


@dataclass(frozen=True)
class ActionabilityResult:
    """A trained phase-1 model and how well it predicts on held-out episodes."""

    model: ActionabilityModel
    train_size: int
    holdout_size: int
    positive_fraction: float
    """Share of all pairs whose screen changed (the majority-class baseline is max(p, 1 - p))."""
    train_accuracy: float
    holdout_accuracy: float
    holdout_balanced_accuracy: float
    """Mean of the held-out accuracy on changed and on unchanged screens."""
    seconds: float

    def summary(self) -> dict[str, float | int]:
        """The figures as JSON values (encoder.json records them)."""
        return {
            "train_size": self.train_size,
            "holdout_size": self.holdout_size,
            "positive_fraction": round(self.positive_fraction, 4),
            "train_accuracy": round(self.train_accuracy, 4),
            "holdout_accuracy": round(self.holdout_accuracy, 4),
            "holdout_balanced_accuracy": round(self.holdout_balanced_accuracy, 4),
            "seconds": round(self.seconds, 2),
        }


Progress = Callable[[int, int, float, float], None]
"""(epoch, epochs, mean training loss, held-out accuracy) after each epoch."""


def _predict(model: ActionabilityModel, frames, actions, index: np.ndarray, device, batch: int) -> np.ndarray:
    out = np.empty(len(index), bool)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(index), batch):
            rows = index[start : start + batch]
            logits = model(torch.from_numpy(frames[rows]).to(device), torch.from_numpy(actions[rows]).to(device))
            out[start : start + batch] = (logits > 0).cpu().numpy()
    model.train()
    return out


def _balanced(predicted: np.ndarray, labels: np.ndarray) -> float:
    rates = [float((predicted[labels == value] == value).mean()) for value in (True, False) if (labels == value).any()]
    return float(np.mean(rates)) if rates else 0.0


def train_actionability(
    obs: np.ndarray,
    actions: np.ndarray,
    next_obs: np.ndarray,
    num_actions: int,
    config: ActionabilityConfig,
    episodes: np.ndarray | None = None,
    progress: Progress | None = None,
) -> ActionabilityResult:
    """Trains encoder + action embedding + head to predict `screen_changed(obs, next_obs)`.

    Args:
        obs, next_obs: [N, H, W, C] uint8 screens before and after each action.
        actions: [N] int action indices in [0, num_actions).
        num_actions: size of the (flat, discrete) action space.
        episodes: [N] the episode of each pair: whole episodes are held out (a screen and its
            successor never sit on both sides); None: pairs are held out one by one.
        progress: called after each epoch.

    Raises:
        ValueError: mismatched lengths, non-image observations, fewer than 2 groups to split.
    """
    started = time.perf_counter()
    if obs.ndim != 4 or obs.dtype != np.uint8 or obs.shape != next_obs.shape or len(actions) != len(obs):
        raise ValueError(
            f"need uint8 screens [N, H, W, C] and N actions; got obs {obs.shape} {obs.dtype}, "
            f"next_obs {next_obs.shape}, actions {np.shape(actions)}"
        )
    actions = np.asarray(actions, np.int64)
    labels = screen_changed(obs, next_obs, config.pixel_tolerance, config.change_threshold)
    groups = np.arange(len(obs)) if episodes is None else np.asarray(episodes)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"{len(unique)} episode(s): need at least 2 to hold some out")
    rng = np.random.default_rng(config.seed)
    held = rng.permutation(unique)[: max(1, round(len(unique) * config.holdout_fraction))]
    is_held = np.isin(groups, held)
    train_index, holdout_index = np.flatnonzero(~is_held), np.flatnonzero(is_held)

    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = ActionabilityModel(tuple(obs.shape[1:]), num_actions, config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    positives = float(labels[train_index].mean()) if len(train_index) else 0.0
    pos_weight = torch.tensor((1 - positives) / positives if 0 < positives < 1 else 1.0, device=device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    targets = labels.astype(np.float32)
    holdout_accuracy = 0.0
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(train_index)
        losses = []
        for start in range(0, len(order), config.batch_size):
            rows = np.sort(order[start : start + config.batch_size])
            logits = model(torch.from_numpy(obs[rows]).to(device), torch.from_numpy(actions[rows]).to(device))
            loss = loss_fn(logits, torch.from_numpy(targets[rows]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        predicted = _predict(model, obs, actions, holdout_index, device, 4 * config.batch_size)
        holdout_accuracy = float((predicted == labels[holdout_index]).mean())
        if progress is not None:
            progress(epoch, config.epochs, float(np.mean(losses)) if losses else 0.0, holdout_accuracy)
    predicted = _predict(model, obs, actions, holdout_index, device, 4 * config.batch_size)
    trained = _predict(model, obs, actions, train_index, device, 4 * config.batch_size)
    model = model.cpu().eval()
    return ActionabilityResult(
        model=model,
        train_size=len(train_index),
        holdout_size=len(holdout_index),
        positive_fraction=float(labels.mean()),
        train_accuracy=float((trained == labels[train_index]).mean()),
        holdout_accuracy=float((predicted == labels[holdout_index]).mean()),
        holdout_balanced_accuracy=_balanced(predicted, labels[holdout_index]),
        seconds=time.perf_counter() - started,
    )
