"""Crash and resume, non-finite losses, and bad input through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_TIMING = ("wall_time", "images_per_sec", "hsic_time_s")


def _cmd(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.run",
        "--config=experiments/quickstart.py",
        f"--workdir={workdir}",
        "--config.modes=('layerwise',)",
        "--config.train.epochs=4",
        "--config.optim.milestones=(3,)",
        "--config.hsic.every=2",
        "--config.hsic.eval_size=200",
        "--config.checkpoint.every_epochs=1",
        *extra,
    ]


def _run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)


def _rows(workdir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in rows]


def _completed_steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    if not ckpt.exists():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    assert _run(_cmd(ref), timeout=900).returncode == 0
    proc = subprocess.Popen(
        _cmd(crashed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while time.time() < deadline and len(_completed_steps(crashed)) < 1:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (crashed / "summary.json").exists(), "killed too late to test resume"
    res = _run(_cmd(crashed), timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from epoch" in res.stderr
    assert _rows(crashed) == _rows(ref)
    assert (crashed / "infoplane.csv").read_text() == (
        ref / "infoplane.csv"
    ).read_text()
    a = json.loads((ref / "summary.json").read_text())
    b = json.loads((crashed / "summary.json").read_text())
    assert a["params_sha256"] == b["params_sha256"]
    assert a["final_test_acc"] == b["final_test_acc"]


def test_non_finite_loss_names_epoch_step_and_block(tmp_path):
    workdir = tmp_path / "nan"
    res = _run(
        _cmd(
            workdir,
            "--config.optim.name=sgd",
            "--config.optim.lr=1e12",
            "--config.optim.schedule=constant",
        ),
        timeout=600,
    )
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: [layerwise] non-finite loss or gradient at epoch 1, step"
    )
    assert "in block" in last
    assert "Traceback" not in res.stderr
    assert not (workdir / "summary.json").exists()


_BAD_FIELDS = [
    ("data.source", "imagenet_folder", "data.source='imagenet_folder'"),
    ("model.name", "alexnet", "model.name='alexnet'"),
    ("modes", ("greedy",), "'greedy' is not a known mode"),
    ("loss.local", "mse", "loss.local='mse'"),
    ("model.head", "conv", "model.head='conv'"),
    ("modes", ("modules:7",), "K=7 must be between 1 and the number of blocks"),
    ("train.batch_size", 0, "train.batch_size=0 must be > 0"),
    ("train.batch_size", 5000, "train.batch_size=5000 is larger than"),
    ("optim.lr", -0.1, "optim.lr=-0.1 must be > 0"),
    ("hsic.sigma", 0.0, "hsic.sigma=0.0 must be > 0"),
    ("hsic.eps", -1e-5, "hsic.eps=-1e-05 must be > 0"),
    (
        "hsic.solver",
        "inverse",
        "hsic.solver='inverse' is not allowed; allowed: cholesky, eigh",
    ),
    ("loss.nhsic_sigma", 0.0, "loss.nhsic_sigma=0.0 must be > 0"),
    ("data.num_classes", 3, "num_classes=3"),
    ("data.source", "idx", "data.data_dir"),
]


@pytest.mark.parametrize(("field", "value", "message"), _BAD_FIELDS)
def test_bad_config_field_is_named_and_nothing_is_written(
    tmp_path, field, value, message
):
    from experiments import quickstart
    from hsicib import experiment

    c = quickstart.get_config()
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    workdir = tmp_path / "w"
    with pytest.raises(ValueError) as info:
        experiment.run(c, workdir)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not workdir.exists()


def test_labels_out_of_range_are_refused(tmp_path):
    import numpy as np

    from hsicib import data as data_lib

    images = np.zeros((4, 8, 8, 1), np.uint8)
    bad = np.array([0, 1, 2, 10], np.int32)
    with pytest.raises(ValueError, match="label") as info:
        data_lib.Dataset(
            name="toy",
            train_images=images,
            train_labels=bad,
            test_images=images,
            test_labels=bad % 10,
            num_classes=10,
            mean=(0.5,),
            std=(0.25,),
        )
    assert "10" in str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.model.name=alexnet", "model.name='alexnet'"),
        ("--config.data.name=nope", "nope"),
        ("--config.train.epochs=abc", "--config.train.epochs=abc"),
        ("--config.nofield=1", "nofield"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_no_files(tmp_path, override, message):
    workdir = tmp_path / "w"
    cmd = _cmd(workdir, override)
    if override == "--config.data.name=nope":
        cmd.append("--config.data.source=tfds")
    res = _run(cmd, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert message in errors[0], errors[0]
    assert not workdir.exists()
