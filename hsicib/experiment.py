"""Runs a config: one mode into a workdir, or several modes side by side.

``run(config, workdir)`` is what ``python -m experiments.run`` calls. One mode
writes its run directly into ``workdir``; several modes (a comparison) write
``workdir/<mode>/`` each (``modules:2`` -> ``modules_2``), one after another with
the same seed, initialization, data order and schedule, then the report.

A run directory holds ``config.json``, ``metrics.jsonl`` (a row per evaluated
epoch), ``infoplane.csv`` (epoch, step, block, block_name, statistic, value),
``summary.json`` and ``checkpoints/``. Rerunning the same command resumes from
the last complete checkpoint; the tables are cut back to that epoch and
rewritten, so rows are never duplicated. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from hsicib import checkpoint as ckpt_lib
from hsicib import config as config_lib
from hsicib import data as data_lib
from hsicib import hsic, infoplane, models, training


class RunError(RuntimeError):
    """A run cannot go on (non-finite loss, workdir of another config)."""


def modes_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The config's modes as a tuple (``modes`` may be one string)."""
    return (config.modes,) if isinstance(config.modes, str) else tuple(config.modes)


def mode_dir(mode: str) -> str:
    """Directory name of a mode inside a comparison workdir."""
    return mode.replace(":", "_")


# --------------------------------------------------------------------------- #
# Atomic files
# --------------------------------------------------------------------------- #


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and ``os.replace``.

    Only process 0 writes (multi-host runs); the others return at once.
    """
    if jax.process_index() != 0:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(path: Path, rows: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """A JSON round-trippable dict of the config (tuples become lists)."""
    return json.loads(config.to_json())


# --------------------------------------------------------------------------- #
# Config checks against a workdir
# --------------------------------------------------------------------------- #

# Fields that may differ when rerunning into an existing workdir.
_RESUME_FREE = ("mode", "train.log_every_s", "train.steps_per_call")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """Fields whose values differ, as ``field: old -> new`` lines."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in _RESUME_FREE:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(
                f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}"
            )
    return lines


def check_workdir(workdir: Path, config_dict: dict, *, overwrite: bool) -> None:
    """Refuses a workdir that holds a run of a different config."""
    path = workdir / "config.json"
    if overwrite or not path.exists():
        return
    with open(path) as f:
        old = json.load(f)
    diff = config_diff(old, config_dict)
    if diff:
        raise RunError(
            f"workdir {workdir} holds a run of a different config ("
            + "; ".join(diff[:8])
            + ("; ..." if len(diff) > 8 else "")
            + "); use another --workdir, or pass --overwrite to discard that run"
        )


# --------------------------------------------------------------------------- #
# One mode
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class _Progress:
    """Logs a progress line with throughput and ETA at most every ``period_s``."""

    total_steps: int
    batch_size: int
    period_s: float
    start: float = dataclasses.field(default_factory=time.perf_counter)
    last: float = dataclasses.field(default_factory=time.perf_counter)
    done_at_start: int = 0

    def update(self, mode: str, epoch: int, step: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.last < self.period_s and step < self.total_steps:
            return
        self.last = now
        done = step - self.done_at_start
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total_steps - step) / max(rate, 1e-9)
        logging.info(
            "[%s] epoch %d step %d/%d loss %.4f | %.0f images/s | ETA %s",
            mode,
            epoch,
            step,
            self.total_steps,
            loss,
            rate * self.batch_size,
            _fmt_seconds(eta),
        )


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _hsic_config(c: ml_collections.ConfigDict) -> hsic.HSICConfig:
    return hsic.HSICConfig(
        sigma=c.hsic.sigma,
        bandwidth=c.hsic.bandwidth,
        distance=c.hsic.distance,
        eps=c.hsic.eps,
        chunk_size=c.hsic.chunk_size or None,
        solver=c.hsic.solver,
    )


