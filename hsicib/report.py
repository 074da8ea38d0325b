"""The comparison report: tables, figures and computed findings from run dirs.

Synopsis::

    path = write_report(["runs/lenet5_cmp"], "runs/lenet5_cmp")   # report.md

A run directory (written by ``experiments.run``) holds ``config.json``,
``metrics.jsonl``, ``infoplane.csv`` (absent when nHSIC tracking was off; the
run then appears in the accuracy and probe tables only) and ``summary.json``.
A comparison directory holds one run directory per training mode (``e2e/``,
``layerwise/``, ``modules_2/``, ...). ``write_report`` accepts either kind,
reads every run, and writes ``report.md`` and ``figures/*.png`` (each PNG with
the CSV it was drawn from beside it, same stem).

The findings are computed from the numbers, never assumed:

(a) input-information propagation: the mean nHSIC(X;T_l) over the middle
    layers (all blocks but the first and the last; all blocks if L <= 2) at the
    last evaluated epoch, per run, and the ratio E2E / layer-wise;
(b) layer differentiation D: after dividing nHSIC(X;T) and nHSIC(Y;T) by
    their ranges over all runs, layers and epochs of the report, each layer's
    displacement since the first evaluation is compared between every pair of
    layers; D is the mean Euclidean distance between two layers'
    displacements (over layer pairs and evaluated epochs; see
    ``layer_differentiation``). Layers that move alike (in parallel) give 0;
    larger D means the layers take more distinct paths;
(c) information bottleneck at the last block: the peak of nHSIC(X;T_L) over
    training (epoch, value), its final value and the drop from the peak, and
    nHSIC(Y;T_L) at the end against its maximum C - 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from hsicib import infoplane, plots

REPORT_NAME = "report.md"
FIGURES_DIR = "figures"
RISE_FALL_TOLERANCE = 0.01
"""Relative change that counts as a rise or a fall in finding (c)."""

_REQUIRED_FILES = ("summary.json", "metrics.jsonl")
_DATASET_CLASSES = {
    "digits": 10,
    "mnist": 10,
    "fashion_mnist": 10,
    "kmnist": 10,
    "emnist/mnist": 10,
    "cifar10": 10,
    "svhn_cropped": 10,
    "cifar100": 100,
}


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything the report reads from one run directory.

    Attributes:
      label: name of the run in tables and legends (its mode, made unique).
      path: the run directory.
      mode: training mode from summary.json (``e2e``, ``layerwise``, ...).
      model: model name.
      dataset: dataset name.
      num_blocks: L.
      block_names: the L block names.
      num_classes: C, or None if neither config.json nor the dataset name
        tells it.
      summary: summary.json.
      metrics: the rows of metrics.jsonl.
      epochs: evaluated epochs in infoplane.csv, shape (E,); empty without
        an information plane.
      stats: statistic name -> values, shape (E, L); empty without an
        information plane.
    """

    label: str
    path: Path
    mode: str
    model: str
    dataset: str
    num_blocks: int
    block_names: tuple[str, ...]
    num_classes: int | None
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    epochs: np.ndarray
    stats: dict[str, np.ndarray]

    @property
    def has_infoplane(self) -> bool:
        """Whether the run has information-plane statistics."""
        return bool(self.stats)

    def last(self, statistic: str) -> np.ndarray:
        """Per-layer value of ``statistic`` at the last evaluated epoch, (L,)."""
        return self.stats[statistic][-1]

    @property
    def probe_acc(self) -> np.ndarray:
        """Per-layer probe accuracy of the last metrics row (else summary), (L,)."""
        for row in reversed(self.metrics):
            if row.get("probe_acc") is not None:
                return np.asarray(row["probe_acc"], dtype=np.float64)
        return np.asarray(self.summary.get("probe_acc", []), dtype=np.float64)

    @property
    def probe_epoch(self) -> int | None:
        """Epoch of the metrics row ``probe_acc`` comes from."""
        for row in reversed(self.metrics):
            if row.get("probe_acc") is not None:
                return int(row["epoch"])
        return None


# ----------------------------------------------------------------------------
# Reading run directories.


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory with a summary.json."""
    return (Path(path) / "summary.json").is_file()


def is_comparison_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` holds at least one run directory as a direct child."""
    path = Path(path)
    return path.is_dir() and any(
        is_run_dir(child) for child in path.iterdir() if child.is_dir()
    )


