"""Prints a table from a pytest junit xml: one row per test file, with recorded figures.

Usage: python scripts/gpu_summary.py build/gpu_check/junit.xml
Figures come from `record_property(name, value)` in the tests, so new test files show up
without changes here.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def summarize(path: str) -> list[tuple[str, int, int, int, float, str]]:
    groups: dict[str, dict] = defaultdict(
        lambda: {"passed": 0, "failed": 0, "skipped": 0, "time": 0.0, "figures": []}
    )
    for case in ET.parse(path).getroot().iter("testcase"):
        parts = case.get("classname", "?").split(".")
        if len(parts) > 1 and parts[-1].startswith("Test"):  # a test class: group by its file
            parts = parts[:-1]
        g = groups[".".join(parts)]
        g["time"] += float(case.get("time", 0) or 0)
        if case.find("failure") is not None or case.find("error") is not None:
            g["failed"] += 1
        elif case.find("skipped") is not None:
            g["skipped"] += 1
        else:
            g["passed"] += 1
        for prop in case.iter("property"):
            g["figures"].append(f"{prop.get('name')}={prop.get('value')}")
    return [
        (name, g["passed"], g["failed"], g["skipped"], g["time"], "; ".join(g["figures"]))
        for name, g in sorted(groups.items())
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    try:
        rows = summarize(argv[1])
    except (OSError, ET.ParseError) as e:
        print(f"gpu_summary: no readable junit xml at {argv[1]} ({e}); see the pytest log above")
        return 1
    head = ("test group", "passed", "failed", "skipped", "time s", "key figures")
    print("\n== GPU check summary")
    print(f"{head[0]:<34} {head[1]:>6} {head[2]:>6} {head[3]:>7} {head[4]:>7}  {head[5]}")
    for name, p, f, s, t, figs in rows:
        print(f"{name:<34} {p:>6} {f:>6} {s:>7} {t:>7.1f}  {figs}")
    total = [sum(r[i] for r in rows) for i in (1, 2, 3)]
    print(f"{'TOTAL':<34} {total[0]:>6} {total[1]:>6} {total[2]:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
