"""Owner-only files and directories: checkpoints and run folders other users of the machine can't read.

A checkpoint holds the replay data and the networks, and a run folder the run's addresses: they are
written 0600 (files) in 0700 directories, whatever the process's umask. A file gets its mode when
it is created, before any byte is written, so there is no moment it is readable by others.

A directory that exists already keeps its mode: it may be shared on purpose (a group's checkpoint
folder with setgid, another account's volume), and changing it would break that. One that others
may write into is logged once, as a warning.
"""

from __future__ import annotations

import logging
import os
import pathlib
import stat

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


_warned: set[str] = set()
"""Existing directories already warned about (once per process)."""


def private_dir(path: pathlib.Path) -> pathlib.Path:
    """Creates `path` and its missing parents as 0700 directories; returns it.

    Only directories this call creates are made owner-only: an existing `path` (or parent) keeps
    its mode, and a warning is logged once if group or others may write into it.
    """
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:  # another process made it meanwhile: its mode is its maker's
            continue
        os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode went through the umask
    if not missing:
        _warn_if_writable_by_others(path)
    return path


def _warn_if_writable_by_others(path: pathlib.Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and str(path) not in _warned:
        _warned.add(str(path))
        log.warning(
            "%s is writable by %s (mode %s): its files stay owner-only, but others may add or replace files there",
            path,
            "others" if mode & stat.S_IWOTH else "its group",
            oct(mode),
        )


def create_private_file(path: pathlib.Path) -> None:
    """Creates `path` empty with mode 0600 (truncating an existing one, which becomes 0600 too).

    Writers that take a file name (safetensors, torch) then write into a file that was never
    readable by others.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)