def mode_sort_key(mode: str) -> tuple[int, int, str]:
    """Orders modes from most global to most local: e2e, modules:K, layerwise,
    sequential, then anything else alphabetically."""
    if mode == "e2e":
        return (0, 0, mode)
    match = re.fullmatch(r"modules[:_](\d+)", mode)
    if match:
        return (1, int(match.group(1)), mode)
    order = {"layerwise": 2, "sequential": 3}
    return (order.get(mode, 4), 0, mode)


def find_run_dirs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expands run and comparison directories into run directories.

    Args:
      paths: run directories and/or comparison directories. Run directories
        inside a comparison directory are ordered by ``mode_sort_key`` of their
        directory name; the order of ``paths`` is kept.

    Returns:
      The run directories, without duplicates.

    Raises:
      ValueError: if ``paths`` is empty or an entry is neither kind.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("run_dirs must name at least one directory, got []")
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if is_comparison_dir(path):
            children = [c for c in path.iterdir() if c.is_dir() and is_run_dir(c)]
            candidates = sorted(children, key=lambda c: mode_sort_key(c.name))
        elif is_run_dir(path):
            candidates = [path]
        elif not path.is_dir():
            raise ValueError(f"run directory {str(path)!r} does not exist")
        else:
            raise ValueError(
                f"{str(path)!r} is neither a run directory (with summary.json) nor "
                "a comparison directory (with mode subdirectories holding "
                "summary.json)"
            )
        for c in candidates:
            if c.resolve() not in {f.resolve() for f in found}:
                found.append(c)
    return found


def _find_key(tree: Any, key: str) -> Any:
    """First value of ``key`` in a nested dict (depth first), or None."""
    if isinstance(tree, Mapping):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def _name(value: Any) -> str:
    """A config entry that is a name or a dict with a ``name``."""
    if isinstance(value, Mapping):
        return str(value.get("name", ""))
    return "" if value is None else str(value)


def _num_classes(
    summary: Mapping[str, Any], config: Mapping[str, Any], dataset: str
) -> int | None:
    """C from summary.json, else config.json (a positive ``num_classes``
    anywhere), else the dataset name; None if unknown."""
    for found in (summary.get("num_classes"), _find_key(config, "num_classes")):
        if isinstance(found, int) and not isinstance(found, bool) and found > 0:
            return found
    key = dataset.lower()
    for candidate in (key, key.split(":")[0], key.split(":")[0].split("/")[0]):
        if candidate in _DATASET_CLASSES:
            return _DATASET_CLASSES[candidate]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open() as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {number}: invalid JSON") from e
    return rows


def load_run(path: str | os.PathLike, label: str | None = None) -> Run:
    """Reads one run directory.

    Args:
      path: the run directory.
      label: its name in the report; defaults to the mode in summary.json.

    Returns:
      The run.

    Raises:
      ValueError: if a required file is missing or malformed, or the
        information plane is empty or disagrees with summary.json.
    """
    path = Path(path)
    for name in _REQUIRED_FILES:
        if not (path / name).is_file():
            raise ValueError(f"run directory {str(path)!r} lacks {name}")
    summary = _read_json(path / "summary.json")
    config = (
        _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    )
    metrics = _read_jsonl(path / "metrics.jsonl")
    csv_path = path / "infoplane.csv"
    rows = infoplane.read_infoplane(csv_path) if csv_path.is_file() else []
    if rows:
        epochs, names, stats = infoplane.to_arrays(rows)
        missing = [s for s in ("nhsic_x", "nhsic_y") if s not in stats]
        if missing:
            raise ValueError(f"{csv_path} lacks the statistics {missing}")
    else:
        logging.warning("%s: no information plane (%s is missing or empty)",
                        path, csv_path.name)  # fmt: skip
        names = tuple(summary.get("block_names", ()))
        epochs, stats = np.zeros((0,), np.int64), {}
    if "num_blocks" not in summary and not names:
        raise ValueError(f"{path}: summary.json lacks num_blocks and block_names")
    num_blocks = int(summary.get("num_blocks", len(names)))
    if stats and num_blocks != len(names):
        raise ValueError(
            f"{path}: summary.json says num_blocks={num_blocks} but infoplane.csv "
            f"has {len(names)} blocks"
        )
    mode = str(summary.get("mode", config.get("mode", path.name)))
    dataset = _name(summary.get("dataset", config.get("dataset")))
    return Run(
        label=label or mode,
        path=path,
        mode=mode,
        model=_name(summary.get("model", config.get("model"))),
        dataset=dataset,
        num_blocks=num_blocks,
        block_names=tuple(
            summary.get("block_names")
            or names
            or [f"block{i}" for i in range(num_blocks)]
        ),
        num_classes=_num_classes(summary, config, dataset),
        summary=summary,
        metrics=metrics,
        epochs=epochs,
        stats=stats,
    )


