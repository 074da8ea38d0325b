r"""Accelerator check: ResNet-18 on CIFAR-10-shaped synthetic data, E2E and layer-wise.

  python -m benchmarks.accelerator_check                 # one GPU/TPU, < 8 minutes
  python -m benchmarks.accelerator_check --steps=4 --chunk=2 --batch=32 \
      --width_mult=0.125 --hsic_n=200                    # CPU smoke

No network needed. For each mode it trains a few hundred steps (batch 128,
32x32x3, 10 classes) with the library's train runner
(``hsicib.training.make_train_chunk``: one jitted step per batch, metrics read
back once per chunk of ``--chunk`` steps), then times the all-layer nHSIC of the
9 blocks on a fixed evaluation set, and prints a markdown table:

* images/s: median over the chunks after the first (which compiles);
* step memory: XLA's static buffer assignment of the compiled train step
  (``memory_analysis()``: arguments + outputs - aliased + temporaries), the
  same measure as ``benchmarks/bench_train.py``;
* process peak: ``device.memory_stats()['peak_bytes_in_use']`` where the
  backend reports it. It is the peak since the process started, so the second
  mode's value includes the first mode's (the modes run in one process);
* the median time of the all-layer nHSIC call (after its compilation).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import xla_memory
from hsicib import data as data_lib
from hsicib import hsic, infoplane, models, training

_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per mode.")
_CHUNK = flags.DEFINE_integer("chunk", 25, "Steps per runner call (metrics read once).")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_WIDTH = flags.DEFINE_float("width_mult", 1.0, "ResNet-18 width multiplier.")
_HSIC_N = flags.DEFINE_integer("hsic_n", 1000, "Examples in the nHSIC evaluation.")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "")


def _peak_bytes() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _run_mode(mode: str, ds, model, hsic_x, hsic_y) -> dict:
    steps_per_chunk = min(_CHUNK.value, _STEPS.value)
    n_chunks = max(_STEPS.value // steps_per_chunk, 1)
    schedule = training.make_schedule(
        name="constant", learning_rate=5e-4, steps_per_epoch=1, num_epochs=1
    )
    state = training.init_state(
        model,
        jax.random.PRNGKey(0),
        ds.image_shape,
        training.make_optimizer(name="adam", schedule=schedule),
    )
    mask = training.trainable_mask(state.params, mode, model.num_blocks)
    tx = training.make_optimizer(name="adam", schedule=schedule, mask=mask)
    state = state.replace(opt_state=tx.init(state.params))
    dtype = jnp.bfloat16 if _PRECISION.value == "bfloat16" else jnp.float32
    cfg = training.StepConfig(
        num_classes=10,
        mean=ds.mean,
        std=ds.std,
        crop_padding=4,
        flip=True,
        compute_dtype=dtype,
    )
    step = training.make_train_step(
        model, training.make_routing(mode, model.num_blocks), tx, cfg, mask=mask
    )
    chunk = training.make_train_chunk(step)
    b = _BATCH.value
    step_bytes = xla_memory.buffer_bytes(
        jax.jit(step, donate_argnums=(0,))
        .lower(
            state, jnp.zeros((b, *ds.image_shape), jnp.uint8), jnp.zeros(b, jnp.int32)
        )
        .compile()
    )
    step_mib = None if step_bytes is None else step_bytes / 2**20
    images = jnp.asarray(ds.train_images)
    labels = jnp.asarray(ds.train_labels)
    rates, t_compile = [], None
    for i in range(n_chunks + 1):
        idx = data_lib.epoch_batches(
            jax.random.PRNGKey(i), images.shape[0], _BATCH.value
        )[:steps_per_chunk]
        t = time.perf_counter()
        state, m = chunk(state, images, labels, idx)
        jax.block_until_ready(m["loss"])
        dt = time.perf_counter() - t
        if i == 0:
            t_compile = dt
        else:
            rates.append(steps_per_chunk * _BATCH.value / dt)
    tracker = infoplane.make_tracker(
        model,
        hsic_x,
        hsic_y,
        num_classes=10,
        config=hsic.HSICConfig(chunk_size=100 if _HSIC_N.value % 100 == 0 else None),
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    jax.block_until_ready(tracker(variables))  # compile
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(tracker(variables))
        times.append(time.perf_counter() - t)
    return {
        "mode": mode,
        "images_per_s": float(np.median(rates)),
        "first_call_s": t_compile,
        "step_mib": step_mib,
        "peak_mib": _peak_bytes(),
        "hsic_s": float(np.median(times)),
        "loss": float(m["loss"][-1]),
    }


def main(argv):
    del argv
    n_train = max(_BATCH.value * _CHUNK.value, 4096)
    ds = data_lib.load_dataset(
        "synthetic",
        "cifar10-shaped",
        synthetic_shape=(32, 32, 3),
        synthetic_size=(n_train, _HSIC_N.value),
        num_classes=10,
    )
    dtype = jnp.bfloat16 if _PRECISION.value == "bfloat16" else jnp.float32
    model = models.build_model(
        "resnet18", num_classes=10, width_mult=_WIDTH.value, dtype=dtype
    )
    hsic_x = data_lib.normalize(jnp.asarray(ds.test_images), ds.mean, ds.std)
    hsic_y = jnp.asarray(ds.test_labels)
    rows = [_run_mode(m, ds, model, hsic_x, hsic_y) for m in ("e2e", "layerwise")]
    device = jax.devices()[0]
    backend = jax.default_backend()
    print(f"\ndevice: {device.device_kind} ({backend}), jax {jax.__version__}")
    print(
        f"ResNet-18 x{_WIDTH.value}, batch {_BATCH.value}, {_STEPS.value} steps, "
        f"{_PRECISION.value}; nHSIC on {_HSIC_N.value} examples, 9 blocks\n"
    )
    print(
        "| mode | images/s | first call (compile) s | step memory MiB "
        "| process peak MiB | all-layer nHSIC s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        step_mib = "n/a" if r["step_mib"] is None else f"{r['step_mib']:.0f}"
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(
            f"| {r['mode']} | {r['images_per_s']:.0f} | {r['first_call_s']:.1f} | "
            f"{step_mib} | {peak} | {r['hsic_s']:.3f} |"
        )


if __name__ == "__main__":
    app.run(main)
