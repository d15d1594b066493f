"""Frozen image encoders for Digi-Q-style learning on features (docs/digiq.md).

A `FrozenEncoder` turns uint8 screenshots [B, H, W, C] into float32 features [B, D] with no
gradient and in eval mode: actors run it once per frame (actors/features.py), so replay and the
learner only ever see the feature vectors. Two kinds:

- `small`: `SmallEncoder`, a three-layer CNN trained by the actionability objective
  (learner/actionability.py) and saved as `encoder.safetensors` + `encoder.json`;
- `transformers`: any Hugging Face vision (or vision-language) model in a local directory
  (learner/hf_encoder.py), features of a selectable hidden layer.

Weights are read from safetensors only: a directory that holds pickle checkpoints (`.bin`, `.pt`,
...) instead is refused, since unpickling runs code.

A frozen encoder's raw features barely vary between screens (a small encoder's LayerNorm output
had a per-dimension std of ~0.006 against values of ~0.8), and learners on them collapse to one
action. So `qfleet encoder train` also saves the per-dimension mean and std of the features over its
training screens (`encoder.json`, `standardise`), and `FrozenEncoder.encode` returns
`(features - mean) / std`: features in replay, in datasets and at acting time are standardised
the same way. A small encoder saved without them (an older `qfleet encoder train`) still loads,
with raw features and one warning.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from learner.errors import EncoderError

log = logging.getLogger(__name__)

SMALL_FORMAT = "qfleet-small-encoder"
"""`format` of a small encoder's encoder.json."""
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "encoder.json"
STANDARDISE_KEY = "standardise"
"""encoder.json's key for the features' per-dimension `mean` and `std` (lists of D floats)."""
MIN_STD = 1e-5
"""A dimension whose std is below this is treated as constant: divided by MIN_STD, not ~0."""
RELATIVE_STD_FLOOR = 0.01
"""No dimension is divided by less than this share of the median std: one that barely varied on
the training screens would otherwise be blown up on new screens."""
STANDARDISED_CLIP = 10.0
"""Standardised features are clipped to +-this (a screen far from the training ones stays finite
and in range)."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files refused: torch.save and `pytorch_model.bin` are pickles."""

INSTRUCTION_VOCAB = 4096
"""Rows of the instruction embedding table; token ids are taken modulo it (actors/ui_actions.py
hashes words into [1, instruction_vocab))."""