def load_runs(run_dirs: Sequence[str | os.PathLike]) -> list[Run]:
    """Finds and reads all runs; labels are the modes, made unique with the
    directory name where two runs share a mode."""
    dirs = find_run_dirs(run_dirs)
    runs = [load_run(d) for d in dirs]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.mode] = counts.get(r.mode, 0) + 1
    labelled = []
    for r, d in zip(runs, dirs, strict=True):
        label = (
            r.mode if counts[r.mode] == 1 else f"{r.mode} ({d.parent.name}/{d.name})"
        )
        labelled.append(dataclasses.replace(r, label=label))
    return labelled


# ----------------------------------------------------------------------------
# Findings: pure functions of arrays.


def middle_layers(num_blocks: int) -> np.ndarray:
    """Indices of the middle layers: all blocks but the first and the last;
    all blocks when ``num_blocks`` <= 2."""
    if num_blocks <= 2:
        return np.arange(num_blocks)
    return np.arange(1, num_blocks - 1)


def input_propagation(nhsic_x_last: np.ndarray) -> float:
    """Mean nHSIC(X;T_l) over the middle layers.

    Args:
      nhsic_x_last: per-layer nHSIC(X;T_l) at one epoch, shape (L,).

    Returns:
      mean_{l in middle_layers(L)} nHSIC(X;T_l).
    """
    values = np.asarray(nhsic_x_last, dtype=np.float64)
    return float(np.mean(values[middle_layers(values.shape[0])]))


def layer_differentiation(
    nhsic_x: np.ndarray,
    nhsic_y: np.ndarray,
    *,
    x_range: float,
    y_range: float,
) -> tuple[float, float, float]:
    """How differently the layers of one run move in the information plane.

    With x~ = nHSIC(X;T) / x_range and y~ = nHSIC(Y;T) / y_range (ranges taken
    over every run, layer and epoch of a report, so runs are comparable), the
    point of layer l at epoch e is p_l(e) = (x~_l(e), y~_l(e)), its
    displacement since the first evaluated epoch e_0 is
    u_l(e) = p_l(e) - p_l(e_0), and

        D      = mean_{l < m} mean_{e > e_0} || u_l(e) - u_m(e) ||_2,
        D_last = mean_{l < m} || u_l(E) - u_m(E) ||_2   (E the last epoch),
        S_last = mean_{l < m} || p_l(E) - p_m(E) ||_2.

    D measures differences in the layers' dynamics (layer roles), not where
    the architecture happens to place them at initialization: layers whose
    trajectories are parallel translates of each other give D = 0. S_last is
    the plain spread of the final positions. All three are NaN for a single
    layer; D and D_last are NaN with a single evaluated epoch.

    Args:
      nhsic_x: nHSIC(X;T_l), shape (epochs, layers).
      nhsic_y: nHSIC(Y;T_l), shape (epochs, layers).
      x_range: normalizer of the X axis (> 0).
      y_range: normalizer of the Y axis (> 0).

    Returns:
      ``(D, D_last, S_last)``.

    Raises:
      ValueError: on mismatched shapes or non-positive ranges.
    """
    x = np.asarray(nhsic_x, dtype=np.float64)
    y = np.asarray(nhsic_y, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            "nhsic_x and nhsic_y must have the same shape (epochs, layers), got "
            f"{x.shape} and {y.shape}"
        )
    if not (x_range > 0 and y_range > 0):
        raise ValueError(
            f"x_range and y_range must be > 0, got {x_range!r} and {y_range!r}"
        )
    points = np.stack([x / x_range, y / y_range], axis=-1)  # (E, L, 2)
    num_epochs, num_layers = points.shape[:2]
    if num_layers < 2:
        return math.nan, math.nan, math.nan
    first, second = np.triu_indices(num_layers, k=1)
    pairwise = lambda p: np.linalg.norm(p[..., first, :] - p[..., second, :], axis=-1)
    spread = float(np.mean(pairwise(points[-1])))
    if num_epochs < 2:
        return math.nan, math.nan, spread
    moves = pairwise(points[1:] - points[:1])  # (E - 1, pairs)
    return float(np.mean(moves)), float(np.mean(moves[-1])), spread


