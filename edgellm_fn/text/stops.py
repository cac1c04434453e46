"""Stop strings: where one first occurs in generated text, and how much of a growing text's tail
could still become one (so streaming holds that tail back)."""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stop: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """Earliest stop string in ``text[start:]``: ``(index, stop_string)``, or None.

    On a tie the longer stop string wins. Pass ``start = max(0, checked_len - max_len + 1)`` to
    rescan only the new tail of a growing text.
    """
    best = None
    for s in stop:
        i = text.find(s, start)
        if i >= 0 and (best is None or (i, -len(s)) < (best[0], -len(best[1]))):
            best = (i, s)
    return best


def partial_stop_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
