"""Stop-string search and the held-back tail of streamed text."""

from __future__ import annotations

import pytest

from edgellm_fn.text.stops import find_stop, partial_stop_length


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("Hello world. END more END", ["END"], (13, "END")),
        ("a<|x|>b###c", ["###", "<|x|>"], (1, "<|x|>")),
        ("abcd", ["bcd", "bc"], (1, "bcd")),  # tie: the longer one
        ("no stop here", ["STOP"], None),
    ],
)
def test_find_stop_returns_the_earliest_match(text, stop, expected):
    assert find_stop(text, stop) == expected
    if expected is not None:  # rescanning past the match finds only later ones
        assert find_stop(text, stop, start=expected[0] + 1) != expected


@pytest.mark.parametrize(
    ("text", "stop", "held"),
    [
        ("Hello </", ["</s>", "Observation:"], 2),
        ("x Obs", ["</s>", "Observation:"], 3),
        ("abc", ["abc"], 0),  # a whole stop string is find_stop's job, not a prefix
        ("aaab", ["aab", "bx"], 1),
        ("", ["END"], 0),
    ],
)
def test_partial_stop_length_is_the_longest_proper_prefix_suffix(text, stop, held):
    assert partial_stop_length(text, stop) == held