def build_model(c: ml_collections.ConfigDict, num_classes: int):
    """The config's network (identical for every mode)."""
    dtype = jnp.bfloat16 if c.train.precision == "bfloat16" else jnp.float32
    return models.build_model(
        c.model.name,
        num_classes=num_classes,
        local_loss=c.loss.local,
        head=c.model.head,
        head_hidden=c.model.head_hidden,
        proj_dim=c.model.proj_dim,
        dropout=c.model.dropout,
        batch_norm=c.model.batch_norm,
        max_head_features=c.model.max_head_features,
        width_mult=c.model.width_mult,
        dtype=dtype,
    )


def load_data(c: ml_collections.ConfigDict) -> data_lib.Dataset:
    """Loads the config's data set and checks it against the config.

    With ``data.layout="sharded"`` on several processes, each process loads
    only its contiguous share of the training rows (``train_shard``), and
    normalization statistics that are not fixed constants are computed from
    the pixel histograms of all processes together, so every process
    normalizes alike.
    """
    procs = jax.process_count()
    shard = (
        (jax.process_index(), procs)
        if c.data.layout == "sharded" and procs > 1
        else None
    )
    ds = data_lib.load_dataset(
        c.data.source,
        c.data.name,
        data_dir=c.data.data_dir or None,
        synthetic_shape=tuple(c.data.synthetic_shape),
        synthetic_size=tuple(c.data.synthetic_size),
        num_classes=c.data.num_classes or None,
        seed=c.seed,
        download=c.data.download,
        train_shard=shard,
    )
    if shard is not None and not data_lib.has_known_stats(ds.name, ds.image_shape[-1]):
        from jax.experimental import multihost_utils

        counts = multihost_utils.process_allgather(
            data_lib.pixel_histogram(ds.train_images)
        )
        mean, std = data_lib.stats_from_histogram(np.asarray(counts).sum(axis=0))
        ds = dataclasses.replace(ds, mean=mean, std=std)
    n = ds.train_images.shape[0] * (procs if shard is not None else 1)
    if c.train.batch_size > n:
        raise config_lib.ConfigError(
            f"train.batch_size={c.train.batch_size} is larger than the training set "
            f"({n} examples); allowed: 1..{n}"
        )
    n_dev = c.train.num_devices or jax.device_count()
    for field in ("batch_size", "eval_batch_size"):
        value = c.train[field]
        if value % n_dev:
            raise config_lib.ConfigError(
                f"train.{field}={value} must be a multiple of the number of devices "
                f"({n_dev})"
            )
    return ds


