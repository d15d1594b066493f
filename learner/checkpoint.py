"""Learner checkpoints: networks, target networks, optimizer state, counters, RNG state and the
`learner.loss` they were trained under (a resume under another loss is refused, not attempted).

One file per checkpoint, `learner-<updates>.pt`, written with `torch.save` to a temporary file,
fsynced and renamed (never half a file in place), and read back with
`torch.load(weights_only=True)`, which unpickles only tensors and plain containers. The three
newest are kept (never the one just written: a learner that starts below older numbers keeps its
own); an unreadable one (truncated, corrupt, or missing what a resume needs) is skipped, with a
warning, for the one before, and renamed aside (`NAME.refused`) so pruning and later resumes no
longer count it. Temporary files of a save killed midway are removed once their writer is gone.
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import re
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch

from replay import create_private_file, private_dir

KEEP = 3
_NAME = re.compile(r"^learner-(\d{12})\.pt$")
_TEMPORARY = re.compile(r"^\.learner-\d{12}\.pt\.tmp-(\d+)$")
REFUSED_SUFFIX = ".refused"
"""Appended to a refused checkpoint's name: kept for inspection, out of the resume and pruning."""
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
        _fsync_directory(directory)  # the rename is durable before older checkpoints go
    finally:
        temporary.unlink(missing_ok=True)
    for _, old in _list(directory)[KEEP:]:
        if old != final:
            old.unlink(missing_ok=True)
    return final


def _fsync_directory(directory: pathlib.Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def sweep_temporaries(directory: pathlib.Path) -> list[pathlib.Path]:
    """Removes the temporary files of saves whose process is gone (killed midway); returns them."""
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and not psutil.pid_exists(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    """The newest good checkpoint in `directory`, and why newer ones were refused (each logged and
    renamed aside to NAME.refused, so that pruning keeps good checkpoints instead of them).
    Temporary files of saves killed midway are removed."""
    found = Found()
    sweep_temporaries(directory)
    for _, path in _list(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = [key for key in REQUIRED if key not in state]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except Exception as exc:  # a damaged file: say so and use the previous one
            reason = f"{path}: {type(exc).__name__}: {str(exc)[:200]}"
            aside = _set_aside(path)
            log.warning("refused learner checkpoint %s; %s; trying the previous one", reason, aside)
            found.refused.append(reason)
            continue
        found.state, found.path = state, path
        return found
    return found


def _set_aside(path: pathlib.Path) -> str:
    """Renames a refused checkpoint to NAME.refused; says what became of it."""
    aside = path.with_name(path.name + REFUSED_SUFFIX)
    try:
        os.replace(path, aside)
    except OSError as exc:  # a read-only directory: it stays, and stays refused
        return f"left in place ({exc.strerror})"
    return f"renamed to {aside.name}"


def has_checkpoints(directory: str | pathlib.Path | None) -> bool:
    """Whether `directory` holds any checkpoint, good or refused (a learner of the run trained)."""
    if directory is None or not pathlib.Path(directory).is_dir():
        return False
    return any(_NAME.match(p.name.removesuffix(REFUSED_SUFFIX)) for p in pathlib.Path(directory).iterdir())


def load_latest(directory: pathlib.Path) -> tuple[dict, pathlib.Path] | None:
    """The newest good checkpoint and its path, or None."""
    found = find(directory)
    return (found.state, found.path) if found.path is not None else None
