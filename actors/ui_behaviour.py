"""A behaviour policy for UI tasks that follows the instruction with probability p, else acts at
random: the datasets of mixed quality that Android-in-the-Wild has, made on MiniWoB.

At each step, for each env, independently: with probability `follow_p` the action the task's rule
gives (read from the page's own elements, `info["dom_elements"]`, and the task's fields), else an
action drawn uniformly from the whole UI action space (actors/ui_actions.py). p = 1 is a scripted
expert (as good as the action space allows), p = 0 a uniformly random policy; between them, the
mix of competent and erratic play that offline learners must sort out.

The rules, one per supported task (`INSTRUCTION_RULES`):

    click-button, click-link   tap the button (`<button>`) / link (`span.alink`) whose text is the
                               task's `target` field
    click-dialog               tap the dialog's close button ("x": `ui-dialog-titlebar-close`)
    click-tab                  tap the tab `Tab #<target>`
    focus-text                 tap the text field
    enter-text                 tap the field until it has focus, type the text candidate equal to
                               `target`, then tap Submit; text already in the field that is not the
                               target (random typing) is erased with backspace first

A tap is the grid cell whose centre lies inside the element, the one nearest its centre; when no
cell centre does (an element smaller than a cell, between centres), the cell holding its centre,
which may miss: on a coarse grid the follower cannot reach every element, and its success at
p = 1 says how often. When a rule finds nothing to act on (no element matches, the target is not
a text candidate) the step is random. A task without a rule acts at random on every step
(`InstructionBehaviour.supported` is False; `qfleet record` says so).

enter-text needs what the field holds and whether it has focus. MiniWoB's DOM snapshot carries
both (`value`, the first of `flags`) but one action late (it is read before the browser has
applied the action), so the policy keeps them per env from every action it chose, random ones
included: a tap inside the field's box focuses it and any other tap (or tab) takes the focus
away; while it has focus a type action adds its text and backspace removes a character.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.browser import TASK_HEIGHT, TASK_WIDTH
from actors.ui_actions import UIAction, UIActionSpace


@dataclass
class EpisodeState:
    """What the policy knows of one env's episode beyond the page."""

    field_text: str = ""
    """enter-text: what the text field holds (the DOM snapshot says it a step late)."""
    field_focused: bool = False
    """enter-text: whether the text field has focus (likewise)."""
    followed: int = 0
    """Steps whose action followed the instruction."""
    random: int = 0
    """Steps whose action was random (by the coin, or because no rule applied)."""


Rule = Callable[[dict[str, Any], EpisodeState, UIActionSpace], UIAction | None]
"""(info, episode state, action space) -> the action that follows the instruction, or None."""


# -- reading the page -------------------------------------------------------------------------------


def _target(info: dict[str, Any]) -> str | None:
    return dict(info.get("fields") or ()).get("target")


def _elements(info: dict[str, Any], tag: str, text: str | None = None, classes: str = "") -> list[dict]:
    return [
        e
        for e in info.get("dom_elements") or ()
        if e["tag"].lower() == tag
        and (text is None or e["text"] == text)
        and (not classes or classes in str(e["classes"]).split())
    ]


def _box(element: dict) -> tuple[float, float, float, float]:
    """An element's (left, top, right, bottom), normalised to the task area and clipped to it."""
    left, top = float(element["left"][0]), float(element["top"][0])
    right, bottom = left + float(element["width"][0]), top + float(element["height"][0])
    left, right = max(left, 0.0) / TASK_WIDTH, min(right, TASK_WIDTH) / TASK_WIDTH
    top, bottom = max(top, 0.0) / TASK_HEIGHT, min(bottom, TASK_HEIGHT) / TASK_HEIGHT
    return left, top, right, bottom


def tap_inside(element: dict, space: UIActionSpace) -> UIAction:
    """The tap on `element` (a MiniWoB DOM element): at the grid cell centre inside its box nearest
    its centre, else (no cell centre inside) at the cell holding its centre."""
    left, top, right, bottom = _box(element)

    def nearest_centre(low: float, high: float, cells: int) -> float:
        middle = (low + high) / 2
        inside = [(k + 0.5) / cells for k in range(cells) if low < (k + 0.5) / cells < high]
        return min(inside, key=lambda c: abs(c - middle)) if inside else middle

    return UIAction("tap", nearest_centre(left, right, space.grid_cols), nearest_centre(top, bottom, space.grid_rows))


def _tap_first(elements: list[dict], space: UIActionSpace) -> UIAction | None:
    return tap_inside(elements[0], space) if elements else None


def _type_index(space: UIActionSpace, text: str, candidates: Sequence[str]) -> int | None:
    for index in space.indices("type"):
        if space.decode(index).typed(candidates) == text:
            return int(index)
    return None


# -- the rules --------------------------------------------------------------------------------------


def click_button(info: dict[str, Any], state: EpisodeState, space: UIActionSpace) -> UIAction | None:
    return _tap_first(_elements(info, "button", _target(info)), space)


def click_link(info: dict[str, Any], state: EpisodeState, space: UIActionSpace) -> UIAction | None:
    return _tap_first(_elements(info, "span", _target(info), classes="alink"), space)