def bottleneck(
    epochs: np.ndarray,
    nhsic_x: np.ndarray,
    nhsic_y: np.ndarray,
    *,
    num_classes: int | None,
    tolerance: float = RISE_FALL_TOLERANCE,
) -> dict[str, Any]:
    """Information-bottleneck diagnostics of one layer over training.

    nHSIC(X;T) "rises then falls" when its peak exceeds its first value by more
    than ``tolerance`` (relative) and its final value is more than
    ``tolerance`` below the peak.

    Args:
      epochs: evaluated epochs, shape (E,).
      nhsic_x: nHSIC(X;T) of the layer at those epochs, shape (E,).
      nhsic_y: nHSIC(Y;T) of the layer at those epochs, shape (E,).
      num_classes: C; nHSIC(Y;T) with one-hot labels is at most C - 1.
      tolerance: relative change that counts as a rise or a fall.

    Returns:
      A dict with ``x_start``, ``x_peak``, ``peak_epoch``, ``x_final``,
      ``drop_pct`` (100 (peak - final) / peak), ``rises``, ``falls``,
      ``rise_then_fall``, ``y_final``, ``y_max`` (C - 1 or None) and
      ``y_final_pct`` (100 y_final / (C - 1) or None).
    """
    epochs = np.asarray(epochs)
    x = np.asarray(nhsic_x, dtype=np.float64)
    y = np.asarray(nhsic_y, dtype=np.float64)
    peak = int(np.nanargmax(x))
    x_start, x_peak, x_final = float(x[0]), float(x[peak]), float(x[-1])
    rises = x_peak > x_start + tolerance * abs(x_start)
    falls = x_final < x_peak - tolerance * abs(x_peak)
    y_max = None if not num_classes or num_classes < 2 else num_classes - 1
    return {
        "x_start": x_start,
        "x_peak": x_peak,
        "peak_epoch": int(epochs[peak]),
        "x_final": x_final,
        "drop_pct": 100.0 * (x_peak - x_final) / x_peak if x_peak else math.nan,
        "rises": bool(rises),
        "falls": bool(falls),
        "rise_then_fall": bool(rises and falls),
        "y_final": float(y[-1]),
        "y_max": y_max,
        "y_final_pct": None if y_max is None else 100.0 * float(y[-1]) / y_max,
    }


def _axis_range(runs: Sequence[Run], statistic: str) -> float:
    values = np.concatenate([r.stats[statistic].ravel() for r in runs])
    values = values[np.isfinite(values)]
    span = float(values.max() - values.min()) if values.size else 0.0
    return span if span > 0 else 1.0


def _is_mode(run: Run, kind: str) -> bool:
    if kind == "e2e":
        return run.mode in ("e2e", "modules:1")
    return run.mode in ("layerwise", f"modules:{run.num_blocks}")