class SmallEncoder(nn.Module):
    """A small CNN for HxWxC uint8 screens: three strided 3x3 convolutions, then a linear layer
    and LayerNorm to `feature_dim`. It flattens rather than pools, so features keep where things
    are on the screen: the actionability head has to tell whether a click lands on a button.

    Args:
        obs_shape: (height, width, channels) of the frames.
        feature_dim: D, the length of a feature vector.
        channels: output channels of the three convolutions.
    """

    def __init__(self, obs_shape: tuple[int, int, int], feature_dim: int = 256, channels=(32, 64, 64)):
        super().__init__()
        height, width, depth = obs_shape
        self.obs_shape, self.feature_dim, self.channels = tuple(obs_shape), feature_dim, tuple(channels)
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(depth, out, 3, stride=2, padding=1), nn.ReLU()]
            depth = out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, obs_shape[2], height, width)).shape[1]
        self.project = nn.Sequential(nn.Linear(flat, feature_dim), nn.LayerNorm(feature_dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] uint8 -> [B, D] float32."""
        return self.features_from_map(self.feature_map(frames))

    def feature_map(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] uint8 -> [B, channels[-1], h, w]: the last convolution's output, before it is
        flattened; what a screen grid of features is pooled from (`FrozenEncoder.encode_with_grid`)."""
        return self.conv[:-1](frames.permute(0, 3, 1, 2).float() / 255.0)

    def features_from_map(self, spatial: torch.Tensor) -> torch.Tensor:
        """[B, channels[-1], h, w] `feature_map` output -> [B, D]: the rest of `forward`, so a screen
        grid and the features come from one pass of the convolutions."""
        return self.project(self.conv[-1](spatial))

    def describe(self) -> dict[str, Any]:
        """What encoder.json records to rebuild it."""
        return {
            "format": SMALL_FORMAT,
            "obs_shape": list(self.obs_shape),
            "feature_dim": self.feature_dim,
            "channels": list(self.channels),
        }


class FrozenEncoder:
    """An image encoder with its weights frozen: `encode(frames)` -> features, no gradient.

    Args:
        module: maps a uint8 tensor [B, H, W, C] to float features [B, D] (it preprocesses).
        feature_dim: D.
        name: what it is (shown in logs and errors), e.g. "small encoder at DIR".
        input_shape: the (H, W, C) it was built for; None: any size (it resizes).
        standardise: (mean [D], std [D]) that `encode` standardises the features with; None: raw.
        feature_map: maps the same uint8 frames to a spatial map [B, channels, h, w], for
            `encode_with_grid`; None: the encoder has none (transformers encoders: not built).
        map_channels: the channels of `feature_map`'s output (0 without one).
        features_from_map: maps `feature_map`'s output to what `module` gives (module(frames) ==
            features_from_map(feature_map(frames))), so the convolutions run once for both; with
            `feature_map`.
    """

    def __init__(
        self,
        module: nn.Module,
        feature_dim: int,
        name: str,
        input_shape: tuple[int, ...] | None = None,
        standardise: tuple[np.ndarray, np.ndarray] | None = None,
        feature_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
        map_channels: int = 0,
        features_from_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if (feature_map is None) != (features_from_map is None):
            raise ValueError("feature_map and features_from_map come together (a screen grid needs both)")
        self.module = module.eval().requires_grad_(False)
        self.feature_map, self.map_channels, self.features_from_map = feature_map, map_channels, features_from_map
        self.feature_dim, self.name, self.input_shape = feature_dim, name, input_shape
        self.standardise = None
        if standardise is not None:
            mean, std = (np.asarray(v, np.float32).reshape(feature_dim) for v in standardise)
            floor = max(MIN_STD, RELATIVE_STD_FLOOR * float(np.median(std)))
            self.standardise = (mean, np.maximum(std, floor).astype(np.float32))

    def raw(self, frames: np.ndarray) -> np.ndarray:
        """[B, H, W, C] uint8 frames -> [B, D] float32 features as the module gives them."""
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(frames))).float().numpy()

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """[B, H, W, C] uint8 frames -> [B, D] float32 features, standardised when it has statistics."""
        return self._standardised(self.raw(frames))

    def _standardised(self, features: np.ndarray) -> np.ndarray:
        if self.standardise is None:
            return features
        mean, std = self.standardise
        return np.clip((features - mean) / std, -STANDARDISED_CLIP, STANDARDISED_CLIP)

    def encode_with_grid(self, frames: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """[B, H, W, C] uint8 frames -> (`encode(frames)`, [B, rows, cols, map_channels] float32 grid),
        from one pass of the convolutions. The grid is the encoder's spatial feature map average-pooled
        to `rows` x `cols` cells (torch's adaptive average pooling), so cell (r, c) describes the part
        of the screen a tap at that cell's centre lands on. Raw (not standardised): a cell's values are
        the convolutions' own, and the "spatial" critic learns its scale.

        Raises:
            EncoderError: the encoder has no spatial feature map.
        """
        if self.feature_map is None or self.features_from_map is None:
            raise EncoderError(self.name, "has no spatial feature map for a screen grid (built for the small encoder)")
        with torch.inference_mode():
            spatial = self.feature_map(torch.from_numpy(np.ascontiguousarray(frames)))
            features = self.features_from_map(spatial).float().numpy()
            pooled = nn.functional.adaptive_avg_pool2d(spatial.float(), (rows, cols))
            return self._standardised(features), pooled.permute(0, 2, 3, 1).contiguous().numpy()


def feature_statistics(encoder: FrozenEncoder, frames: np.ndarray, batch: int = 256) -> dict[str, list[float]]:
    """The per-dimension mean and std of `encoder`'s raw features over `frames` (uint8 [N, H, W, C]),
    in batches; what `save_small_encoder(standardise=...)` stores."""
    total = np.zeros(encoder.feature_dim, np.float64)
    squares = np.zeros(encoder.feature_dim, np.float64)
    for start in range(0, len(frames), batch):
        features = encoder.raw(frames[start : start + batch]).astype(np.float64)
        total += features.sum(axis=0)
        squares += np.square(features).sum(axis=0)
    count = max(len(frames), 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return {"mean": mean.tolist(), "std": std.tolist(), "frames": int(len(frames))}


def refuse_pickles(directory: pathlib.Path, wanted: str) -> None:
    """EncoderError unless `directory` exists and holds safetensors weights (`wanted` names them)."""
    if not directory.is_dir():
        raise EncoderError(str(directory), "not a directory")
    if any(directory.glob("*.safetensors")):
        return
    pickles = sorted(path.name for path in directory.iterdir() if path.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise EncoderError(
            str(directory),
            f"holds pickle weights ({', '.join(pickles)}), which are refused (unpickling runs code); "
            f"save the weights as safetensors",
        )
    raise EncoderError(str(directory), f"no {wanted} found")


def save_small_encoder(
    encoder: SmallEncoder,
    directory: str | pathlib.Path,
    extra: dict[str, Any],
    standardise: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Writes `encoder.safetensors` and `encoder.json` (its shape plus `extra`, e.g. how it was
    trained, plus `standardise`: `feature_statistics`' mean and std, when given) into `directory`
    (created). Returns the directory."""
    from safetensors.torch import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in encoder.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    stats = {STANDARDISE_KEY: standardise} if standardise is not None else {}
    (directory / CONFIG_FILE).write_text(json.dumps({**encoder.describe(), **extra, **stats}, indent=2) + "\n")
    return directory


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # a JSON integer too large for a float
        return False


def read_small_config(directory: pathlib.Path) -> dict[str, Any]:
    """A small encoder's encoder.json, checked.

    Raises:
        EncoderError: missing, not JSON, another format, or bad shapes.
    """
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise EncoderError(str(directory), f"{CONFIG_FILE} is missing (not a small encoder's directory?)") from None
    except (OSError, ValueError) as exc:
        raise EncoderError(str(directory), f"{CONFIG_FILE} is unreadable ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != SMALL_FORMAT:
        raise EncoderError(str(directory), f"{CONFIG_FILE}: format is not {SMALL_FORMAT!r}")
    for key, length in (("obs_shape", 3), ("channels", None)):
        value = config.get(key)
        if (
            not isinstance(value, list)
            or not value
            or (length and len(value) != length)
            or not all(isinstance(v, int) and v >= 1 for v in value)
        ):
            raise EncoderError(str(directory), f"{CONFIG_FILE}: {key}={value!r} is not a list of positive integers")
    if not isinstance(config.get("feature_dim"), int) or config["feature_dim"] < 1:
        raise EncoderError(str(directory), f"{CONFIG_FILE}: feature_dim={config.get('feature_dim')!r} must be >= 1")
    stats = config.get(STANDARDISE_KEY)
    if stats is not None:
        for key in ("mean", "std"):
            value = stats.get(key) if isinstance(stats, dict) else None
            if (
                not isinstance(value, list)
                or len(value) != config["feature_dim"]
                or not all(type(v) in (int, float) and _finite(v) for v in value)
                or (key == "std" and min(value) < 0)
            ):
                raise EncoderError(
                    str(directory),
                    f"{CONFIG_FILE}: {STANDARDISE_KEY}.{key} is not a list of feature_dim finite numbers",
                )
    return config


def load_small_encoder(path: str | pathlib.Path, layer: int = -1) -> FrozenEncoder:
    """The small encoder saved in `path` by `qfleet encoder train`, frozen.

    Raises:
        EncoderError: no such directory, pickle weights, a malformed config, weights that do not fit,
            or a `layer` other than -1 (the small encoder has one feature layer).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = pathlib.Path(path)
    if layer != -1:
        raise EncoderError(str(directory), f"layer={layer}: the small encoder has one feature layer (use -1)")
    refuse_pickles(directory, WEIGHTS_FILE)
    config = read_small_config(directory)
    encoder = SmallEncoder(tuple(config["obs_shape"]), config["feature_dim"], tuple(config["channels"]))
    try:
        encoder.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except FileNotFoundError:
        raise EncoderError(str(directory), f"{WEIGHTS_FILE} is missing") from None
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise EncoderError(str(directory), f"{WEIGHTS_FILE} does not fit {CONFIG_FILE} ({exc})") from None
    stats = config.get(STANDARDISE_KEY)
    if stats is None:
        log.warning(
            "small encoder at %s: %s has no feature statistics (%r), so its features are used raw (they barely "
            "vary; learners may collapse): retrain it with this version's `qfleet encoder train`",
            directory,
            CONFIG_FILE,
            STANDARDISE_KEY,
        )
    standardise = (stats["mean"], stats["std"]) if stats is not None else None
    name = f"small encoder at {directory}"
    return FrozenEncoder(
        encoder,
        encoder.feature_dim,
        name,
        encoder.obs_shape,
        standardise,
        encoder.feature_map,
        encoder.channels[-1],
        encoder.features_from_map,
    )


def _load_transformers(path: str | pathlib.Path, layer: int = -1) -> FrozenEncoder:
    from learner.hf_encoder import load_transformers_encoder

    return load_transformers_encoder(path, layer)


ENCODER_LOADERS: dict[str, Callable[..., FrozenEncoder]] = {
    "small": load_small_encoder,
    "transformers": _load_transformers,
}
"""`env.features.encoder` -> the loader of that kind (path, layer) -> FrozenEncoder."""


@functools.lru_cache(maxsize=8)
def load_encoder(kind: str, path: str, layer: int = -1) -> FrozenEncoder:
    """The frozen encoder of `kind` in `path`, loaded once per process: every env of an actor
    shares it (it is frozen, so sharing changes nothing but memory and load time).

    Raises:
        EncoderError: see the kind's loader; an unknown kind.
    """
    if kind not in ENCODER_LOADERS:
        raise EncoderError(path, f"unknown encoder kind {kind!r} (known: {', '.join(ENCODER_LOADERS)})")
    return ENCODER_LOADERS[kind](path, layer)


@functools.lru_cache(maxsize=4)
def _instruction_table(dim: int, seed: int) -> np.ndarray:
    # PCG64 with a fixed seed gives the same table on every machine and numpy version.
    return np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(dim), (INSTRUCTION_VOCAB, dim)).astype(np.float32)


def instruction_embedding(tokens: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """A fixed random bag-of-words embedding of hashed instruction tokens: [B, L] int -> [B, dim]
    float32, the mean of the tokens' rows of a seeded Gaussian table (0 pads and is skipped; an
    empty instruction is the zero vector). Random projections keep distinct instructions apart
    (Johnson-Lindenstrauss) without training, so the Q-function sees the task text."""
    tokens = np.asarray(tokens, np.int64)
    table = _instruction_table(dim, seed)
    mask = (tokens != 0).astype(np.float32)
    rows = table[tokens % INSTRUCTION_VOCAB] * mask[..., None]
    return (rows.sum(axis=-2) / np.maximum(mask.sum(axis=-1, keepdims=True), 1.0)).astype(np.float32)
