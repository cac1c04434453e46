"""Shared pieces of the bounded fuzz tests: JSON-ish values and an outcome tally."""

from __future__ import annotations

import collections
import math

from hypothesis import strategies as st

# Values a hostile JSON file can hold (and NaN/inf, which Python's json module accepts).
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**7, 10**12, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e300]),
    st.text(max_size=8),
    st.sampled_from(["\ud800", "x\udfffy", "llama3", "yarn", "bf16", ""]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


class Tally:
    """Counts outcomes per fuzz target; printed (``pytest -s``) when the test ends."""

    def __init__(self, name: str):
        self.name = name
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def report(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        line = f"fuzz {self.name}: {total} examples: {parts}"
        print(line)
        return line
