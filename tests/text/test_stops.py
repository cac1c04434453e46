"""Stop-string search and the held-back tail of streamed text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgellm_fn.errors import InputError
from edgellm_fn.text.stops import StopStream, check_stops, find_stop, partial_stop_length


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


@pytest.mark.parametrize(
    ("stop", "match"),
    [
        ([""], r"stop\[0\]='' \(expected a non-empty string\); an empty stop string matches"),
        (["ok", ""], r"stop\[1\]='' \(expected a non-empty string\)"),
        ("", r"stop\[0\]='' \(expected a non-empty string\)"),
        ([3], r"stop=\[3\] \(expected None, a str or a list of str\)"),
        (b"END", r"stop=b'END' \(expected None, a str or a list of str\)"),
    ],
)
def test_check_stops_refuses_empty_and_non_string_stops(stop, match):
    with pytest.raises(InputError, match=match):
        check_stops(stop, "stop")


def test_check_stops_accepts_none_one_string_or_a_list():
    assert check_stops(None, "stop") == []
    assert check_stops("END", "stop") == ["END"]  # one string is one stop, not its characters
    assert check_stops(("a", "bc"), "stop") == ["a", "bc"]


def test_stop_stream_never_emits_a_stop_string_character():
    # The token completing "END" must not release the "EN" held back before it.
    stream = StopStream(["END"])
    out = [stream.push(d) for d in ["Hello E", "N", "D and more"]]
    assert out == ["Hello ", "", ""] and stream.hit == (6, "END")
    # A held-back prefix is released as soon as it can no longer become a stop string.
    stream = StopStream(["END"])
    assert [stream.push(d) for d in ["xE", "Nx", "y"]] == ["x", "ENx", "y"]
    assert stream.hit is None


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc", max_size=24),
    cuts=st.lists(st.integers(0, 24), max_size=8),
    stop=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_stop_stream_emits_exactly_the_text_before_the_first_stop(text, cuts, stop):
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    stream = StopStream(stop)
    emitted = ""
    for a, b in zip(bounds, bounds[1:], strict=False):
        emitted += stream.push(text[a:b])
        assert not any(s in emitted for s in stop)  # no stop string, ever
        assert text.startswith(emitted)
    # Generation stops at the first delta that completes a stop string; the earliest stop in
    # the text seen so far is the cut (what generate's final text is cut at, too).
    seen = next((text[:b] for b in bounds[1:] if find_stop(text[:b], stop)), text)
    hit = find_stop(seen, stop)
    if hit is None:
        assert stream.hit is None
        assert emitted == text[: len(text) - partial_stop_length(text, stop)]
    else:
        assert stream.hit == hit and emitted == seen[: hit[0]]
