"""One UI action space for web pages (MiniWoB) and Android: a flat Discrete index, decoded.

Device-control agents (DigiRL, Digi-Q) act on screens with a few kinds of action; here they are
one `gymnasium.spaces.Discrete(n)`, so DQN-family losses and the offline losses use it as they
use any other discrete space. The indices, in order:

    tap     grid_rows x grid_cols cells of the screen, row-major: index row * grid_cols + col taps
            the centre of that cell, ((col + 0.5) / grid_cols, (row + 0.5) / grid_rows) in [0, 1]^2
    swipe   one per direction in `swipes`, named by the finger's way ("up": bottom to top, which
            shows what is further down; on a web page, the mouse wheel that does the same)
    type    one per fixed string in `texts`, then `text_slots` per-episode candidates
            (`text_candidates`: the task's fields, then quoted phrases and words of the instruction)
    key     one per name in `keys` ("enter", "backspace", "tab", "escape", "back", "home")
    complete  "the task is done" (Android; a web task ends by itself), when `complete` is on

Each platform maps a decoded `UIAction` onto its own actions (actors/browser.py onto MiniWoB's
CLICK_COORDS / SCROLL_*_COORDS / PRESS_KEY / TYPE_TEXT, actors/android.py onto android_env touches
and adb calls) and refuses the kinds it lacks when the env is built.

Observations are the screenshot (uint8 HxWx3) as the env's Box observation, with the instruction in
`info["instruction"]` and, as a fixed-length int32 array replay can store as a column,
`info["instruction_tokens"]` (`instruction_tokens`: hashed word ids, 0 = padding).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np

from learner import ActionLayout

KINDS = ("tap", "swipe", "type", "key", "complete")
"""Action kinds, in index order; `UIActionSpace.kind_ids` numbers each index by this tuple."""
SWIPE_DIRECTIONS = ("up", "down", "left", "right")
KEY_NAMES = ("enter", "backspace", "tab", "escape", "back", "home")


@dataclass(frozen=True)
class UIAction:
    """A decoded action.

    Attributes:
        kind: one of KINDS.
        x, y: tap: the normalised point (0..1, from the left and the top of the screen).
        direction: swipe: one of SWIPE_DIRECTIONS.
        text: type: a fixed string (empty for a candidate slot).
        slot: type: the candidate slot (-1 for a fixed string).
        key: key: one of KEY_NAMES.
    """

    kind: Literal["tap", "swipe", "type", "key", "complete"]
    x: float = 0.5
    y: float = 0.5
    direction: str = ""
    text: str = ""
    slot: int = -1
    key: str = ""

    def typed(self, candidates: Sequence[str]) -> str:
        """The string a type action types: its fixed text, or its slot's candidate ("" if none)."""
        if self.slot < 0:
            return self.text
        return candidates[self.slot] if self.slot < len(candidates) else ""