def make_mesh(c: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """A one-axis ``"data"`` mesh over ``train.num_devices`` devices (0 = all).

    Devices are ordered by process, then id, so that each process's devices
    are one contiguous block of the axis (its rows of a sharded data set).
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    n = c.train.num_devices or len(devices)
    if n > len(devices):
        raise config_lib.ConfigError(
            f"train.num_devices={n} exceeds the {len(devices)} available devices"
        )
    if n < len(devices) and jax.process_count() > 1:
        raise config_lib.ConfigError(
            f"train.num_devices={n}: a multi-process run uses every device "
            f"({len(devices)}); set it to 0"
        )
    return jax.sharding.Mesh(np.asarray(devices[:n]), ("data",))


@dataclasses.dataclass(frozen=True)
class TrainData:
    """The training set on device and how epochs are cut into batches.

    ``layout="replicated"``: every device holds all N rows; an epoch is
    ``epoch_batches`` over them. ``layout="sharded"``: device d holds
    ``per_device`` rows (global rows d per_device ..), each process having
    put only its own rows; an epoch is ``sharded_epoch_batches`` of local
    indices, B / D per device per batch.
    """

    images: jax.Array
    labels: jax.Array
    layout: str
    num_examples: int  # N used for training (sharded: D * per_device)
    steps_per_epoch: int
    per_device: int
    mesh: jax.sharding.Mesh

    def epoch(self, key: jax.Array, batch: int) -> jax.Array:
        """(steps_per_epoch, batch) int32 batch indices of one epoch."""
        if self.layout == "replicated":
            return data_lib.epoch_batches(key, self.num_examples, batch)
        order = data_lib.sharded_epoch_batches(
            key, self.per_device, self.mesh.size, batch
        )
        sharding = NamedSharding(self.mesh, PartitionSpec(None, "data"))
        return jax.make_array_from_callback(order.shape, sharding, lambda i: order[i])


def put_train_data(
    c: ml_collections.ConfigDict, ds: data_lib.Dataset, mesh: jax.sharding.Mesh
) -> TrainData:
    """Places the training set on the mesh in the config's ``data.layout``."""
    batch = c.train.batch_size
    images, labels = ds.train_images, ds.train_labels.astype(np.int32)
    if c.data.layout == "replicated":
        replicated = NamedSharding(mesh, PartitionSpec())
        n = images.shape[0]
        return TrainData(
            *jax.device_put((images, labels), replicated),
            layout="replicated",
            num_examples=n,
            steps_per_epoch=n // batch,
            per_device=n,
            mesh=mesh,
        )
    num_dev = mesh.size
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    per_device = images.shape[0] // local
    if per_device < batch // num_dev:
        raise config_lib.ConfigError(
            f"train.batch_size={batch} needs {batch // num_dev} examples per device "
            f"but data.layout='sharded' leaves {per_device} on each of {num_dev}"
        )
    rows = per_device * local
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    shape = (per_device * num_dev, *images.shape[1:])
    put = jax.make_array_from_process_local_data
    return TrainData(
        images=put(sharding, images[:rows], shape),
        labels=put(sharding, labels[:rows], shape[:1]),
        layout="sharded",
        num_examples=shape[0],
        steps_per_epoch=per_device // (batch // num_dev),
        per_device=per_device,
        mesh=mesh,
    )


def epochs_of(c: ml_collections.ConfigDict, mode: str, num_blocks: int) -> int:
    """Total epochs of a mode: sequential runs ``stage_epochs`` per block."""
    if mode == "sequential":
        return num_blocks * c.train.sequential_stage_epochs
    return c.train.epochs


def train_mode(
    c: ml_collections.ConfigDict, mode: str, run_dir: Path, ds: data_lib.Dataset
) -> dict:
    """Trains one mode into ``run_dir`` (resuming if it holds a checkpoint).

    Returns:
      The summary dict also written to ``run_dir/summary.json``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    num_classes = ds.num_classes
    model = build_model(c, num_classes)
    num_blocks = model.num_blocks
    block_names = list(model.block_names)
    kind, _ = training.parse_mode(mode, num_blocks)
    routing = training.make_routing(
        "layerwise" if kind == "sequential" else mode, num_blocks
    )
    mesh = make_mesh(c)
    train_data = put_train_data(c, ds, mesh)
    batch = c.train.batch_size
    steps_per_epoch = train_data.steps_per_epoch
    num_epochs = epochs_of(c, mode, num_blocks)
    stage_epochs = (
        c.train.sequential_stage_epochs if kind == "sequential" else num_epochs
    )

    def stage_of(epoch: int) -> int | None:
        """Sequential stage that trains epoch index ``epoch`` (0-based)."""
        return epoch // stage_epochs if kind == "sequential" else None

    schedule = training.make_schedule(
        name=c.train.sequential_schedule if kind == "sequential" else c.optim.schedule,
        learning_rate=c.optim.lr,
        steps_per_epoch=steps_per_epoch,
        num_epochs=stage_epochs,
        milestones=c.optim.milestones,
        gamma=c.optim.gamma,
        warmup_epochs=c.optim.warmup_epochs,
    )
    compute_dtype = jnp.bfloat16 if c.train.precision == "bfloat16" else jnp.float32
    step_cfg = training.StepConfig(
        num_classes=num_classes,
        mean=tuple(ds.mean),
        std=tuple(ds.std),
        local_loss=c.loss.local,
        crop_padding=c.data.crop_padding,
        flip=c.data.flip,
        supcon_temperature=c.loss.supcon_temperature,
        supcon_base_temperature=c.loss.supcon_base_temperature,
        nhsic_lambda=c.loss.nhsic_lambda,
        nhsic_reference=c.loss.nhsic_reference,
        nhsic_sigma=c.loss.nhsic_sigma,
        compute_dtype=compute_dtype,
    )

    seed_key = jax.random.PRNGKey(c.seed)
    init_key, data_key = jax.random.split(seed_key)

    def optimizer(stage: int | None, params):
        mask = training.trainable_mask(params, mode, num_blocks, stage)
        tx = training.make_optimizer(
            name=c.optim.name,
            schedule=schedule,
            momentum=c.optim.momentum,
            nesterov=c.optim.nesterov,
            weight_decay=c.optim.weight_decay,
            mask=mask,
        )
        return tx, mask

    # Parameters first (with an unmasked optimizer only to get shapes), then the
    # stage-0 optimizer. The optimizer state's structure is mask-independent.
    state = training.init_state(
        model,
        init_key,
        ds.image_shape,
        training.make_optimizer(name=c.optim.name, schedule=schedule),
    )
    tx, _ = optimizer(stage_of(0), state.params)
    state = state.replace(opt_state=tx.init(state.params))

    replicated = NamedSharding(mesh, PartitionSpec())
    state = jax.device_put(state, replicated)
    # The test set lives on every device; each evaluation batch is sharded.
    test_images, test_labels = jax.device_put(
        (ds.test_images, ds.test_labels.astype(np.int32)), replicated
    )
    eval_fn = training.make_eval_fn(
        model,
        mean=tuple(ds.mean),
        std=tuple(ds.std),
        batch_size=c.train.eval_batch_size,
        compute_dtype=compute_dtype,
        mesh=mesh,
    )
    tracker = None
    if c.hsic.enabled:
        sub_x, sub_y = data_lib.eval_subset(ds, c.hsic.eval_size, seed=c.seed)
        eval_x = data_lib.normalize(jnp.asarray(sub_x), tuple(ds.mean), tuple(ds.std))
        tracker = infoplane.make_tracker(
            model,
            eval_x,
            jnp.asarray(sub_y, jnp.int32),
            num_classes=num_classes,
            config=_hsic_config(c),
        )
    eval_epochs = set(
        infoplane.eval_epochs(num_epochs, every=c.hsic.every, num_log=c.hsic.num_log)
    )
    ckpt_epochs = {
        e for e in range(1, num_epochs + 1) if e % c.checkpoint.every_epochs == 0
    } | {num_epochs}

    metrics_path = run_dir / "metrics.jsonl"
    infoplane_path = run_dir / "infoplane.csv"
    checkpointer = ckpt_lib.Checkpointer(
        run_dir / "checkpoints", max_to_keep=c.checkpoint.max_to_keep
    )
    start_epoch, wall_offset = 0, 0.0
    restored = checkpointer.restore_or_none(state)
    if restored is not None:
        _, state, meta = restored
        start_epoch = int(meta["epoch"])
        wall_offset = float(meta.get("wall_time", 0.0))
        logging.info("[%s] resuming from epoch %d (%s)", mode, start_epoch, run_dir)
    rows = [r for r in read_jsonl(metrics_path) if r["epoch"] <= start_epoch]
    ip_rows = []
    if infoplane_path.exists() and start_epoch > 0:
        ip_rows = [
            r
            for r in infoplane.read_infoplane(infoplane_path)
            if int(r["epoch"]) <= start_epoch
        ]
    if restored is None:
        rows, ip_rows = [], []

    chunk_fns: dict[int | None, Any] = {}

    def chunk_fn(stage):
        if stage not in chunk_fns:
            tx_s, mask_s = optimizer(stage, state.params)
            step = training.make_train_step(model, routing, tx_s, step_cfg, mask=mask_s)
            chunk_fns[stage] = training.make_train_chunk(
                step,
                mesh=mesh,
                sharded_data=train_data.layout == "sharded",
                loop=c.train.loop,
            )
        return chunk_fns[stage]

    def evaluate(epoch: int, step: int, wall: float, train_stats: dict) -> None:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        acc, probe_acc = eval_fn(variables, test_images, test_labels)
        row = {
            "epoch": epoch,
            "step": step,
            "lr": float(schedule(max(step - stage_start_step(epoch), 0))),
            "wall_time": wall,
            "test_acc": float(acc),
            "probe_acc": [float(a) for a in np.asarray(probe_acc)],
            **train_stats,
        }
        if tracker is not None:
            t = time.perf_counter()
            stats = jax.device_get(tracker(variables))
            row["hsic_time_s"] = time.perf_counter() - t
            ip_rows.extend(
                infoplane.to_rows(
                    stats, epoch=epoch, step=step, block_names=block_names
                )
            )
        rows.append(row)
        write_jsonl_atomic(metrics_path, rows)
        if tracker is not None:
            infoplane.write_csv_atomic(infoplane_path, ip_rows, infoplane.COLUMNS)
        logging.info(
            "[%s] epoch %d: test acc %.4f | probe acc %s",
            mode,
            epoch,
            row["test_acc"],
            " ".join(f"{a:.3f}" for a in row["probe_acc"]),
        )

    def stage_start_step(epoch: int) -> int:
        if kind != "sequential" or epoch == 0:
            return 0
        return stage_of(epoch - 1) * stage_epochs * steps_per_epoch

    write_json_atomic(run_dir / "config.json", config_to_dict(c) | {"mode": mode})
    t0 = time.perf_counter() - wall_offset
    if start_epoch == 0 and 0 in eval_epochs:
        evaluate(0, 0, 0.0, {"train_loss": None, "block_loss": None})

    progress = _Progress(
        total_steps=num_epochs * steps_per_epoch,
        batch_size=batch,
        period_s=c.train.log_every_s,
        done_at_start=start_epoch * steps_per_epoch,
    )
    chunk_len = min(c.train.steps_per_call, steps_per_epoch)
    for epoch in range(start_epoch, num_epochs):
        stage = stage_of(epoch)
        if kind == "sequential" and epoch % stage_epochs == 0:
            # A new stage starts with a fresh optimizer over the new block.
            tx_s, _ = optimizer(stage, state.params)
            state = state.replace(
                opt_state=jax.device_put(tx_s.init(state.params), replicated)
            )
            logging.info("[%s] stage %d: training %s", mode, stage, block_names[stage])
        fn = chunk_fn(stage)
        order = train_data.epoch(jax.random.fold_in(data_key, epoch), batch)
        sums: dict[str, np.ndarray] = {}
        for start in range(0, steps_per_epoch, chunk_len):
            idx = order[start : start + chunk_len]
            state, m = fn(state, train_data.images, train_data.labels, idx)
            m = jax.device_get(m)
            _check_finite(
                m, mode, epoch + 1, epoch * steps_per_epoch + start, block_names
            )
            for k in ("loss", "final_ce", "final_acc", "local_loss", "probe_loss"):
                sums[k] = sums.get(k, 0.0) + np.sum(m[k], axis=0)
            step_now = epoch * steps_per_epoch + start + idx.shape[0]
            progress.update(mode, epoch + 1, step_now, float(m["loss"][-1]))
        done = epoch + 1
        step_now = done * steps_per_epoch
        wall = time.perf_counter() - t0
        if done in eval_epochs:
            local = sums["local_loss"] / steps_per_epoch
            train_stats = {
                "train_loss": float(sums["final_ce"] / steps_per_epoch),
                "train_acc": float(sums["final_acc"] / steps_per_epoch),
                "block_loss": [None if math.isnan(v) else float(v) for v in local],
                "probe_loss": [float(v) for v in sums["probe_loss"] / steps_per_epoch],
                "images_per_sec": (step_now - progress.done_at_start)
                * batch
                / max(time.perf_counter() - progress.start, 1e-9),
            }
            if kind == "sequential":
                train_stats["stage"] = stage
            evaluate(done, step_now, wall, train_stats)
        if done in ckpt_epochs:
            checkpointer.save(
                step_now, state, metadata={"epoch": done, "wall_time": wall}
            )
    checkpointer.close()

    final = rows[-1]
    wall_time = time.perf_counter() - t0
    # Time spent in the information-plane tracker (its one compilation included),
    # and its share of the run's wall time: the tracking overhead.
    hsic_time = sum(r.get("hsic_time_s", 0.0) for r in rows)
    summary = {
        "mode": mode,
        "model": c.model.name,
        "dataset": ds.name,
        "num_blocks": num_blocks,
        "block_names": block_names,
        "final_test_acc": final["test_acc"],
        "probe_acc": final["probe_acc"],
        "epochs": num_epochs,
        "steps": num_epochs * steps_per_epoch,
        "wall_time_s": wall_time,
        "hsic_time_s": hsic_time,
        "hsic_fraction": hsic_time / max(wall_time, 1e-9),
        "params_sha256": params_digest(state.params),
        "num_classes": num_classes,
        "backend": jax.default_backend(),
        "num_devices": mesh.size,
        "data_layout": train_data.layout,
    }
    write_json_atomic(run_dir / "summary.json", summary)
    logging.info(
        "[%s] done: test acc %.4f in %s (information plane: %s, %.1f%%)",
        mode,
        summary["final_test_acc"],
        _fmt_seconds(summary["wall_time_s"]),
        _fmt_seconds(hsic_time),
        100.0 * summary["hsic_fraction"],
    )
    return summary


def params_digest(params) -> str:
    """SHA-256 of every parameter's bytes in tree order: equal digests, equal runs."""
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def _check_finite(m: dict, mode: str, epoch: int, first_step: int, block_names) -> None:
    """Raises :class:`RunError` naming the epoch, step and block of a NaN/Inf."""
    ok = np.asarray(m["grad_finite"])
    blocks_ok = np.asarray(m["block_finite"])
    if ok.all() and blocks_ok.all():
        return
    bad = int(np.argmin(ok & blocks_ok.all(axis=-1)))
    bad_blocks = [block_names[i] for i in np.flatnonzero(~blocks_ok[bad])]
    where = ", ".join(bad_blocks) if bad_blocks else "the final classifier"
    raise RunError(
        f"[{mode}] non-finite loss or gradient at epoch {epoch}, "
        f"step {first_step + bad + 1} "
        f"in block {where}; the last good checkpoint is kept (lower optim.lr?)"
    )


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> dict[str, dict]:
    """Validates ``config`` and trains every mode; writes the report if several.

    Returns:
      ``{mode: summary}``.

    Raises:
      ConfigError: a bad config field (nothing is written).
      RunError: the workdir holds another config's run, or a loss went non-finite.
    """
    config_lib.validate(config)
    workdir = Path(workdir)
    modes = modes_of(config)
    config_dict = config_to_dict(config)
    check_workdir(workdir, config_dict, overwrite=overwrite)
    ds = load_data(config)
    # Check modes against the network before creating anything on disk.
    num_blocks = build_model(config, ds.num_classes).num_blocks
    for m in modes:
        try:
            training.parse_mode(m, num_blocks)
        except ValueError as e:
            raise config_lib.ConfigError(f"modes: {e}") from None
    if overwrite and workdir.exists():
        import shutil

        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if len(modes) > 1:
        write_json_atomic(workdir / "config.json", config_dict)
    summaries = {}
    for m in modes:
        run_dir = workdir if len(modes) == 1 else workdir / mode_dir(m)
        summaries[m] = train_mode(config, m, run_dir, ds)
    if len(modes) > 1:
        from hsicib import report

        path = report.write_report([workdir], workdir)
        logging.info("report: %s", path)
    return summaries
