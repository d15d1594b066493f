"""Learner checkpoints: networks, target networks, optimizer state, counters and RNG state.

One file per checkpoint, `learner-<updates>.pt`, written with `torch.save` to a temporary file,
fsynced and renamed (never half a file in place), and read back with
`torch.load(weights_only=True)`, which unpickles only tensors and plain containers. The three
newest are kept; an unreadable one (truncated, corrupt, or missing what a resume needs) is
skipped, with a warning, for the one before.
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from replay import create_private_file, private_dir

KEEP = 3
_NAME = re.compile(r"^learner-(\d{12})\.pt$")
log = logging.getLogger(__name__)


def rng_state(numpy_rng: np.random.Generator) -> dict:
    """Every RNG the learner draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_rng.bit_generator.state,
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, numpy_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    numpy_rng.bit_generator.state = state["numpy"]
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: pathlib.Path, state: dict, updates: int) -> pathlib.Path:
    """Writes `state` atomically as the checkpoint of update `updates`, owner-only (0600 in a 0700
    directory); prunes old ones."""
    private_dir(directory)
    final = directory / f"learner-{updates:012d}.pt"
    temporary = directory / f".{final.name}.tmp-{os.getpid()}"
    try:
        create_private_file(temporary)
        torch.save(state, temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    for _, old in _list(directory)[KEEP:]:
        old.unlink(missing_ok=True)
    return final


def _list(directory: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    if not directory.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))), reverse=True)


@dataclass
class Found:
    """What `find` found in a checkpoint directory."""

    state: dict | None = None
    """The newest good checkpoint's contents (None: no good one)."""
    path: pathlib.Path | None = None
    refused: list[str] = field(default_factory=list)
    """Why each newer checkpoint was skipped ("PATH: why")."""


REQUIRED = ("agent", "counters", "rng")
"""Keys a checkpoint must hold to be resumed from."""


def find(directory: pathlib.Path) -> Found:
    """The newest good checkpoint in `directory`, and why newer ones were refused (each logged)."""
    found = Found()
    for _, path in _list(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = [key for key in REQUIRED if key not in state]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except Exception as exc:  # a damaged file: say so and use the previous one
            reason = f"{path}: {type(exc).__name__}: {str(exc)[:200]}"
            log.warning("refused learner checkpoint %s; trying the previous one", reason)
            found.refused.append(reason)
            continue
        found.state, found.path = state, path
        return found
    return found


def load_latest(directory: pathlib.Path) -> tuple[dict, pathlib.Path] | None:
    """The newest good checkpoint and its path, or None."""
    found = find(directory)
    return (found.state, found.path) if found.path is not None else None