def compute_findings(runs: Sequence[Run]) -> dict[str, Any]:
    """Computes findings (a), (b), (c) for every run (see the module docstring).

    Args:
      runs: the loaded runs.

    Runs without an information plane are left out; with none at all the
    result is ``{}``.

    Returns:
      ``{"propagation": {label: value}, "ratio_e2e_layerwise": float | None,
      "differentiation": {label: (D, D_last, S_last)}, "x_range": float,
      "y_range": float, "bottleneck": {label: dict}}``.
    """
    runs = [r for r in runs if r.has_infoplane]
    if not runs:
        return {}
    propagation = {r.label: input_propagation(r.last("nhsic_x")) for r in runs}
    e2e = [r for r in runs if _is_mode(r, "e2e")]
    lw = [r for r in runs if _is_mode(r, "layerwise")]
    ratio = None
    if e2e and lw and propagation[lw[0].label] > 0:
        ratio = propagation[e2e[0].label] / propagation[lw[0].label]
    x_range, y_range = _axis_range(runs, "nhsic_x"), _axis_range(runs, "nhsic_y")
    differentiation = {
        r.label: layer_differentiation(
            r.stats["nhsic_x"], r.stats["nhsic_y"], x_range=x_range, y_range=y_range
        )
        for r in runs
    }
    bottlenecks = {
        r.label: bottleneck(
            r.epochs,
            r.stats["nhsic_x"][:, -1],
            r.stats["nhsic_y"][:, -1],
            num_classes=r.num_classes,
        )
        for r in runs
    }
    return {
        "propagation": propagation,
        "ratio_e2e_layerwise": ratio,
        "e2e_label": e2e[0].label if e2e else None,
        "layerwise_label": lw[0].label if lw else None,
        "differentiation": differentiation,
        "x_range": x_range,
        "y_range": y_range,
        "bottleneck": bottlenecks,
    }


# ----------------------------------------------------------------------------
# Figures.


def _figure_tables(runs: Sequence[Run]) -> dict[str, tuple[list[dict], list[str]]]:
    """The tables the figures are drawn from, by figure stem (in report order).

    Runs without an information plane appear in the separability table only;
    a figure whose table would be empty is left out.
    """
    curves, profile, separability, cka = [], [], [], []
    planes = [r for r in runs if r.has_infoplane]
    has_cka = bool(planes) and all(
        "cka_x" in r.stats and "cka_y" in r.stats for r in planes
    )
    for r in planes:
        last = int(r.epochs[-1])
        for i, epoch in enumerate(r.epochs):
            for b, name in enumerate(r.block_names):
                curves.append(
                    {
                        "run": r.label,
                        "epoch": int(epoch),
                        "block": b,
                        "block_name": name,
                        "nhsic_x": float(r.stats["nhsic_x"][i, b]),
                        "nhsic_y": float(r.stats["nhsic_y"][i, b]),
                    }
                )
        for b, name in enumerate(r.block_names):
            base = {"run": r.label, "epoch": last, "block": b, "block_name": name}
            profile.append(
                base
                | {"nhsic_x": float(r.last("nhsic_x")[b])}
                | {"nhsic_y": float(r.last("nhsic_y")[b])}
            )
            if has_cka:
                cka.append(
                    base
                    | {"cka_x": float(r.last("cka_x")[b])}
                    | {"cka_y": float(r.last("cka_y")[b])}
                )
    for r in runs:
        probe = r.probe_acc
        for b, name in enumerate(r.block_names[: probe.shape[0]]):
            separability.append(
                {
                    "run": r.label,
                    "epoch": r.probe_epoch,
                    "block": b,
                    "block_name": name,
                    "probe_acc": float(probe[b]),
                }
            )
    head = ["run", "epoch", "block", "block_name"]
    tables = {
        "infoplane": (curves, [*head, "nhsic_x", "nhsic_y"]),
        "propagation": (profile, [*head, "nhsic_x", "nhsic_y"]),
        "dynamics": (curves, [*head, "nhsic_x", "nhsic_y"]),
        "separability": (separability, [*head, "probe_acc"]),
        "cka": (cka, [*head, "cka_x", "cka_y"]),
    }
    return {stem: table for stem, table in tables.items() if table[0]}


_CAPTIONS = {
    "infoplane": "Information plane: every layer's trajectory of "
    "(nHSIC(X;T), nHSIC(Y;T)) through the evaluated epochs, coloured by epoch; "
    "circle = first epoch, star = last epoch. Same axes in every panel.",
    "propagation": "Input-information propagation: nHSIC(X;T_l) and "
    "nHSIC(Y;T_l) against layer at the last evaluated epoch.",
    "dynamics": "Dynamics: every layer's nHSIC(X;T) and nHSIC(Y;T) against "
    "epoch (symmetric-log epoch axis).",
    "separability": "Linear separability: accuracy of each layer's "
    "detached auxiliary head (probe) on the test set at the last logged epoch.",
    "cka": "CKA-normalized HSIC of every layer with the input and the label at "
    "the last evaluated epoch.",
}


