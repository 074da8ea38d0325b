"""Tests of hsicib.report, hsicib.plots and the experiments.report CLI.

The workdirs are fake but follow the runner's format exactly: config.json,
metrics.jsonl, infoplane.csv, summary.json, one subdirectory per mode.
"""

import csv
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import report as report_cli
from hsicib import report

EPOCHS = (0, 1, 2, 5, 10)
BLOCKS = ("conv1", "conv2", "fc1", "fc2")
NUM_CLASSES = 10
STATS = ("nhsic_x", "nhsic_y", "cka_x", "cka_y")


def _fake_stats(mode: str, seed: int) -> dict[str, np.ndarray]:
    """(E, L) arrays with mode-dependent structure, plus noise."""
    rng = np.random.default_rng(seed)
    e = np.asarray(EPOCHS, dtype=np.float64)[:, None] / EPOCHS[-1]
    depth = np.arange(len(BLOCKS))[None, :] / (len(BLOCKS) - 1)
    if mode == "e2e":
        # Input information decays slowly with depth; the last layer rises then
        # falls.
        x = 60.0 - 15.0 * depth + 10.0 * e * (1 - depth)
        x[:, -1] = [40.0, 55.0, 52.0, 45.0, 38.0]
        y = 2.0 + 6.0 * e * depth
    else:
        # Every layer moves alike: parallel trajectories.
        x = 60.0 - 15.0 * depth - 20.0 * e
        y = 2.0 + 6.5 * e * np.ones_like(depth)
    x = x + rng.uniform(0, 0.5, x.shape)
    y = y + rng.uniform(0, 0.1, y.shape)
    return {
        "nhsic_x": x,
        "nhsic_y": y,
        "cka_x": np.clip(x / 100.0, 0, 1),
        "cka_y": np.clip(y / 10.0, 0, 1),
    }


