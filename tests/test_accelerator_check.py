"""The accelerator check runs end to end on CPU smoke flags and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_accelerator_check_cpu_smoke_prints_a_table():
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.accelerator_check",
        "--steps=4",
        "--chunk=2",
        "--batch=16",
        "--width_mult=0.0625",
        "--hsic_n=200",
    ]
    res = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = re.findall(r"^\| (e2e|layerwise) \| (.+) \|$", res.stdout, re.M)
    assert [mode for mode, _ in rows] == ["e2e", "layerwise"], res.stdout
    for _, cells in rows:
        images_per_s, compile_s, step_mib, _, hsic_s = cells.split(" | ")
        assert float(images_per_s) > 0 and float(compile_s) > 0
        assert float(step_mib) > 0  # XLA's memory analysis exists on CPU
        assert float(hsic_s) > 0
