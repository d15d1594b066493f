"""How the driver words a component that did not start (`system.train.start_errors`)."""

from __future__ import annotations

import pytest

from system.train.start_errors import HEADER_CHARS, error_header, named_together, redacted

# Ray 2.60's text for an actor whose constructor raised a RuntimeError of several lines (one indented)
RAY_TEXT = (
    "The actor died because of an error raised in its creation task, \x1b[36mray::C.__init__()\x1b[39m "
    "(pid=13020, ip=127.0.0.1, actor_id=fb5e706a80d33b7725b25d6001000000, repr=<host.C object at 0x7f5c>)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/tmp/host.py", line 7, in __init__\n'
    '    raise RuntimeError("CUDA error: out of memory\\n...")\n'
    "RuntimeError: CUDA error: out of memory\n"
    "CUDA kernel errors might be asynchronously reported at some other API call.\n"
    "    an indented line of the message\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."
)


@pytest.mark.parametrize(
    ("case", "text", "header"),
    [
        ("a constructor's error of several lines", RAY_TEXT, "RuntimeError: CUDA error: out of memory"),
        (
            "chained errors: the last one's",
            'Traceback:\n  File "a.py", line 1, in f\n    g()\nKeyError: 1\n\nThe above exception ...\n'
            '  File "b.py", line 2, in h\n    raise OSError("no")\nOSError: no',
            "OSError: no",
        ),
        (
            "no traceback: the first unindented line",
            "The actor died unexpectedly before finishing this task.\n\tclass_name: ShardHost",
            "The actor died unexpectedly before finishing this task.",
        ),
        ("only indented lines", "   indented\n   too", "indented"),
        ("blanks", " \n", ""),
    ],
)
def test_an_errors_header_line_is_the_one_that_names_its_cause(case, text, header):
    assert error_header(text) == header


def test_a_long_header_is_cut():
    header = error_header('  File "a.py", line 1, in f\n    f()\nValueError: ' + "x" * 500)
    assert len(header) == HEADER_CHARS and header.startswith("ValueError: xxx") and header.endswith("…")


def test_redacted_text_keeps_no_url_password_nor_a_secret_of_the_environment(monkeypatch):
    monkeypatch.setenv("QFLEET_REPLAY_TOKEN", "token-held-by-this-process")
    monkeypatch.delenv("QFLEET_REDIS_PASSWORD", raising=False)
    text = redacted("at redis://:pa55word@host:6379/0 with token-held-by-this-process.")
    assert text == "at redis://:***@host:6379/0 with ***."


@pytest.mark.parametrize(
    ("names", "phrase"),
    [
        (["the learner"], "the learner"),
        (["replay shard 1", "replay shard 3"], "replay shards 1, 3"),
        (["offline shard 0", "offline shard 2"], "offline shards 0, 2"),
        (["replay shard 1", "the learner"], "replay shard 1, the learner"),
    ],
)
def test_components_still_pending_are_named_in_one_phrase(names, phrase):
    assert named_together(names) == phrase
