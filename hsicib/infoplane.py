"""Per-layer information-plane tracking and linear separability.

Synopsis::

    epochs = eval_epochs(100)                       # when to evaluate
    track = make_tracker(model, images, labels, num_classes=10, config=cfg)
    stats = track(state.variables)                  # one compiled call
    rows = to_rows(stats, epoch=e, step=s, block_names=model.block_names)
    write_csv_atomic(workdir / "infoplane.csv", all_rows, COLUMNS)

At every evaluated epoch the network runs in evaluation mode on a fixed subset
of examples (the same subset every time). Every block output T_l is collected and
``hsicib.hsic.all_layers`` turns them, the flattened input X and the labels Y
into the normalized HSIC nHSIC(X;T_l), nHSIC(Y;T_l) (the information plane of
Sakamoto & Sato, TMLR 2024) and the CKA-normalized HSIC of every layer. The
auxiliary heads, which sit behind a ``stop_gradient``, give the linear
separability (probe accuracy) of every layer in the same forward pass.

The tables written here are the input of ``hsicib.report``.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hsicib import hsic

STATISTICS = ("nhsic_x", "nhsic_y", "cka_x", "cka_y")
"""The statistics of one layer written to ``infoplane.csv``, in this order."""

COLUMNS = ("epoch", "step", "block", "block_name", "statistic", "value")
"""Columns of ``infoplane.csv``: one row per (epoch, block, statistic)."""

_INT_COLUMNS = ("epoch", "step", "block")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def eval_epochs(
    num_epochs: int,
    *,
    every: int = 10,
    num_log: int = 8,
    log_until: int | None = None,
) -> tuple[int, ...]:
    """Epochs at which the information plane is evaluated.

    Epoch 0 means "before any training"; epoch e means "after e epochs". The
    schedule is the union of

    * 0, the initialization;
    * ``num_log`` log-spaced epochs in [1, ``log_until``] (``log_until``
      defaults to ``every``), rounded to integers; duplicates after rounding
      collapse, so fewer points may remain. Early training moves fastest, so it
      is sampled densest;
    * every ``every``-th epoch: ``every``, ``2 * every``, ...;
    * ``num_epochs``, the last epoch, always.

    Epochs above ``num_epochs`` are dropped.

    Args:
      num_epochs: total number of training epochs, >= 0.
      every: spacing of the regular evaluations, >= 1.
      num_log: number of log-spaced early evaluations, >= 0.
      log_until: last epoch of the log-spaced part, >= 1; ``None`` means
        ``every``.

    Returns:
      Sorted, unique epochs, a tuple of Python ints starting with 0 and ending
      with ``num_epochs``.

    Example:
      ``eval_epochs(100)`` is ``(0, 1, 2, 3, 4, 5, 7, 10, 20, ..., 100)``.
    """
    num_epochs = _check_int("num_epochs", num_epochs, 0)
    every = _check_int("every", every, 1)
    num_log = _check_int("num_log", num_log, 0)
    if log_until is None:
        log_until = every
    log_until = _check_int("log_until", log_until, 1)
    epochs = {0, num_epochs}
    if num_log > 0:
        log_points = np.geomspace(1.0, float(log_until), num_log)
        epochs.update(round(e) for e in log_points)
    epochs.update(range(every, num_epochs + 1, every))
    return tuple(sorted(e for e in epochs if e <= num_epochs))


def _forward_in_chunks(
    model: Any, variables: Any, images: jax.Array, batch_size: int | None
) -> Any:
    """Evaluation-mode forward pass, optionally ``batch_size`` examples at a time.

    Examples are padded to a multiple of ``batch_size`` (padding is dropped from
    the outputs), and ``jax.lax.map`` runs the chunks one after the other, so
    peak activation memory is that of one chunk.
    """
    num_blocks = model.num_blocks
    apply = lambda x: model.apply(
        variables,
        x,
        train=False,
        cut_after=(False,) * num_blocks,
        detach_head=(True,) * num_blocks,
    )
    keep = lambda out: (tuple(out.features), tuple(out.probe_logits), out.logits)
    n = images.shape[0]
    if batch_size is None or batch_size >= n:
        return keep(apply(images))
    num_chunks = math.ceil(n / batch_size)
    pad = num_chunks * batch_size - n
    padded = jnp.pad(images, [(0, pad)] + [(0, 0)] * (images.ndim - 1))
    chunks = padded.reshape((num_chunks, batch_size, *images.shape[1:]))
    stacked = jax.lax.map(lambda x: keep(apply(x)), chunks)
    unchunk = lambda a: a.reshape((num_chunks * batch_size, *a.shape[2:]))[:n]
    return jax.tree_util.tree_map(unchunk, stacked)


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def make_tracker(
    model: Any,
    eval_images: Any,
    eval_labels: Any,
    *,
    num_classes: int,
    config: hsic.HSICConfig,
    batch_size: int | None = None,
) -> Callable[[Mapping[str, Any]], dict[str, jax.Array]]:
    """Builds the per-epoch information-plane evaluation of ``model``.

    The returned function runs ``model`` in evaluation mode
    (``train=False``, no gradient cut, every auxiliary head detached) on the
    fixed evaluation subset, collects the output T_l of every block and calls
    ``hsicib.hsic.all_layers`` once with X = the flattened input images and
    Y = the labels. Everything happens in one jitted function whose inputs are
    the variables and the (device-resident) subset, so it compiles once per
    parameter structure and never synchronizes with the host; the caller
    decides when to fetch the results.

    Args:
      model: a ``hsicib.models`` BlockNet (has ``num_blocks``; ``apply`` returns
        a NetOutput with ``features``, ``probe_logits`` and ``logits``).
      eval_images: float32 normalized images, shape (n, height, width,
        channels) (any (n, ...) the model accepts); typically 1,000 test
        examples fixed by the caller.
      eval_labels: integer labels in [0, num_classes), shape (n,).
      num_classes: number of classes C.
      config: kernel and estimator settings for ``hsic.all_layers`` (chunk
        size, sigma, distance, ...).
      batch_size: if given, the forward pass runs this many examples at a time
        (bounds activation memory; the statistics are unchanged).

    Returns:
      ``track(variables) -> stats`` where ``variables`` is the Flax variable
      dict (``{"params": ..., "batch_stats": ...}``) and ``stats`` holds
      ``"nhsic_x"``, ``"nhsic_y"``, ``"cka_x"``, ``"cka_y"``, ``"probe_acc"``
      (each shape (L,), L = number of blocks; probe_acc is the accuracy of
      block l's auxiliary head) and ``"test_acc_subset"`` (scalar, accuracy of
      the final classifier on the subset).

    Raises:
      ValueError: on mismatched shapes, labels that are not a vector, a
        number of examples that is not a multiple of ``config.chunk_size``,
        non-positive ``num_classes`` or ``batch_size``.
    """
    num_classes = _check_int("num_classes", num_classes, 1)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size, 1)
    images = jnp.asarray(eval_images, dtype=jnp.float32)
    labels = jnp.asarray(eval_labels)
    if images.ndim < 2:
        raise ValueError(
            "eval_images must have shape (n, ...) with n examples, got shape "
            f"{images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"eval_labels must have shape ({images.shape[0]},) to match "
            f"eval_images, got shape {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"eval_labels must be integer class indices, got dtype {labels.dtype}"
        )
    labels = labels.astype(jnp.int32)
    chunk = getattr(config, "chunk_size", None)
    if chunk is not None and images.shape[0] % chunk:
        raise ValueError(
            f"the number of evaluation examples ({images.shape[0]}) must be a "
            f"multiple of config.chunk_size={chunk}"
        )

    @jax.jit
    def _track(variables, x, y):
        features, probe_logits, logits = _forward_in_chunks(
            model, variables, x, batch_size
        )
        stats = hsic.all_layers(
            x.reshape(x.shape[0], -1),
            y,
            features,
            num_classes=num_classes,
            config=config,
        )
        out = {name: stats[name] for name in STATISTICS}
        out["probe_acc"] = jnp.stack([_accuracy(p, y) for p in probe_logits])
        out["test_acc_subset"] = _accuracy(logits, y)
        return out

    def track(variables: Mapping[str, Any]) -> dict[str, jax.Array]:
        return _track(variables, images, labels)

    track.jitted = _track  # Exposed for compile-count checks.
    return track


def to_rows(
    stats: Mapping[str, Any],
    *,
    epoch: int,
    step: int,
    block_names: Sequence[str],
) -> list[dict[str, Any]]:
    """Turns one tracker result into ``infoplane.csv`` rows.

    Args:
      stats: the tracker's output (at least every name in ``STATISTICS``, each
        shape (L,)); device arrays are fetched here.
      epoch: the evaluated epoch (0 = before training).
      step: the global optimizer step at that time.
      block_names: the L block names, in block order.

    Returns:
      L * len(STATISTICS) dicts with keys ``COLUMNS``, ordered by
      statistic then block; ``block`` is the 0-based block index and ``value``
      a Python float.

    Raises:
      ValueError: if a statistic is missing or its length is not L.
    """
    epoch = _check_int("epoch", epoch, 0)
    step = _check_int("step", step, 0)
    names = [str(n) for n in block_names]
    rows = []
    for statistic in STATISTICS:
        if statistic not in stats:
            raise ValueError(
                f"stats must contain {statistic!r}; got keys {sorted(stats)}"
            )
        values = np.asarray(stats[statistic], dtype=np.float64).reshape(-1)
        if values.shape[0] != len(names):
            raise ValueError(
                f"stats[{statistic!r}] must have one value per block "
                f"({len(names)}), got shape {values.shape}"
            )
        for block, (name, value) in enumerate(zip(names, values, strict=True)):
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "block": block,
                    "block_name": name,
                    "statistic": statistic,
                    "value": float(value),
                }
            )
    return rows


def write_csv_atomic(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
) -> Path:
    """Writes ``rows`` as a CSV file that readers never see half-written.

    The table goes to a temporary file in the same directory, which then
    replaces ``path`` with ``os.replace`` (atomic on POSIX and Windows).
    Floats are written with ``repr`` so they read back exactly.

    Args:
      path: destination file; its directory is created if needed.
      rows: dicts holding at least ``columns`` (extra keys are an error).
      columns: the header, in order.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      ValueError: if ``columns`` is empty or a row lacks a column / has extra
        keys.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("columns must name at least one column, got []")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="raise")
            writer.writeheader()
            for row in rows:
                missing = [c for c in columns if c not in row]
                if missing:
                    raise ValueError(
                        f"every row must have the columns {columns}; row {row!r} "
                        f"lacks {missing}"
                    )
                writer.writerow({c: _format_cell(row[c]) for c in columns})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _format_cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def read_infoplane(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads an ``infoplane.csv`` written with ``COLUMNS``.

    Args:
      path: the CSV file.

    Returns:
      One dict per row with ``epoch``, ``step``, ``block`` as int, ``value`` as
      float, ``block_name`` and ``statistic`` as str.

    Raises:
      ValueError: if the header lacks a column or a cell does not parse.
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path} must have the columns {list(COLUMNS)}; missing {missing}"
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                row = {c: int(raw[c]) for c in _INT_COLUMNS}
                row["block_name"] = raw["block_name"]
                row["statistic"] = raw["statistic"]
                row["value"] = float(raw["value"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}, line {line}: cannot parse {raw!r}") from e
            rows.append(row)
    return rows


def to_arrays(
    rows: Iterable[Mapping[str, Any]],
) -> tuple[np.ndarray, tuple[str, ...], dict[str, np.ndarray]]:
    """Pivots information-plane rows into per-statistic (epoch, block) arrays.

    Args:
      rows: rows as returned by ``read_infoplane`` or ``to_rows``.

    Returns:
      ``(epochs, block_names, values)``: the sorted unique epochs, shape (E,);
      the L block names by block index; and for every statistic present a
      float64 array of shape (E, L) (NaN where a row is missing). If an epoch
      appears twice (a resumed run), the last row wins.

    Raises:
      ValueError: if there are no rows.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows must hold at least one information-plane row, got 0")
    epochs = np.array(sorted({int(r["epoch"]) for r in rows}), dtype=np.int64)
    num_blocks = max(int(r["block"]) for r in rows) + 1
    names = [""] * num_blocks
    index = {int(e): i for i, e in enumerate(epochs)}
    values: dict[str, np.ndarray] = {}
    for r in rows:
        block = int(r["block"])
        names[block] = str(r["block_name"])
        table = values.setdefault(
            str(r["statistic"]), np.full((len(epochs), num_blocks), np.nan)
        )
        table[index[int(r["epoch"])], block] = float(r["value"])
    return epochs, tuple(names), values