class UIActionSpace:
    """The flat index space of one configuration (see the module docstring for the layout).

    Raises:
        ValueError: a grid smaller than 1x1, an unknown swipe direction or key, an empty text.
    """

    def __init__(
        self,
        grid_rows: int,
        grid_cols: int,
        swipes: Sequence[str] = (),
        texts: Sequence[str] = (),
        text_slots: int = 0,
        keys: Sequence[str] = (),
        complete: bool = False,
    ):
        if grid_rows < 1 or grid_cols < 1:
            raise ValueError(f"grid {grid_rows}x{grid_cols}: needs at least one row and one column")
        for name, given, known in (("swipes", swipes, SWIPE_DIRECTIONS), ("keys", keys, KEY_NAMES)):
            unknown = [item for item in given if item not in known]
            if unknown or len(set(given)) != len(given):
                raise ValueError(f"{name}={list(given)!r}: each must be one of {', '.join(known)}, once")
        if any(not text for text in texts):
            raise ValueError("texts: empty strings cannot be typed")
        if text_slots < 0:
            raise ValueError(f"text_slots={text_slots}: must be >= 0")
        self.grid_rows, self.grid_cols = grid_rows, grid_cols
        self.swipes, self.texts, self.keys = tuple(swipes), tuple(texts), tuple(keys)
        self.text_slots, self.complete = text_slots, complete
        self.actions: list[UIAction] = [
            UIAction("tap", (col + 0.5) / grid_cols, (row + 0.5) / grid_rows)
            for row in range(grid_rows)
            for col in range(grid_cols)
        ]
        self.actions += [UIAction("swipe", direction=name) for name in self.swipes]
        self.actions += [UIAction("type", text=text) for text in self.texts]
        self.actions += [UIAction("type", slot=slot) for slot in range(text_slots)]
        self.actions += [UIAction("key", key=name) for name in self.keys]
        if complete:
            self.actions.append(UIAction("complete"))
        self.kind_ids = np.array([KINDS.index(action.kind) for action in self.actions], np.int8)
        """Per index, its kind's place in KINDS (for heads that score kinds apart)."""

    @property
    def n(self) -> int:
        """How many actions there are."""
        return len(self.actions)

    def gym_space(self) -> gym.spaces.Discrete:
        return gym.spaces.Discrete(self.n)

    def decode(self, index: int) -> UIAction:
        """The action at `index` (IndexError outside 0..n-1)."""
        index = int(index)
        if not 0 <= index < self.n:
            raise IndexError(f"action {index} outside 0..{self.n - 1}")
        return self.actions[index]

    def tap_index(self, x: float, y: float) -> int:
        """The index of the tap whose cell holds the normalised point (x, y) (clipped to the screen)."""
        col = min(self.grid_cols - 1, max(0, int(x * self.grid_cols)))
        row = min(self.grid_rows - 1, max(0, int(y * self.grid_rows)))
        return row * self.grid_cols + col

    def encode(self, action: UIAction) -> int:
        """The index of a decoded action (a tap: the cell holding its point).

        Raises:
            ValueError: an action this space does not have.
        """
        if action.kind == "tap":
            return self.tap_index(action.x, action.y)
        for index, candidate in enumerate(self.actions):
            if action.kind != "tap" and candidate == action:
                return index
        raise ValueError(f"{action} is not in this action space")

    def layout(self) -> ActionLayout:
        """This space's structure for the learner's heads that use it (the action-embedding critic,
        the factored policy): the kinds it has, each index's kind and each tap's point."""
        kinds = tuple(kind for kind in KINDS if any(action.kind == kind for action in self.actions))
        return ActionLayout(
            kinds=kinds,
            kind_of=tuple(kinds.index(action.kind) for action in self.actions),
            points=tuple((action.x, action.y) if action.kind == "tap" else (0.0, 0.0) for action in self.actions),
        )

    def indices(self, kind: str) -> np.ndarray:
        """The indices of every action of `kind`."""
        return np.flatnonzero(self.kind_ids == KINDS.index(kind))


_QUOTED = re.compile(r"\"([^\"]+)\"|'([^']+)'|“([^”]+)”")
_WORD = re.compile(r"\w+")


def text_candidates(instruction: str, fields: Sequence[tuple[str, str]] = (), slots: int = 4) -> list[str]:
    """What the `slots` type-candidate actions of an episode type, at most `slots` distinct strings.

    In order: the values of the task's fields (MiniWoB extracts them from the instruction, e.g.
    enter-text's `target`), then the quoted phrases of the instruction, then its words of three or
    more characters; shorter lists leave the last slots empty (typing nothing).
    """
    found: list[str] = []
    values = [str(value) for _, value in fields]
    quoted = [next(group for group in match.groups() if group) for match in _QUOTED.finditer(instruction)]
    words = [word for word in _WORD.findall(instruction) if len(word) >= 3]
    for text in (*values, *quoted, *words):
        if text and text not in found:
            found.append(text)
        if len(found) == slots:
            break
    return found


def instruction_tokens(instruction: str, length: int = 32, vocab_size: int = 4096) -> np.ndarray:
    """The instruction as a fixed-length int32 array of hashed word ids (a replay column).

    Words are lower-cased runs of letters and digits; each becomes 1 + crc32(word) % (vocab_size - 1)
    (crc32: the same id in every process, unlike Python's salted `hash`); 0 pads to `length` and
    words past it are dropped. The order is kept, so a sequence encoder and a bag of words can
    both read it.
    """
    if length < 1 or vocab_size < 2:
        raise ValueError(f"length={length}, vocab_size={vocab_size}: need length >= 1 and vocab_size >= 2")
    tokens = np.zeros(length, np.int32)
    words = _WORD.findall(instruction.lower())[:length]
    for i, word in enumerate(words):
        tokens[i] = 1 + zlib.crc32(word.encode()) % (vocab_size - 1)
    return tokens