def make_run(path: Path, mode: str, seed: int, *, epochs=EPOCHS) -> dict:
    """Writes one run directory in the runner's format; returns what it wrote."""
    path.mkdir(parents=True)
    stats = _fake_stats(mode, seed)
    config = {
        "mode": mode,
        "model": {"name": "lenet5", "num_classes": NUM_CLASSES},
        "dataset": {"name": "mnist"},
        "seed": 0,
    }
    (path / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed + 100)
    metrics = []
    for i, epoch in enumerate(epochs):
        metrics.append(
            {
                "epoch": epoch,
                "step": 50 * epoch,
                "lr": 5e-4,
                "wall_time": 1.5 * epoch,
                "train_loss": 2.3 / (1 + epoch),
                "block_loss": [None] * len(BLOCKS)
                if mode == "e2e"
                else [float(v) for v in rng.uniform(0.1, 2, len(BLOCKS))],
                "test_acc": 0.1 + 0.08 * i,
                "probe_acc": [float(v) for v in rng.uniform(0.1, 1.0, len(BLOCKS))],
                "images_per_sec": 1000.0,
            }
        )
    with (path / "metrics.jsonl").open("w") as f:
        for row in metrics:
            f.write(json.dumps(row) + "\n")
    with (path / "infoplane.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "block", "block_name", "statistic", "value"])
        for i, epoch in enumerate(epochs):
            for statistic in STATS:
                for b, name in enumerate(BLOCKS):
                    value = repr(float(stats[statistic][i, b]))
                    writer.writerow([epoch, 50 * epoch, b, name, statistic, value])
    summary = {
        "mode": mode,
        "model": "lenet5",
        "dataset": "mnist",
        "num_blocks": len(BLOCKS),
        "block_names": list(BLOCKS),
        "final_test_acc": 0.985 if mode == "e2e" else 0.9712,
        "probe_acc": metrics[-1]["probe_acc"],
        "epochs": epochs[-1],
        "wall_time_s": 123.4 if mode == "e2e" else 98.7,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return {"stats": stats, "metrics": metrics, "summary": summary}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    written = {
        "e2e": make_run(root / "e2e", "e2e", 0),
        "layerwise": make_run(root / "layerwise", "layerwise", 1),
    }
    path = report.write_report([root], root)
    return root, path, written


def _middle_mean(x_last):
    return float(np.mean(x_last[1:-1]))


def test_report_has_accuracy_table_and_sections(comparison):
    root, path, _ = comparison
    assert path == root / "report.md"
    text = path.read_text()
    assert text.startswith("# hsicib report: lenet5 on mnist")
    assert re.search(r"\| e2e \| 98\.50 \| 123\.4 \|", text)
    assert re.search(r"\| layerwise \| 97\.12 \| 98\.7 \|", text)
    for heading in (
        "## Final test accuracy",
        "### nHSIC(X;T_l)",
        "### Probe accuracy (%)",
        "## Findings",
        "### (a) Input-information propagation",
        "### (b) Layer differentiation",
        "### (c) Information bottleneck at the last block",
    ):
        assert heading in text
    for png in sorted((root / "figures").glob("*.png")):
        assert f"](figures/{png.name})" in text


def test_findings_a_recomputed(comparison):
    _, path, written = comparison
    text = path.read_text()
    e2e = _middle_mean(written["e2e"]["stats"]["nhsic_x"][-1])
    lw = _middle_mean(written["layerwise"]["stats"]["nhsic_x"][-1])
    assert f"| e2e | conv2, fc1 | {e2e:.3f} |" in text
    assert f"| layerwise | conv2, fc1 | {lw:.3f} |" in text
    ratio = e2e / lw
    assert ratio > 1  # By construction of the fake data.
    assert f"= **{ratio:.3f}**" in text
    assert f"keep {100 * (ratio - 1):.1f}% more dependence on the input" in text


def test_findings_b_recomputed(comparison):
    _, path, written = comparison
    text = path.read_text()
    xs = [w["stats"]["nhsic_x"] for w in written.values()]
    ys = [w["stats"]["nhsic_y"] for w in written.values()]
    x_range = max(a.max() for a in xs) - min(a.min() for a in xs)
    y_range = max(a.max() for a in ys) - min(a.min() for a in ys)
    expected = {}
    for mode, w in written.items():
        x, y = w["stats"]["nhsic_x"] / x_range, w["stats"]["nhsic_y"] / y_range
        moves, last, spread = [], [], []
        for e in range(1, len(EPOCHS)):
            for a, b in itertools.combinations(range(len(BLOCKS)), 2):
                ux = (x[e, a] - x[0, a]) - (x[e, b] - x[0, b])
                uy = (y[e, a] - y[0, a]) - (y[e, b] - y[0, b])
                moves.append(math.hypot(ux, uy))
                if e == len(EPOCHS) - 1:
                    last.append(math.hypot(ux, uy))
                    spread.append(math.hypot(x[e, a] - x[e, b], y[e, a] - y[e, b]))
        expected[mode] = (np.mean(moves), np.mean(last), np.mean(spread))
        cells = " | ".join(f"{v:.3f}" for v in expected[mode])
        assert f"| {mode} | {cells} |" in text
    assert expected["e2e"][0] > expected["layerwise"][0]  # By construction.
    assert "e2e differentiates its layers most" in text
    ratio = expected["e2e"][0] / expected["layerwise"][0]
    assert f"D(e2e) / D(layerwise) = {ratio:.2f}: e2e layers are more" in text


def test_findings_c_recomputed(comparison):
    _, path, written = comparison
    text = path.read_text()
    x = written["e2e"]["stats"]["nhsic_x"][:, -1]
    y = written["e2e"]["stats"]["nhsic_y"][:, -1]
    peak = int(np.argmax(x))
    drop = 100 * (x[peak] - x[-1]) / x[peak]
    assert EPOCHS[peak] == 1
    assert (
        f"e2e: nHSIC(X;T_L) rises from {x[0]:.3f} (epoch 0) to a peak of "
        f"{x[peak]:.3f} at epoch 1, then falls to {x[-1]:.3f} ({drop:.1f}% below"
    ) in text
    assert f"ends at {y[-1]:.3f}, {100 * y[-1] / 9:.1f}% of its maximum C - 1 = 9" in (
        text
    )
    # Layer-wise: the last layer's nHSIC(X;T) only decreases.
    xl = written["layerwise"]["stats"]["nhsic_x"][:, -1]
    assert np.all(np.diff(xl) < 0)
    assert (
        f"layerwise: nHSIC(X;T_L) never rises above its epoch-0 value {xl[0]:.3f}"
        in (text)
    )


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_png_has_its_csv_with_the_right_rows(comparison):
    root, _, written = comparison
    figures = root / "figures"
    pngs = sorted(figures.glob("*.png"))
    assert {p.stem for p in pngs} == {
        "infoplane",
        "propagation",
        "dynamics",
        "separability",
        "cka",
    }
    for png in pngs:
        data = png.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.with_suffix(".csv").is_file()
    num_blocks = len(BLOCKS)
    for stem in ("infoplane", "dynamics"):
        rows = _read_csv(figures / f"{stem}.csv")
        assert len(rows) == 2 * len(EPOCHS) * num_blocks
        for row in rows:
            stats = written[row["run"]]["stats"]
            i, b = EPOCHS.index(int(row["epoch"])), int(row["block"])
            assert row["block_name"] == BLOCKS[b]
            assert float(row["nhsic_x"]) == stats["nhsic_x"][i, b]
            assert float(row["nhsic_y"]) == stats["nhsic_y"][i, b]
    rows = _read_csv(figures / "propagation.csv")
    assert len(rows) == 2 * num_blocks
    for row in rows:
        assert int(row["epoch"]) == EPOCHS[-1]
        b = int(row["block"])
        assert float(row["nhsic_x"]) == written[row["run"]]["stats"]["nhsic_x"][-1, b]
    rows = _read_csv(figures / "separability.csv")
    assert len(rows) == 2 * num_blocks
    for row in rows:
        probe = written[row["run"]]["metrics"][-1]["probe_acc"]
        assert float(row["probe_acc"]) == probe[int(row["block"])]
    rows = _read_csv(figures / "cka.csv")
    assert len(rows) == 2 * num_blocks
    for row in rows:
        b = int(row["block"])
        assert float(row["cka_y"]) == written[row["run"]]["stats"]["cka_y"][-1, b]


def test_single_run_dirs_and_duplicate_modes(tmp_path):
    make_run(tmp_path / "a" / "e2e", "e2e", 0)
    make_run(tmp_path / "b" / "e2e", "e2e", 2, epochs=(0, 3, 6))
    make_run(tmp_path / "c", "layerwise", 1)
    make_run(tmp_path / "d", "sequential", 4)
    (tmp_path / "d" / "infoplane.csv").unlink()  # nHSIC tracking was off.
    out = tmp_path / "out"
    dirs = [tmp_path / "a" / "e2e", tmp_path / "b" / "e2e", tmp_path / "c"]
    path = report.write_report([*dirs, tmp_path / "d"], out)
    text = path.read_text()
    assert "| sequential | 97.12 | 98.7 |" in text
    assert "sequential has no information plane (no infoplane.csv)." in text
    assert "| block | name | e2e (a/e2e) | e2e (b/e2e) | layerwise |\n" in text
    assert "| block | name | e2e (a/e2e) | e2e (b/e2e) | layerwise | sequential |" in (
        text
    )  # The probe table has every run.
    runs = {r["run"] for r in _read_csv(out / "figures" / "separability.csv")}
    assert "sequential" in runs
    runs = {r["run"] for r in _read_csv(out / "figures" / "infoplane.csv")}
    assert runs == {"e2e (a/e2e)", "e2e (b/e2e)", "layerwise"}
    assert "| e2e (a/e2e) |" in text and "| e2e (b/e2e) |" in text
    assert "Last evaluated epoch per run: e2e (a/e2e): 10, e2e (b/e2e): 6" in text
    assert "`../a/e2e`" in text
    assert (out / "figures" / "infoplane.png").stat().st_size > 0


def test_runs_without_infoplane_give_accuracy_and_probes_only(tmp_path):
    make_run(tmp_path / "run", "e2e", 3)
    (tmp_path / "run" / "infoplane.csv").unlink()
    text = report.write_report([tmp_path], tmp_path).read_text()
    assert "| e2e | 98.50 | 123.4 |" in text
    assert "None: no run has an information plane." in text
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert pngs == ["separability.png"]


def test_one_run_without_layerwise_says_ratio_not_computed(tmp_path):
    make_run(tmp_path / "run", "sequential", 3)
    text = report.write_report([tmp_path / "run"], tmp_path / "run").read_text()
    assert "Ratio E2E / layer-wise not computed" in text
    assert "Only one run: sequential has D = " in text


def test_invalid_inputs_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        report.write_report([tmp_path / "nope"], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a run directory"):
        report.write_report([tmp_path / "empty"], tmp_path)
    make_run(tmp_path / "broken", "e2e", 0)
    (tmp_path / "broken" / "metrics.jsonl").unlink()
    with pytest.raises(ValueError, match=r"lacks metrics\.jsonl"):
        report.write_report([tmp_path / "broken"], tmp_path)
    make_run(tmp_path / "bad_json", "e2e", 0)
    (tmp_path / "bad_json" / "summary.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        report.write_report([tmp_path / "bad_json"], tmp_path)


def test_layer_differentiation_and_bottleneck_units():
    # Parallel moves: D = 0 while the layers sit apart (S_last > 0).
    x = np.array([[1.0, 3.0], [2.0, 4.0]])
    d, d_last, s_last = report.layer_differentiation(x, x, x_range=1, y_range=1)
    assert d == d_last == 0.0 and s_last == pytest.approx(math.hypot(2, 2))
    # Layer 1 moves by (3, 4) (normalized (3, 2)), layer 0 stays.
    x = np.array([[0.0, 0.0], [0.0, 3.0], [0.0, 3.0]])
    y = np.array([[0.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    got = report.layer_differentiation(x, y, x_range=1, y_range=2)
    assert got == pytest.approx((math.hypot(3, 2),) * 3)
    single = report.layer_differentiation(x[:, :1], y[:, :1], x_range=1, y_range=1)
    assert all(math.isnan(v) for v in single)
    d, d_last, s_last = report.layer_differentiation(x[:1], y[:1], x_range=1, y_range=1)
    assert math.isnan(d) and math.isnan(d_last) and s_last == 0.0
    with pytest.raises(ValueError, match="same shape"):
        report.layer_differentiation(x, y[:, :1], x_range=1, y_range=1)
    b = report.bottleneck(
        np.array([0, 1, 2]), np.array([1.0, 3.0, 2.4]), np.array([0, 1, 4.5]),
        num_classes=10,
    )  # fmt: skip
    assert b["peak_epoch"] == 1 and b["rise_then_fall"]
    assert b["drop_pct"] == pytest.approx(20.0)
    assert b["y_final_pct"] == pytest.approx(50.0)
    assert list(report.middle_layers(5)) == [1, 2, 3]
    assert list(report.middle_layers(2)) == [0, 1]


def test_cli_default_out(comparison):
    root, _, _ = comparison
    assert report_cli.default_out([root]) == root
    assert report_cli.default_out([root / "e2e", root / "layerwise"]) == root


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_cli_bad_dir_exits_2_with_one_line(tmp_path, capsys, kind):
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("x")
    with pytest.raises(SystemExit) as exc:
        report_cli.main([str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert str(target) in err and "Traceback" not in err


def test_cli_in_process_writes_report(tmp_path, capsys):
    make_run(tmp_path / "runs" / "e2e", "e2e", 0)
    (tmp_path / "runs" / "e2e" / "infoplane.csv").unlink()  # Fast: no nHSIC plots.
    out = tmp_path / "cli_out"
    assert report_cli.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    assert "| e2e | 98.50 | 123.4 |" in (out / "report.md").read_text()
    assert (out / "figures" / "separability.png").stat().st_size > 0


def test_cli_subprocess_bad_dir_exit_code(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(tmp_path / "missing")],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"python -m experiments.report: error: {str(tmp_path / 'missing')!r} is not "
        "a directory"
    ]
    assert bad.stdout == ""
