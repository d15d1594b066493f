"""The shared UI action space: its index layout, encode/decode, text candidates and instruction tokens."""

from __future__ import annotations

import numpy as np
import pytest

from actors.ui_actions import UIAction, UIActionSpace, instruction_tokens, text_candidates


def test_indices_run_taps_swipes_texts_slots_keys_complete_in_that_order():
    space = UIActionSpace(2, 3, swipes=["up", "down"], texts=["hi"], text_slots=2, keys=["enter"], complete=True)
    assert space.n == 6 + 2 + 1 + 2 + 1 + 1 and space.gym_space().n == space.n
    assert [space.decode(i).kind for i in range(6, space.n)] == ["swipe"] * 2 + ["type"] * 3 + ["key", "complete"]
    assert space.decode(4) == UIAction("tap", x=(1 + 0.5) / 3, y=(1 + 0.5) / 2)  # row 1, column 1
    assert space.decode(8).text == "hi" and space.decode(9).slot == 0 and space.decode(10).slot == 1
    assert list(space.indices("type")) == [8, 9, 10]
    for index in range(space.n):
        assert space.encode(space.decode(index)) == index
    with pytest.raises(IndexError, match="outside 0..12"):
        space.decode(13)


def test_a_tap_anywhere_in_a_cell_encodes_to_that_cell_and_off_screen_points_clip():
    space = UIActionSpace(4, 5)
    assert space.tap_index(0.0, 0.0) == 0 and space.tap_index(0.99, 0.99) == 19
    assert space.tap_index(0.41, 0.26) == 1 * 5 + 2 and space.tap_index(1.5, -0.2) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid_rows": 0}, "at least one row"),
        ({"swipes": ["sideways"]}, "swipes=.*one of up, down, left, right"),
        ({"keys": ["enter", "enter"]}, "keys=.*once"),
        ({"texts": [""]}, "empty strings"),
    ],
)
def test_bad_layouts_are_refused_with_the_setting_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UIActionSpace(**{"grid_rows": 2, "grid_cols": 2, **kwargs})


def test_candidates_are_fields_then_quoted_phrases_then_words_and_slots_type_them():
    instruction = 'Enter "Ann Lee" into the field and press Submit.'
    assert text_candidates(instruction, [("target", "Ann Lee")], slots=3) == ["Ann Lee", "Enter", "Ann"]
    assert text_candidates("Find 'red shoes'", (), slots=2) == ["red shoes", "Find"]
    assert text_candidates("Go", (), slots=4) == []  # short words are not candidates
    slot = UIAction("type", slot=1)
    assert slot.typed(["a", "b"]) == "b" and slot.typed(["a"]) == ""  # an empty slot types nothing


def test_instruction_tokens_are_stable_hashed_ids_padded_with_zeros():
    tokens = instruction_tokens("Click on the OK button", length=8, vocab_size=100)
    assert tokens.dtype == np.int32 and tokens.shape == (8,)
    assert (tokens[:5] >= 1).all() and (tokens[:5] < 100).all() and not tokens[5:].any()
    assert tokens[3] == instruction_tokens("ok", 1, 100)[0]  # case-folded; crc32: the same in every process
    assert instruction_tokens("ok", 1, 100)[0] == 1 + 2044517703 % 99  # zlib.crc32(b"ok"), by hand
    assert instruction_tokens("a " * 50, length=4).shape == (4,)  # longer instructions are cut
