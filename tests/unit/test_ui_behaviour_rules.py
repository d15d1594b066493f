"""The instruction behaviour's arithmetic on pages written out by hand (the shapes MiniWoB's
`dom_elements` have): taps land inside the element, enter-text's steps and its account of random
typing, and the coin: p of the steps follow, the rest are uniform over the whole action space.
The same policy in real Chromium: tests/integration/test_ui_behaviour.py."""

from __future__ import annotations

import numpy as np
import pytest

from actors import INSTRUCTION_RULES, InstructionBehaviour, UIAction, UIActionSpace

SPACE = UIActionSpace(12, 10, swipes=("up", "down"), text_slots=4, keys=("enter", "backspace", "tab"))
"""The default env.browser action space: 120 taps (16 x 17.5-pixel cells), 2 swipes, 4 slots, 3 keys."""


def element(tag: str, left: float, top: float, width: float, height: float, text: str = "", classes: str = ""):
    box = {"left": left, "top": top, "width": width, "height": height}
    box = {key: np.array([value], np.float32) for key, value in box.items()}
    return {"tag": tag, "text": text, "classes": classes, "flags": np.zeros(4, np.int8), **box}


def click_button_page(target: str = "submit") -> dict:
    buttons = [element("button", 2, 95, 61, 21, "Cancel"), element("button", 2, 116, 62, 21, target)]
    return {"fields": [("target", target)], "dom_elements": [element("div", 0, 0, 160, 210), *buttons]}


def enter_text_page(target: str = "Marcella") -> dict:
    return {
        "fields": [("target", target)],
        "text_candidates": [target, "Enter", "into", "the"],
        "dom_elements": [element("input_text", 3, 61, 128, 21), element("button", 3, 93, 101, 31, "Submit")],
    }


def inside(action: UIAction, elem: dict) -> bool:
    x, y = action.x * 160, action.y * 210
    left, top = float(elem["left"][0]), float(elem["top"][0])
    return left < x < left + float(elem["width"][0]) and top < y < top + float(elem["height"][0])


def test_click_button_taps_inside_the_named_button():
    page = click_button_page("submit")
    behaviour = InstructionBehaviour("click-button", SPACE, 1, follow_p=1.0)
    tap = SPACE.decode(behaviour.act(None, [page], [True])[0])
    assert tap.kind == "tap" and inside(tap, page["dom_elements"][2]) and not inside(tap, page["dom_elements"][1])


def test_a_link_between_row_centres_is_tapped_inside_when_a_cell_centre_fits_and_nearest_otherwise():
    # Rows are 17.5 px: centres at 8.75, 26.25, ..., 61.25, 78.75, 96.25. A link on 74..85 holds 78.75;
    # one on 85..96 holds none (the tap goes to the cell of its centre, 96.25: just below it).
    reachable = element("span", 60, 74, 30, 11, "amet.", classes="alink")
    unreachable = element("span", 60, 85, 30, 11, "amet.", classes="alink")
    for link, hit in ((reachable, True), (unreachable, False)):
        page = {"fields": [("target", "amet.")], "dom_elements": [link]}
        action = SPACE.decode(InstructionBehaviour("click-link", SPACE, 1, 1.0).act(None, [page], [True])[0])
        assert inside(action, link) is hit
    fine = UIActionSpace(42, 32)  # 5-pixel cells: every link is reachable
    page = {"fields": [("target", "amet.")], "dom_elements": [unreachable]}
    assert inside(
        fine.decode(InstructionBehaviour("click-link", fine, 1, 1.0).act(None, [page], [True])[0]), unreachable
    )