def click_dialog(info: dict[str, Any], state: EpisodeState, space: UIActionSpace) -> UIAction | None:
    return _tap_first(_elements(info, "button", classes="ui-dialog-titlebar-close"), space)


def click_tab(info: dict[str, Any], state: EpisodeState, space: UIActionSpace) -> UIAction | None:
    return _tap_first(_elements(info, "a", f"Tab #{_target(info)}"), space)


def focus_text(info: dict[str, Any], state: EpisodeState, space: UIActionSpace) -> UIAction | None:
    return _tap_first(_elements(info, "input_text"), space)


def enter_text(info: dict[str, Any], state: EpisodeState, space: UIActionSpace) -> UIAction | None:
    target, fields, submits = _target(info), _elements(info, "input_text"), _elements(info, "button", "Submit")
    if not target or not fields or not submits:
        return None
    if state.field_text == target:
        return tap_inside(submits[0], space)
    if not state.field_focused:
        return tap_inside(fields[0], space)
    if state.field_text:  # random typing left something else: erase it (one character a step)
        return UIAction("key", key="backspace") if "backspace" in space.keys else None
    index = _type_index(space, target, info.get("text_candidates") or ())
    return None if index is None else space.decode(index)


INSTRUCTION_RULES: dict[str, Rule] = {
    "click-button": click_button,
    "click-link": click_link,
    "click-dialog": click_dialog,
    "click-tab": click_tab,
    "focus-text": focus_text,
    "enter-text": enter_text,
}
"""MiniWoB task -> how it is followed (see the module docstring)."""


# -- the policy -------------------------------------------------------------------------------------


class InstructionBehaviour:
    """Chooses the actions of one env vector: the task's rule with probability `follow_p` per step,
    else a uniformly random action.

    Args:
        task: the MiniWoB task name ("click-button"); one without a rule in `INSTRUCTION_RULES` acts at random.
        space: the envs' UI action space (`BrowserGymEnv.ui_actions`).
        num_envs: envs in the vector.
        follow_p: probability of following the instruction on a step, in [0, 1].
        seed: seeds the coin and the random actions.

    Raises:
        ValueError: follow_p outside [0, 1], num_envs < 1.
    """

    version = 0
    """The policy version stamped on recorded episodes (a fixed policy: 0)."""

    def __init__(self, task: str, space: UIActionSpace, num_envs: int, follow_p: float, seed: int = 0):
        if not 0.0 <= follow_p <= 1.0:
            raise ValueError(f"follow_p={follow_p}: must be in [0, 1]")
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}: must be >= 1")
        self.rule: Rule | None = INSTRUCTION_RULES.get(task)
        self.task, self.space, self.follow_p = task, space, follow_p
        self.rng = np.random.default_rng(seed)
        self.states = [EpisodeState() for _ in range(num_envs)]

    @property
    def supported(self) -> bool:
        """Whether the task has a rule (without one every step is random)."""
        return self.rule is not None

    @property
    def epsilon(self) -> float:
        """The probability of a random action on a step (1 - follow_p; every step without a rule)."""
        return 1.0 - self.follow_p if self.rule is not None else 1.0

    def act(self, obs: np.ndarray | None, infos: Sequence[dict[str, Any]], starts: Sequence[bool]) -> np.ndarray:
        """One action index per env.

        Args:
            obs: the observations (unused: the page's elements say more; kept so the policy is a
                recording's `VectorActions`, system/datasets/recorder.py).
            infos: each env's info for the observation it acts on (`EnvVector.infos`).
            starts: the envs whose observation begins a new episode (their state is reset).
        """
        actions = np.empty(len(self.states), np.int64)
        for i, info in enumerate(infos):
            if starts[i]:
                self.states[i] = EpisodeState()
            state = self.states[i]
            chosen = None
            if self.rule is not None and self.rng.random() < self.follow_p:
                chosen = self.rule(info, state, self.space)
            if chosen is None:
                actions[i] = self.rng.integers(self.space.n)
                state.random += 1
            else:
                actions[i] = self.space.encode(chosen)
                state.followed += 1
            self._update_field(info, state, int(actions[i]))
        return actions

    def episode_metadata(self, env: int) -> dict[str, Any]:
        """What an episode's metadata says of how env `env`'s episode was played so far."""
        state = self.states[env]
        return {"follow_p": self.follow_p, "followed_steps": state.followed, "random_steps": state.random}

    def _update_field(self, info: dict[str, Any], state: EpisodeState, index: int) -> None:
        """enter-text: what the chosen action does to the field's focus and text."""
        if self.rule is not enter_text:
            return
        fields = _elements(info, "input_text")
        if not fields:
            return
        action = self.space.decode(index)
        if action.kind == "tap":
            left, top, right, bottom = _box(fields[0])
            state.field_focused = left < action.x < right and top < action.y < bottom
        elif action.kind == "key" and action.key == "tab":
            state.field_focused = False
        elif state.field_focused and action.kind == "type":
            state.field_text += action.typed(info.get("text_candidates") or ())
        elif state.field_focused and action.kind == "key" and action.key == "backspace":
            state.field_text = state.field_text[:-1]
