"""Reading back the plain strings qfleet writes into Redis hashes and streams."""

from __future__ import annotations


def parse_number(text: bytes | str) -> int | float | str:
    """An int if `text` reads as one, else a float if it reads as one, else the text itself.

    Redis hands values back as bytes; status hashes and the episode stream store numbers as text.
    """
    value = text.decode() if isinstance(text, bytes) else text
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