def _draw(stem: str, rows: list[dict]) -> Any:
    if stem == "infoplane":
        return plots.information_plane(rows)
    if stem == "propagation":
        return plots.layer_profile(
            rows, ("nhsic_x", "nhsic_y"), title="last evaluated epoch"
        )
    if stem == "dynamics":
        return plots.dynamics(rows, ("nhsic_x", "nhsic_y"))
    if stem == "separability":
        return plots.layer_profile(
            rows, ("probe_acc",), title="linear probes, last logged epoch"
        )
    return plots.layer_profile(rows, ("cka_x", "cka_y"), title="last evaluated epoch")


def write_figures(runs: Sequence[Run], out_dir: str | os.PathLike) -> list[Path]:
    """Draws every figure into ``out_dir/figures`` with its CSV beside it.

    Returns:
      The PNG paths, in report order.
    """
    figures_dir = Path(out_dir) / FIGURES_DIR
    tables = _figure_tables(runs)
    for stem in _CAPTIONS.keys() - tables.keys():  # Stale files of an old report.
        for suffix in (".png", ".csv"):
            (figures_dir / stem).with_suffix(suffix).unlink(missing_ok=True)
    written = []
    for stem, (rows, columns) in tables.items():
        fig = _draw(stem, rows)
        png, _ = plots.save(fig, rows, columns, figures_dir / f"{stem}.png")
        written.append(png)
    return written


# ----------------------------------------------------------------------------
# Markdown.


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _layer_table(runs: Sequence[Run], values: Mapping[str, np.ndarray], fmt) -> list:
    num = max(r.num_blocks for r in runs)
    names = {}
    for r in reversed(runs):
        names.update(enumerate(r.block_names))
    rows = []
    for b in range(num):
        row = [b, names.get(b, "")]
        for r in runs:
            v = values[r.label]
            row.append(fmt(float(v[b])) if b < v.shape[0] else "n/a")
        rows.append(row)
    return _table(["block", "name", *[r.label for r in runs]], rows)


def _more_or_less(ratio: float) -> str:
    if ratio > 1:
        return f"{100.0 * (ratio - 1):.1f}% more"
    if ratio < 1:
        return f"{100.0 * (1 - ratio):.1f}% less"
    return "exactly as much"


