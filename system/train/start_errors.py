"""How the driver words a component that did not start: the cause in one line, found in Ray's
error text (a traceback of the component's constructor, then its exception), with secrets out.

A message of several lines ("CUDA error: out of memory" ... "Compile with `TORCH_USE_CUDA_DSA`
...") keeps its cause only in its first line, the exception's header: that is the line shown. The
full text goes to the driver's log at DEBUG (`qfleet -v`)."""

from __future__ import annotations

import os
import re

from replay import redact_url

HEADER_CHARS = 200
"""The most characters of an error's header line the driver shows."""

_FRAME = re.compile(r'^\s+File ".*", line \d+')
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task's name in its error text
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_SECRET_ENVS = ("QFLEET_REDIS_PASSWORD", "QFLEET_REPLAY_TOKEN", "RAY_AUTH_TOKEN")


def error_header(text: str) -> str:
    """The header line of the last exception in `text` (`RuntimeError: CUDA error: out of
    memory`): the first unindented line after the last traceback frame (`  File "...", line N`)
    and its source lines; with no frame, the first unindented line. Cut to HEADER_CHARS; ""
    for a text of blanks."""
    lines = _COLOUR.sub("", text).splitlines()
    frames = [index for index, line in enumerate(lines) if _FRAME.match(line)]
    after = lines[frames[-1] + 1 :] if frames else lines
    header = next((line for line in after if line.strip() and not line[0].isspace()), None)
    if header is None:
        header = next((line for line in lines if line.strip()), "")
    header = header.strip()
    return header if len(header) <= HEADER_CHARS else header[: HEADER_CHARS - 1] + "…"


def redacted(text: str) -> str:
    """`text` safe to show and log: URLs lose their passwords (`replay.redact_url`), and the
    secrets this process holds in its environment (the Redis password, a replay or Ray token)
    become ***."""
    text = _URL.sub(lambda found: redact_url(found.group()), text)
    for name in _SECRET_ENVS:
        secret = os.environ.get(name, "")
        if len(secret) >= 8:  # a blank or trivial value would blank unrelated text
            text = text.replace(secret, "***")
    return text


def named_together(names: list[str]) -> str:
    """Components named in one phrase: "replay shards 1, 3" for "replay shard 1" and "replay
    shard 3", "the learner" alone; names of different kinds joined by commas."""
    if len(names) == 1:
        return names[0]
    numbered = [re.fullmatch(r"(.*) (\d+)", name) for name in names]
    kinds = {found.group(1) for found in numbered if found}
    if all(numbered) and len(kinds) == 1:
        return f"{kinds.pop()}s " + ", ".join(found.group(2) for found in numbered)
    return ", ".join(names)
