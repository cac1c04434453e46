"""Stop strings: where one first occurs in generated text, how much of a growing text's tail
could still become one (so streaming holds that tail back), and ``StopStream``, which does both
for one streamed row."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError, show


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


def check_stops(stop, where: str) -> list[str]:
    """One request's stop strings as a list: ``None`` (none), one ``str`` or a sequence of them.

    Raises:
      InputError: not strings, or an empty string (it would match before the first character).
    """
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, Sequence) or not all(isinstance(s, str) for s in items):
        raise InputError(f"{where}={show(stop)} (expected None, a str or a list of str)")
    for i, s in enumerate(items):
        if not s:
            raise InputError(
                f"{where}[{i}]='' (expected a non-empty string); an empty stop string matches "
                "before the first character, so the output would always be empty"
            )
    return list(items)


class StopStream:
    """Stop strings over a growing text: detects the first one and says what is safe to stream.

    ``push(delta)`` returns the newly visible text: everything before the first stop string,
    minus a tail that could still grow into one (``partial_stop_length``); that tail is released
    once it can no longer match. No character of a stop string is ever returned.
    """

    def __init__(self, stop: Sequence[str]):
        self.stop = list(stop)
        self.text = ""
        self.hit: tuple[int, str] | None = None  # (index, stop string) once found
        self.emitted = 0  # characters of ``text`` already returned
        self._longest = max((len(s) for s in self.stop), default=0)

    def push(self, delta: str) -> str:
        """Adds generated text; returns the part of it (and of held-back text) safe to show."""
        if self.hit is not None or not delta:
            return ""
        start = max(0, len(self.text) - self._longest + 1)  # a new match ends in ``delta``
        self.text += delta
        if self.stop:
            self.hit = find_stop(self.text, self.stop, start)
        if self.hit is not None:
            end = self.hit[0]
        else:
            end = len(self.text) - partial_stop_length(self.text, self.stop)
        if end <= self.emitted:
            return ""
        out, self.emitted = self.text[self.emitted : end], end
        return out