def _findings_md(runs: Sequence[Run], f: Mapping[str, Any]) -> list[str]:
    lines = ["## Findings", ""]
    lines += [
        "All numbers below are computed from the tables of this report. "
        '"Last epoch" is each run\'s last evaluated epoch.',
        "",
        "### (a) Input-information propagation",
        "",
        "Mean nHSIC(X;T_l) over the middle layers (every block except the first "
        "and the last; every block when there are at most two) at the last epoch.",
        "",
    ]
    rows = []
    for r in runs:
        mids = ", ".join(r.block_names[i] for i in middle_layers(r.num_blocks))
        rows.append([r.label, mids, _fmt(f["propagation"][r.label])])
    lines += _table(["run", "middle layers", "mean nHSIC(X;T)"], rows)
    lines.append("")
    ratio = f["ratio_e2e_layerwise"]
    if ratio is not None:
        e2e, lw = f["e2e_label"], f["layerwise_label"]
        lines.append(
            f"E2E / layer-wise = {_fmt(f['propagation'][e2e])} / "
            f"{_fmt(f['propagation'][lw])} = **{ratio:.3f}**: the middle layers of "
            f"{e2e} keep {_more_or_less(ratio)} dependence on the input than those "
            f"of {lw}."
        )
    else:
        lines.append(
            "Ratio E2E / layer-wise not computed: it needs one e2e and one "
            "layerwise run (with a non-zero layer-wise value)."
        )
    lines += [
        "",
        "### (b) Layer differentiation",
        "",
        "Both axes are divided by their ranges over every run, layer and epoch "
        f"of this report (nHSIC(X;T) by {f['x_range']:.4g}, nHSIC(Y;T) by "
        f"{f['y_range']:.4g}). u_l(e) is layer l's displacement in this "
        "normalized plane since the first evaluated epoch. D = mean over layer "
        "pairs (l < m) and evaluated epochs after the first of "
        "||u_l(e) - u_m(e)||: 0 when all layers move alike (parallel "
        "trajectories), larger when they take different paths. D_last is the "
        "same at the last epoch only (net movement); S_last is the mean "
        "pairwise distance between the layers' final positions.",
        "",
    ]
    diff = f["differentiation"]
    lines += _table(
        ["run", "D", "D_last", "S_last"],
        [[r.label, *(_fmt(v) for v in diff[r.label])] for r in runs],
    )
    lines.append("")
    finite = {k: v[0] for k, v in diff.items() if math.isfinite(v[0])}
    if len(finite) >= 2:
        most = max(finite, key=finite.get)
        least = min(finite, key=finite.get)
        lines.append(
            f"{most} differentiates its layers most (D = {finite[most]:.3f}), "
            f"{least} least (D = {finite[least]:.3f})."
        )
        e2e, lw = f["e2e_label"], f["layerwise_label"]
        if e2e in finite and lw in finite and finite[lw] > 0:
            r_d = finite[e2e] / finite[lw]
            lines[-1] += (
                f" D({e2e}) / D({lw}) = {r_d:.2f}: {e2e} layers are "
                + (
                    f"{'more' if r_d > 1 else 'less'} differentiated than"
                    if r_d != 1
                    else "as differentiated as"
                )
                + f" {lw} layers."
            )
    elif len(finite) == 1:
        ((label, value),) = finite.items()
        lines.append(f"Only one run: {label} has D = {value:.3f}.")
    else:
        lines.append(
            "D is undefined: every run has a single block or a single evaluated epoch."
        )
    lines += [
        "",
        "### (c) Information bottleneck at the last block",
        "",
        "nHSIC(X;T_L) of the last block over training, and nHSIC(Y;T_L) at the "
        "last epoch against its maximum C - 1 (one-hot labels). A rise (fall) is "
        f"a change of more than {100 * RISE_FALL_TOLERANCE:.0f}% relative to the "
        "first (peak) value.",
        "",
    ]
    rows = []
    for r in runs:
        b = f["bottleneck"][r.label]
        rows.append(
            [
                r.label,
                r.block_names[-1],
                _fmt(b["x_start"]),
                f"{_fmt(b['x_peak'])} (epoch {b['peak_epoch']})",
                _fmt(b["x_final"]),
                _fmt(b["drop_pct"], 1),
                "yes" if b["rise_then_fall"] else "no",
                _fmt(b["y_final"]),
                _fmt(b["y_max"]),
                _fmt(b["y_final_pct"], 1),
            ]
        )
    lines += _table(
        [
            "run", "last block", "nHSIC(X;T) first", "peak", "final",
            "drop from peak (%)", "rise then fall", "nHSIC(Y;T) final", "C - 1",
            "% of C - 1",
        ],
        rows,
    )  # fmt: skip
    lines.append("")
    for r in runs:
        lines.append("- " + _bottleneck_sentence(r, f["bottleneck"][r.label]))
    lines.append("")
    return lines


def _bottleneck_sentence(run: Run, b: Mapping[str, Any]) -> str:
    first_epoch = int(run.epochs[0])
    start = f"{run.label}: nHSIC(X;T_L) "
    if b["rise_then_fall"]:
        text = (
            f"rises from {b['x_start']:.3f} (epoch {first_epoch}) to a peak of "
            f"{b['x_peak']:.3f} at epoch {b['peak_epoch']}, then falls to "
            f"{b['x_final']:.3f} ({b['drop_pct']:.1f}% below the peak): it rises "
            "then compresses."
        )
    elif b["rises"]:
        text = (
            f"rises from {b['x_start']:.3f} to {b['x_peak']:.3f} (epoch "
            f"{b['peak_epoch']}) and ends at {b['x_final']:.3f}, "
            f"{_fmt(b['drop_pct'], 1)}% below its peak: no compression phase."
        )
    elif b["falls"]:
        text = (
            f"never rises above its epoch-{first_epoch} value {b['x_start']:.3f} "
            f"(by more than the tolerance); it ends at {b['x_final']:.3f}, "
            f"{_fmt(b['drop_pct'], 1)}% below its peak {b['x_peak']:.3f}."
        )
    else:
        text = f"stays near {b['x_start']:.3f} (ends at {b['x_final']:.3f})."
    if b["y_max"] is not None:
        text += (
            f" nHSIC(Y;T_L) ends at {b['y_final']:.3f}, {b['y_final_pct']:.1f}% of "
            f"its maximum C - 1 = {b['y_max']}."
        )
    else:
        text += (
            f" nHSIC(Y;T_L) ends at {b['y_final']:.3f} (C unknown, so no "
            "maximum to compare with)."
        )
    return start + text


