"""What a user does: run configs through the runner, on real bundled data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import quickstart
from hsicib import experiment

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _digits_config(modes, epochs=4):
    c = quickstart.get_config()
    c.modes = tuple(modes)
    c.train.epochs = epochs
    c.train.sequential_stage_epochs = 1
    c.train.log_every_s = 1e9
    c.optim.milestones = ()
    c.hsic.every = 2
    c.hsic.eval_size = 200
    return c


@pytest.mark.parametrize("mode", ["e2e", "layerwise", "modules:2", "sequential"])
def test_every_mode_learns_the_digits(tmp_path, mode):
    c = _digits_config([mode])
    summary = experiment.run(c, tmp_path)[mode]
    # Chance is 10 %; a few epochs of any mode are far above it.
    assert summary["final_test_acc"] > 0.5, summary
    rows = [
        json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[0]["epoch"] == 0 and rows[-1]["epoch"] == summary["epochs"]
    assert len(rows[-1]["probe_acc"]) == summary["num_blocks"]
    # The tracking time is the sum of the evaluated epochs' tracker calls.
    tracked = sum(r["hsic_time_s"] for r in rows)
    assert summary["hsic_time_s"] == pytest.approx(tracked) and tracked > 0
    assert summary["hsic_fraction"] == pytest.approx(tracked / summary["wall_time_s"])
    assert 0 < summary["hsic_fraction"] < 1
    for name in ("config.json", "summary.json", "infoplane.csv", "checkpoints"):
        assert (tmp_path / name).exists(), name


def test_rerun_resumes_without_duplicating_rows(tmp_path):
    c = _digits_config(["e2e"], epochs=2)
    experiment.run(c, tmp_path)
    first = (tmp_path / "metrics.jsonl").read_text()
    experiment.run(c, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == first


def test_workdir_of_another_config_is_refused(tmp_path):
    c = _digits_config(["e2e"], epochs=1)
    experiment.run(c, tmp_path)
    c.optim.lr = 0.5
    with pytest.raises(experiment.RunError, match=r"optim.lr: 0.002 -> 0.5"):
        experiment.run(c, tmp_path)
    # --overwrite (overwrite=True) discards the old run and trains the new one.
    experiment.run(c, tmp_path, overwrite=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["optim"]["lr"] == 0.5


@pytest.mark.skipif(
    not FASHION.exists(), reason="apt-get install dataset-fashion-mnist"
)
def test_lenet5_e2e_reaches_88_percent_on_real_fashion_mnist(tmp_path):
    from experiments import lenet5_fashion

    c = lenet5_fashion.get_config()
    c.modes = ("e2e",)
    c.train.epochs = 4
    c.optim.milestones = (3,)
    c.hsic.enabled = False
    c.train.log_every_s = 1e9
    summary = experiment.run(c, tmp_path)["e2e"]
    assert summary["final_test_acc"] >= 0.88, summary


def test_readme_quickstart_command_trains_both_modes_and_writes_the_report(tmp_path):
    """The README's main-job command, as written (workdir moved to tmp)."""
    import re
    import shlex
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- section:quickstart -->")[1].split("<!--")[0]
    command = next(
        line for line in re.findall(r"^python -m experiments\.run .*$", section, re.M)
    )
    args = [
        f"--workdir={tmp_path}" if a.startswith("--workdir=") else a
        for a in shlex.split(command)[1:]
    ]
    res = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for mode in ("e2e", "layerwise"):
        summary = json.loads((tmp_path / mode / "summary.json").read_text())
        assert summary["final_test_acc"] > 0.9, summary  # chance: 0.1
    report = (tmp_path / "report.md").read_text()
    assert "## Findings" in report
    for name in ("infoplane", "propagation", "dynamics", "separability"):
        png, csv = (
            tmp_path / "figures" / f"{name}.png",
            tmp_path / "figures" / f"{name}.csv",
        )
        assert png.stat().st_size > 1000 and len(csv.read_text().splitlines()) > 1
