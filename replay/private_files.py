"""Owner-only files and directories: checkpoints and run folders other users of the machine can't read.

A checkpoint holds the replay data and the networks, and a run folder the run's addresses: they are
written 0600 (files) in 0700 directories, whatever the process's umask. A file gets its mode when
it is created, before any byte is written, so there is no moment it is readable by others.
"""

from __future__ import annotations

import os
import pathlib

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def private_dir(path: pathlib.Path) -> pathlib.Path:
    """Creates `path` (and missing parents) and makes it 0700; returns it.

    Parents that already exist keep their mode: only what this call creates, and `path` itself,
    become owner-only.
    """
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:  # another process made it meanwhile
            pass
        os.chmod(directory, DIRECTORY_MODE)
    os.chmod(path, DIRECTORY_MODE)
    return path


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
