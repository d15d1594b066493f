"""A Hugging Face `transformers` vision (or vision-language) model from a local directory as a
frozen encoder: features are one hidden layer's states, mean-pooled over tokens (or over space,
for convolutional models).

Nothing is downloaded: `from_pretrained(path, local_files_only=True, use_safetensors=True,
trust_remote_code=False)` with `HF_HUB_OFFLINE=1`, and a directory that holds only pickle weights
(`pytorch_model.bin`, ...) is refused before transformers sees it. Vision-language models
(CLIP, SigLIP, ...) are read through their `vision_model` (or `vision_tower`): only the image
side runs.
"""

from __future__ import annotations

import json
import os
import pathlib

import torch
from torch import nn

from learner.encoders import FrozenEncoder, refuse_pickles
from learner.errors import EncoderError

VISION_PARTS = ("vision_model", "vision_tower")
"""Attributes of a vision-language model that hold its image encoder, tried in this order."""


def _image_size(config) -> int | None:
    for holder in (config, getattr(config, "vision_config", None)):
        size = getattr(holder, "image_size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, list | tuple) and size:
            return int(size[0])
    return None


def _normalisation(directory: pathlib.Path) -> tuple[list[float], list[float]]:
    """image_mean and image_std of the model's preprocessor_config.json (JSON only); 0.5 if none."""
    try:
        processor = json.loads((directory / "preprocessor_config.json").read_text())
        return list(map(float, processor["image_mean"])), list(map(float, processor["image_std"]))
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


class HiddenLayerFeatures(nn.Module):
    """uint8 frames [B, H, W, C] -> hidden_states[layer] mean-pooled, [B, hidden]: resized to the
    model's image size, scaled to [0, 1] and normalised as its preprocessor says."""

    def __init__(self, vision: nn.Module, layer: int, image_size: int | None, mean, std):
        super().__init__()
        self.vision, self.layer, self.image_size = vision, layer, image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = frames.permute(0, 3, 1, 2).float() / 255.0
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        if self.image_size is not None and tuple(pixels.shape[2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            pixels = nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        output = self.vision(pixel_values=(pixels - self.mean) / self.std, output_hidden_states=True)
        hidden = output.hidden_states[self.layer]
        return hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden.mean(dim=1)


def load_transformers_encoder(path: str | pathlib.Path, layer: int = -1) -> FrozenEncoder:
    """The model saved in directory `path` (`save_pretrained`), frozen, in eval mode, features of
    `hidden_states[layer]` (0: the embeddings, -1: the last layer; Python indexing).

    Raises:
        EncoderError: not a directory, pickle weights only, a model transformers cannot load from
            it, one without hidden states for pixel values, or a layer it does not have.
    """
    directory = pathlib.Path(path)
    refuse_pickles(directory, "*.safetensors weights")
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: local_files_only already forbids fetching
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModel.from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        raise EncoderError(str(directory), f"transformers cannot load it ({type(exc).__name__}: {exc})") from None
    vision = next((getattr(model, part) for part in VISION_PARTS if hasattr(model, part)), model)
    features = HiddenLayerFeatures(vision, layer, _image_size(model.config), *_normalisation(directory))
    features.eval().requires_grad_(False)
    side = features.image_size or 32
    try:
        with torch.inference_mode():
            probe = features(torch.zeros(1, side, side, 3, dtype=torch.uint8))
    except IndexError:
        count = _count_hidden_states(features)
        raise EncoderError(str(directory), f"layer={layer}: the model has {count} hidden states") from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise EncoderError(str(directory), f"not a vision model taking pixel_values ({exc})") from None
    name = f"transformers {type(model).__name__} at {directory}, layer {layer}"
    return FrozenEncoder(features, int(probe.shape[1]), name)


def _count_hidden_states(features: HiddenLayerFeatures) -> int | str:
    side = features.image_size or 32
    pixels = torch.zeros(1, 3, side, side)
    try:
        with torch.inference_mode():
            return len(features.vision(pixel_values=pixels, output_hidden_states=True).hidden_states)
    except Exception:  # noqa: BLE001 - only for the message
        return "fewer"
