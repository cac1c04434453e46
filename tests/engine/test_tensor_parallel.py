"""Runs ``tp_cases.py`` (tensor parallelism) on 4 CPU devices in a subprocess.

The device count is fixed when JAX starts its CPU backend, and this suite's process already
started it with one device, so the cases run in their own ``pytest`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; the junit report proves they all ran
(none skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

CASES = Path(__file__).with_name("tp_cases.py")
ROOT = CASES.parents[2]


def test_tensor_parallel_cases_on_four_cpu_devices(tmp_path):
    report = tmp_path / "tp.xml"
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("NCCL_NVLS_ENABLE", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)]
        + ["--junitxml", str(report), "-o", "addopts="],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 27 and counts["failures"] == counts["errors"] == 0, counts
    assert counts["skipped"] == 0, counts