def _relpath(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # Different drives on Windows.
        return str(path)


def render_markdown(
    runs: Sequence[Run],
    findings: Mapping[str, Any],
    figures: Sequence[Path],
    out_dir: Path,
) -> str:
    """The text of report.md (tables, figures, findings)."""
    models = sorted({r.model for r in runs if r.model})
    datasets = sorted({r.dataset for r in runs if r.dataset})
    title = "hsicib report"
    if models or datasets:
        title += ": " + ", ".join(models) + (" on " if datasets else "")
        title += ", ".join(datasets)
    lines = [f"# {title}", "", "## Runs", ""]
    lines += _table(
        ["run", "mode", "model", "dataset", "blocks", "epochs", "directory"],
        [
            [
                r.label, r.mode, r.model, r.dataset, r.num_blocks,
                r.summary.get("epochs", "n/a"),
                f"`{_relpath(r.path, out_dir)}`",
            ]
            for r in runs
        ],
    )  # fmt: skip
    lines += ["", "## Final test accuracy", ""]
    lines += _table(
        ["run", "final test accuracy (%)", "wall time (s)", "of it nHSIC tracking (s)"],
        [
            [
                r.label,
                _pct(r.summary.get("final_test_acc")),
                _fmt(_float_or_none(r.summary.get("wall_time_s")), 1),
                _fmt(_float_or_none(r.summary.get("hsic_time_s")), 1),
            ]
            for r in runs
        ],
    )
    lines += ["", "## Per-layer statistics at the last epoch", ""]
    planes = [r for r in runs if r.has_infoplane]
    if planes:
        last_epochs = ", ".join(f"{r.label}: {int(r.epochs[-1])}" for r in planes)
        lines += [f"Last evaluated epoch per run: {last_epochs}.", ""]
    for r in runs:
        if not r.has_infoplane:
            lines += [f"{r.label} has no information plane (no infoplane.csv).", ""]
    for statistic, caption in (
        ("nhsic_x", "nHSIC(X;T_l)"),
        ("nhsic_y", "nHSIC(Y;T_l)"),
    ):
        if planes:
            lines += [f"### {caption}", ""]
            values = {r.label: r.last(statistic) for r in planes}
            lines += _layer_table(planes, values, lambda v: f"{v:.3f}")
            lines.append("")
    lines += ["### Probe accuracy (%)", ""]
    epochs = ", ".join(f"{r.label}: {r.probe_epoch}" for r in runs)
    lines += [
        f"Test accuracy of each block's detached linear head (epoch {epochs}).",
        "",
    ]
    lines += _layer_table(
        runs, {r.label: r.probe_acc for r in runs}, lambda v: f"{100 * v:.2f}"
    )
    lines += ["", "## Figures", ""]
    for png in figures:
        rel = _relpath(png, out_dir).replace(os.sep, "/")
        lines += [
            f"![{png.stem}]({rel})",
            "",
            f"*{_CAPTIONS.get(png.stem, png.stem)}* Data: `{rel[: -len('.png')]}.csv`.",
            "",
        ]
    if findings:
        lines += _findings_md(planes, findings)
    else:
        lines += ["## Findings", "", "None: no run has an information plane.", ""]
    return "\n".join(lines)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def write_report(
    run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike
) -> Path:
    """Writes ``out_dir/report.md`` and ``out_dir/figures/*`` for some runs.

    Args:
      run_dirs: run directories and/or comparison directories (see
        ``find_run_dirs``).
      out_dir: where to write; created if needed.

    Returns:
      The path of report.md.

    Raises:
      ValueError: if a directory is missing, of neither kind, or a run's files
        are missing or malformed.
    """
    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    findings = compute_findings(runs)
    figures = write_figures(runs, out_dir)
    text = render_markdown(runs, findings, figures, out_dir)
    path = out_dir / REPORT_NAME
    tmp = path.with_name("." + REPORT_NAME + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    logging.info("Wrote %s (%d runs, %d figures)", path, len(runs), len(figures))
    return path