def test_enter_text_taps_the_field_types_the_target_then_taps_submit_and_erases_random_typing_first():
    page = enter_text_page("Marcella")
    field, submit = page["dom_elements"]
    behaviour = InstructionBehaviour("enter-text", SPACE, 1, follow_p=1.0)
    steps = [SPACE.decode(behaviour.act(None, [page], [t == 0])[0]) for t in range(3)]
    assert inside(steps[0], field) and steps[1] == UIAction("type", slot=0) and inside(steps[2], submit)

    # A random "Enter" typed into the focused field (slot 1) must be erased (5 backspaces) before the target.
    behaviour = InstructionBehaviour("enter-text", SPACE, 1, follow_p=1.0)
    assert inside(SPACE.decode(behaviour.act(None, [page], [True])[0]), field)
    behaviour._update_field(page, behaviour.states[0], SPACE.encode(UIAction("type", slot=1)))
    assert behaviour.states[0].field_text == "Enter"
    steps = [SPACE.decode(behaviour.act(None, [page], [False])[0]) for _ in range(7)]
    assert steps[:5] == [UIAction("key", key="backspace")] * 5
    assert steps[5] == UIAction("type", slot=0) and inside(steps[6], submit)

    # Typing after a tap elsewhere goes nowhere: the field keeps its text.
    state = behaviour.states[0]
    behaviour._update_field(page, state, SPACE.tap_index(0.95, 0.95))
    behaviour._update_field(page, state, SPACE.encode(UIAction("type", slot=2)))
    assert not state.field_focused and state.field_text == "Marcella"


def test_a_new_episode_forgets_the_last_ones_field():
    page = enter_text_page()
    behaviour = InstructionBehaviour("enter-text", SPACE, 2, follow_p=1.0)
    behaviour.act(None, [page, page], [True, True])  # tap the field
    behaviour.act(None, [page, page], [False, False])  # type
    assert all(s.field_text == "Marcella" for s in behaviour.states)
    first = behaviour.act(None, [page, page], [True, False])
    assert SPACE.decode(first[0]).kind == "tap" and SPACE.decode(first[1]).kind == "tap"  # new: tap field; old: Submit
    assert behaviour.states[0].field_text == "" and behaviour.states[1].field_text == "Marcella"


@pytest.mark.parametrize("follow_p", [0.0, 0.7])
def test_a_step_follows_with_probability_p_and_is_otherwise_uniform_over_every_action(follow_p):
    page = click_button_page()
    behaviour = InstructionBehaviour("click-button", SPACE, 1, follow_p=follow_p, seed=3)
    followed = SPACE.tap_index(*_centre_of_rule(page))
    n = 40_000
    actions = np.array([behaviour.act(None, [page], [True])[0] for _ in range(n)])
    counts = np.bincount(actions, minlength=SPACE.n)
    # The followed tap's count is p * n + (1 - p) * n / SPACE.n; every other action (1 - p) * n / SPACE.n.
    random_share = (1 - follow_p) * n / SPACE.n
    q = follow_p + (1 - follow_p) / SPACE.n
    assert counts[followed] == pytest.approx(q * n, abs=5 * np.sqrt(n * q * (1 - q)))
    others = np.delete(counts, followed)
    chi2 = ((others - random_share) ** 2 / random_share).sum()  # SPACE.n - 2 degrees of freedom
    assert chi2 < SPACE.n + 4 * np.sqrt(2 * SPACE.n), chi2  # 4 standard deviations above its mean
    assert behaviour.epsilon == pytest.approx(1 - follow_p)
    assert behaviour.episode_metadata(0)["follow_p"] == follow_p


def _centre_of_rule(page: dict) -> tuple[float, float]:
    action = INSTRUCTION_RULES["click-button"](page, None, SPACE)
    return action.x, action.y


def test_a_task_without_a_rule_acts_at_random_every_step():
    behaviour = InstructionBehaviour("click-checkboxes", SPACE, 1, follow_p=1.0)
    assert not behaviour.supported and behaviour.epsilon == 1.0
    for _ in range(20):
        behaviour.act(None, [click_button_page()], [False])
    assert behaviour.episode_metadata(0)["random_steps"] == 20 and behaviour.episode_metadata(0)["followed_steps"] == 0


def test_follow_p_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match=r"follow_p=1.5: must be in \[0, 1\]"):
        InstructionBehaviour("click-button", SPACE, 1, follow_p=1.5)
