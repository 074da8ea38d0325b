"""Figures of the information-plane report, drawn from plain tables.

Every function here takes a table, a list of row dicts (exactly the rows that
``save`` writes to the CSV beside the PNG), and returns a matplotlib ``Figure``.
Figures are built with the object-oriented API (``matplotlib.figure.Figure``,
rendered by the Agg canvas), so importing this module never changes the
pyplot backend of the caller.

Common columns: ``run`` (the label of a run, e.g. its training mode), ``epoch``,
``block`` (0-based block index), ``block_name``, and the plotted statistics
(``nhsic_x``, ``nhsic_y``, ``probe_acc``, ``cka_x``, ``cka_y``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import cm, colors
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hsicib import infoplane

LABELS = {
    "nhsic_x": "nHSIC(X; T)",
    "nhsic_y": "nHSIC(Y; T)",
    "cka_x": "CKA(X; T)",
    "cka_y": "CKA(Y; T)",
    "probe_acc": "probe accuracy",
}
"""Axis labels of the statistics."""

_EPOCH_CMAP = "viridis"
_LAYER_CMAP = "plasma"
_DPI = 100


def _runs(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Run labels in order of first appearance."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(str(r["run"]), None)
    return list(seen)


def run_colors(runs: Sequence[str]) -> dict[str, Any]:
    """One fixed colour per run (the tab10 cycle, in the given order)."""
    palette = matplotlib.colormaps["tab10"]
    return {run: palette(i % 10) for i, run in enumerate(runs)}


def _select(rows: Sequence[Mapping[str, Any]], run: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if str(r["run"]) == run]


def _blocks(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """Sorted block indices and their names."""
    names = {int(r["block"]): str(r["block_name"]) for r in rows}
    blocks = np.array(sorted(names), dtype=np.int64)
    return blocks, [names[b] for b in blocks]


def _trajectory(
    rows: Sequence[Mapping[str, Any]], block: int, columns: Sequence[str]
) -> tuple[np.ndarray, ...]:
    """(epochs, column values...) of one block, sorted by epoch."""
    chosen = sorted(
        (r for r in rows if int(r["block"]) == block), key=lambda r: int(r["epoch"])
    )
    epochs = np.array([int(r["epoch"]) for r in chosen], dtype=np.float64)
    values = [np.array([float(r[c]) for r in chosen]) for c in columns]
    return (epochs, *values)


def _limits(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(0.05 * abs(hi), 0.05)
    return lo - pad, hi + pad


def _grid(num_panels: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(num_panels, max_cols)
    return (num_panels + cols - 1) // cols, cols


def information_plane(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str = "nhsic_x",
    y: str = "nhsic_y",
) -> Figure:
    """Information planes, one panel per run, shared axis limits.

    Each layer is a trajectory through its evaluated epochs in the (x, y)
    plane; segments and points are coloured by epoch (colourbar, symmetric-log
    scale), the start
    (first evaluated epoch) is a hollow circle, the end (last epoch) a star
    labelled with the block name.

    Args:
      rows: table with columns ``run``, ``epoch``, ``block``, ``block_name``,
        ``x`` and ``y``.
      x: column on the horizontal axis.
      y: column on the vertical axis.

    Returns:
      The figure.
    """
    runs = _runs(rows)
    nrows, ncols = _grid(len(runs))
    fig = Figure(figsize=(4.2 * ncols + 1.0, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    all_x = np.array([float(r[x]) for r in rows])
    all_y = np.array([float(r[y]) for r in rows])
    all_epochs = np.array([int(r["epoch"]) for r in rows], dtype=np.float64)
    # Symmetric-log colour scale: linear below epoch 1, logarithmic above, so
    # the dense early evaluations do not all get the same colour.
    norm = colors.SymLogNorm(
        linthresh=1.0, vmin=all_epochs.min(), vmax=max(all_epochs.max(), 1.0)
    )
    cmap = matplotlib.colormaps[_EPOCH_CMAP]
    xlim, ylim = _limits(all_x), _limits(all_y)
    for ax, run in zip(axes, runs, strict=False):
        run_rows = _select(rows, run)
        blocks, names = _blocks(run_rows)
        for block, name in zip(blocks, names, strict=True):
            epochs, xs, ys = _trajectory(run_rows, int(block), (x, y))
            points = np.stack([xs, ys], axis=1)
            if len(points) > 1:
                segments = np.stack([points[:-1], points[1:]], axis=1)
                lines = LineCollection(segments, cmap=cmap, norm=norm, linewidths=1.5)
                lines.set_array(epochs[1:])
                ax.add_collection(lines)
            ax.scatter(xs, ys, c=epochs, cmap=cmap, norm=norm, s=10, zorder=3)
            ax.scatter(
                xs[:1], ys[:1], marker="o", s=55, facecolors="white",
                edgecolors="black", linewidths=1.0, zorder=4,
            )  # fmt: skip
            ax.scatter(
                xs[-1:], ys[-1:], marker="*", s=110, c="black", zorder=5,
            )  # fmt: skip
            ax.annotate(
                name, (xs[-1], ys[-1]), xytext=(4, 4), textcoords="offset points",
                fontsize=7,
            )  # fmt: skip
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_title(run)
        ax.set_xlabel(LABELS.get(x, x))
        ax.set_ylabel(LABELS.get(y, y))
        ax.grid(alpha=0.3)
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    mappable = cm.ScalarMappable(norm=norm, cmap=cmap)
    top = int(norm.vmax)
    ticks = sorted({int(norm.vmin), top} | {10**k for k in range(6) if 10**k < top})
    cbar = fig.colorbar(mappable, ax=list(axes[: len(runs)]), label="epoch")
    cbar.set_ticks(ticks, labels=[str(t) for t in ticks])
    axes[0].legend(
        handles=[
            Line2D([], [], marker="o", ls="", mfc="white", mec="black", label="start"),
            Line2D([], [], marker="*", ls="", color="black", ms=10, label="end"),
        ],
        fontsize=7,
        loc="best",
    )
    return fig


def layer_profile(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    title: str = "",
) -> Figure:
    """Statistics against block index, runs overlaid, one panel per column.

    Args:
      rows: table with columns ``run``, ``block``, ``block_name`` and every
        name in ``columns`` (one row per run and block).
      columns: statistics to draw, one panel each.
      title: figure title.

    Returns:
      The figure.
    """
    runs = _runs(rows)
    palette = run_colors(runs)
    fig = Figure(figsize=(4.4 * len(columns), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(columns), squeeze=False)).ravel()
    blocks, names = _blocks(rows)
    for ax, column in zip(axes, columns, strict=True):
        for run in runs:
            run_rows = sorted(_select(rows, run), key=lambda r: int(r["block"]))
            bx = [int(r["block"]) for r in run_rows]
            vals = [float(r[column]) for r in run_rows]
            ax.plot(bx, vals, marker="o", color=palette[run], label=run)
        ax.set_xticks(blocks, names, rotation=45 if len(blocks) > 6 else 0)
        ax.set_xlabel("block")
        ax.set_ylabel(LABELS.get(column, column))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def dynamics(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Figure:
    """Every layer's statistics against epoch; one row of panels per run.

    The epoch axis is symmetric-log (linear below 1), which spreads the
    log-spaced early evaluations. Lines are coloured by block index.

    Args:
      rows: table with columns ``run``, ``epoch``, ``block``, ``block_name``
        and every name in ``columns``.
      columns: statistics to draw, one panel column each (y shared per column).

    Returns:
      The figure.
    """
    runs = _runs(rows)
    fig = Figure(
        figsize=(4.4 * len(columns), 2.9 * len(runs) + 0.6), layout="constrained"
    )
    axes = fig.subplots(len(runs), len(columns), squeeze=False, sharey="col")
    blocks, _ = _blocks(rows)
    layer_cmap = matplotlib.colormaps[_LAYER_CMAP]
    shade = lambda b: layer_cmap(0.85 * b / max(len(blocks) - 1, 1))
    for i, run in enumerate(runs):
        run_rows = _select(rows, run)
        run_blocks, names = _blocks(run_rows)
        for j, column in enumerate(columns):
            ax = axes[i, j]
            for block, name in zip(run_blocks, names, strict=True):
                epochs, vals = _trajectory(run_rows, int(block), (column,))
                ax.plot(epochs, vals, color=shade(int(block)), label=name, lw=1.3)
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_title(f"{run}: {LABELS.get(column, column)}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=7, ncol=2)
    return fig


def save(
    fig: Figure,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    png_path: str | os.PathLike,
) -> tuple[Path, Path]:
    """Saves ``fig`` as PNG and the table it was drawn from as CSV beside it.

    Args:
      fig: the figure.
      rows: the table the figure was drawn from.
      columns: the CSV header.
      png_path: destination of the PNG; the CSV gets the same stem and
        ``.csv``.

    Returns:
      ``(png_path, csv_path)``.
    """
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path = infoplane.write_csv_atomic(png_path.with_suffix(".csv"), rows, columns)
    fig.savefig(png_path, dpi=_DPI)
    return png_path, csv_path
