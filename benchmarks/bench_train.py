"""Train-step time and peak memory: hsicib (JAX) beside a plain PyTorch twin.

Usage::

    python -m benchmarks.bench_train                 # LeNet5 + ResNet-18, batch 128
    python -m benchmarks.bench_train --quick         # tiny widths, a few seconds
    python -m benchmarks.bench_train --models=lenet5 --modes=e2e,layerwise

For every model and mode (``e2e``, ``layerwise``, ``sequential`` at stage 0)
the benchmark builds hsicib's step (``hsicib.training.make_train_step``) and
the same step in PyTorch (``benchmarks.torch_ref``), starts both from the same
weights (the Flax initialization copied into PyTorch) and, after a warm-up,
times them interleaved, repeat after repeat, so that load from other processes
hits both alike:

* JAX scan: ``make_train_chunk`` (a jitted ``lax.scan`` over S batches, the
  way hsicib trains), wall time / S;
* JAX jit: one jitted step (state donated), wall time of one call;
* torch: one call of :class:`benchmarks.torch_ref.TorchTrainStep`.

Each time is the median over the repeats, after ``jax.block_until_ready``.

Peak memory means different things in the two columns:

* JAX: ``memory_analysis()`` of the compiled single step, ``argument + output
  - alias + temp`` bytes: XLA's static buffer assignment (state, batch,
  metrics and every intermediate), exact for what XLA allocates, without the
  runtime's own overhead or Eigen/oneDNN scratch.
* torch: the bytes that live between steps (parameters, buffers, Adam state,
  the batch) plus the peak of live tensor bytes during one step, read from the
  allocation events of ``torch.profiler`` (``profile_memory=True``): the
  tensors PyTorch allocates, without allocator or library scratch.

The first step of both frameworks runs from identical weights on an identical
batch; ``loss gap`` is the relative difference of their losses, a check that
the two steps compute the same thing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hsicib import models, training

try:  # optional dependency (pyproject extra "bench")
    import torch

    from benchmarks import torch_ref
except ImportError:  # pragma: no cover - exercised where torch is absent
    torch = None
    torch_ref = None

MODES = ("e2e", "layerwise", "sequential")


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """What one benchmarked network reads and how long to time it."""

    image_shape: tuple[int, int, int]
    repeats: int
    chunk: int


SETUPS = {
    "lenet5": ModelSetup((28, 28, 1), repeats=20, chunk=10),
    "resnet18": ModelSetup((32, 32, 3), repeats=5, chunk=2),
}
QUICK_SETUP = {"width_mult": 0.125, "batch_size": 16, "repeats": 3, "chunk": 2}


@dataclasses.dataclass
class Row:
    """One line of the result table (times in ms per step, memory in bytes)."""

    model: str
    mode: str
    jax_scan_ms: float
    jax_jit_ms: float
    torch_ms: float | None
    jax_mem: int
    torch_mem: int | None
    jax_gflop: float
    loss_gap: float | None

    @property
    def ratio(self) -> float | None:
        """JAX scan step time / torch step time."""
        return None if self.torch_ms is None else self.jax_scan_ms / self.torch_ms


# --------------------------------------------------------------------------- #
# JAX side
# --------------------------------------------------------------------------- #


class _JaxCase:
    """hsicib's compiled step and chunk runner for one model and mode."""

    def __init__(self, model, mode, image_shape, batch_size, chunk, seed, variant):
        num_blocks = model.num_blocks
        self.mean = (0.5,) * image_shape[-1]
        self.std = (0.25,) * image_shape[-1]
        schedule = training.make_schedule(
            name="constant", learning_rate=5e-4, steps_per_epoch=1, num_epochs=1
        )
        plain = training.make_optimizer(name="adam", schedule=schedule)
        state = training.init_state(model, jax.random.PRNGKey(seed), image_shape, plain)
        stage = 0 if mode == "sequential" else None
        mask = training.trainable_mask(state.params, mode, num_blocks, stage)
        tx = training.make_optimizer(name="adam", schedule=schedule, mask=mask)
        state = state.replace(opt_state=tx.init(state.params))
        self.init_params = jax.tree.map(np.asarray, state.params)
        self.init_stats = jax.tree.map(np.asarray, state.batch_stats)
        cfg = training.StepConfig(num_classes=10, mean=self.mean, std=self.std)
        routed = _StopFrozen(model, mask) if variant == "stop_frozen" else model
        step = training.make_train_step(
            routed, training.make_routing(mode, num_blocks), tx, cfg, mask=mask
        )
        rng = np.random.default_rng(seed)
        n = batch_size * chunk
        self.images = jnp.asarray(
            rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        )
        self.labels = jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32))
        self.batch_idx = jnp.arange(n, dtype=jnp.int32).reshape(chunk, batch_size)
        self.chunk = chunk
        x0, y0 = self.images[:batch_size], self.labels[:batch_size]
        self.batch = (x0, y0)
        self._step_fn = step
        self.step = (
            jax.jit(step, donate_argnums=(0,)).lower(state, x0, y0).compile()
        )
        self.run_chunk = (
            training.make_train_chunk(step)
            .lower(state, self.images, self.labels, self.batch_idx)
            .compile()
        )
        self.state = state
        mem = self.step.memory_analysis()
        self.peak_bytes = int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
        cost = self.step.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.gflop = float(cost.get("flops", float("nan"))) / 1e9

    def time_step(self) -> tuple[float, dict]:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, *self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start, metrics

    def time_chunk(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.run_chunk(
            self.state, self.images, self.labels, self.batch_idx
        )
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / self.chunk


class _StopFrozen:
    """A model wrapper that hides frozen parameters behind ``stop_gradient``.

    A prototype of a change to ``hsicib.training`` (not used by default): with
    it the backward pass of frozen blocks is dead code that XLA removes.
    """

    def __init__(self, model, mask):
        self.model, self.mask = model, mask
        self.num_blocks = model.num_blocks

    def apply(self, variables, *args, **kwargs):
        params = jax.tree.map(
            lambda keep, p: p if keep else jax.lax.stop_gradient(p),
            self.mask,
            variables["params"],
        )
        return self.model.apply({**variables, "params": params}, *args, **kwargs)


# --------------------------------------------------------------------------- #
# PyTorch side
# --------------------------------------------------------------------------- #


class _TorchCase:
    """The PyTorch twin of one JAX case, from the same weights and data."""

    def __init__(self, specs, mode, jax_case: _JaxCase, image_shape):
        net = torch_ref.TorchBlockNet(specs, image_shape, 10)
        net.load_flax(jax_case.init_params, jax_case.init_stats)
        self.step = torch_ref.TorchTrainStep(
            net, mode, mean=jax_case.mean, std=jax_case.std, learning_rate=5e-4
        )
        x0, y0 = jax_case.batch
        self.batch = (
            torch.from_numpy(np.array(x0)),
            torch.from_numpy(np.array(y0).astype(np.int64)),
        )

    def time_step(self) -> tuple[float, dict]:
        start = time.perf_counter()
        metrics = self.step(*self.batch)
        return time.perf_counter() - start, metrics

    def peak_bytes(self) -> int:
        """Resident bytes + peak of live tensor bytes during one profiled step."""
        from torch.profiler import ProfilerActivity, profile

        resident = self.step.resident_bytes(*self.batch)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step(*self.batch)
        events = prof.profiler.kineto_results.events()
        mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        live = peak = 0
        for _, nbytes in mem:
            live += nbytes
            peak = max(peak, live)
        return resident + peak


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


def _median_ms(values: Sequence[float]) -> float:
    return 1e3 * statistics.median(values)


def bench_case(
    name: str,
    mode: str,
    *,
    batch_size: int = 128,
    repeats: int | None = None,
    chunk: int | None = None,
    width_mult: float = 1.0,
    use_torch: bool = True,
    seed: int = 0,
    variant: str = "default",
) -> Row:
    """Times one model and mode in JAX (scan and jit) and, if asked, in PyTorch.

    Args:
      name: ``"lenet5"`` or ``"resnet18"``.
      mode: ``"e2e"``, ``"layerwise"`` or ``"sequential"`` (stage 0).
      batch_size: examples per step.
      repeats: timed repeats per runner (default: the model's setup).
      chunk: steps per scanned chunk (default: the model's setup).
      width_mult: network width multiplier.
      use_torch: also run the PyTorch twin (needs torch).
      seed: seed of the initialization and the synthetic data.
      variant: ``"default"`` (hsicib's step) or ``"stop_frozen"`` (frozen
        parameters behind ``stop_gradient``, see :class:`_StopFrozen`).

    Returns:
      A :class:`Row`.
    """
    if name not in SETUPS:
        raise ValueError(f"model={name!r} is not benchmarked; allowed: {tuple(SETUPS)}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not benchmarked; allowed: {MODES}")
    if use_torch and torch is None:
        raise ValueError("use_torch=True needs PyTorch: pip install torch (CPU build)")
    setup = SETUPS[name]
    repeats = repeats or setup.repeats
    chunk = chunk or setup.chunk
    model = models.build_model(name, num_classes=10, width_mult=width_mult)
    logging.info("compiling %s/%s (%s)", name, mode, variant)
    jc = _JaxCase(model, mode, setup.image_shape, batch_size, chunk, seed, variant)
    tc = None
    loss_gap = None
    if use_torch:
        specs = models.block_specs(name, width_mult=width_mult)
        tc = _TorchCase(specs, mode, jc, setup.image_shape)
        # First step from identical weights and batch: the losses must agree.
        _, jm = jc.time_step()
        _, tm = tc.time_step()
        jl, tl = float(jm["loss"]), float(tm["loss"])
        loss_gap = abs(jl - tl) / max(abs(jl), 1e-12)
        tc.time_step()
    jc.time_step()
    jc.time_chunk()
    scan, jit, tt = [], [], []
    for _ in range(repeats):
        scan.append(jc.time_chunk())
        jit.append(jc.time_step()[0])
        if tc is not None:
            tt.append(tc.time_step()[0])
    row = Row(
        model=name,
        mode=mode if variant == "default" else f"{mode} ({variant})",
        jax_scan_ms=_median_ms(scan),
        jax_jit_ms=_median_ms(jit),
        torch_ms=_median_ms(tt) if tc is not None else None,
        jax_mem=jc.peak_bytes,
        torch_mem=tc.peak_bytes() if tc is not None else None,
        jax_gflop=jc.gflop,
        loss_gap=loss_gap,
    )
    logging.info(
        "%s/%s: scan %.1f ms, jit %.1f ms, torch %s ms",
        row.model,
        row.mode,
        row.jax_scan_ms,
        row.jax_jit_ms,
        "-" if row.torch_ms is None else "%.1f" % row.torch_ms,
    )
    return row


def _mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else "%.1f MiB" % (nbytes / 2**20)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt % value


def format_table(rows: Sequence[Row]) -> str:
    """The markdown result table, then the layerwise / e2e time ratios."""
    lines = [
        "| model | mode | JAX scan step ms | JAX jit step ms | torch step ms | "
        "JAX/torch | peak mem JAX | peak mem torch | XLA GFLOP/step | loss gap |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.mode} | {r.jax_scan_ms:.1f} | {r.jax_jit_ms:.1f} | "
            f"{_num(r.torch_ms, '%.1f')} | {_num(r.ratio, '%.2f')} | "
            f"{_mib(r.jax_mem)} | {_mib(r.torch_mem)} | {r.jax_gflop:.2f} | "
            f"{_num(r.loss_gap, '%.1e')} |"
        )
    by_key = {(r.model, r.mode): r for r in rows}
    ratio_lines = []
    for name in dict.fromkeys(r.model for r in rows):
        e2e, lw = by_key.get((name, "e2e")), by_key.get((name, "layerwise"))
        if e2e is None or lw is None:
            continue
        torch_ratio = (
            None if lw.torch_ms is None else lw.torch_ms / e2e.torch_ms
        )
        ratio_lines.append(
            f"| {name} | {lw.jax_scan_ms / e2e.jax_scan_ms:.2f} | "
            f"{lw.jax_jit_ms / e2e.jax_jit_ms:.2f} | {_num(torch_ratio, '%.2f')} |"
        )
    if ratio_lines:
        lines += [
            "",
            "| model | layerwise/e2e JAX scan | layerwise/e2e JAX jit | "
            "layerwise/e2e torch |",
            "|---|---:|---:|---:|",
            *ratio_lines,
        ]
    return "\n".join(lines)


def machine_line() -> str:
    """CPU model and core count, library versions, date."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = f"jax {jax.__version__}"
    if torch is not None:
        versions += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    return (
        f"{cpu}, {os.cpu_count()} cores; {versions}; "
        f"{datetime.date.today().isoformat()}"
    )


def run(
    model_names: Sequence[str] = tuple(SETUPS),
    modes: Sequence[str] = MODES,
    *,
    quick: bool = False,
    batch_size: int = 128,
    repeats: int | None = None,
    use_torch: bool = True,
    threads: int = 2,
    variants: Sequence[str] = (),
) -> list[Row]:
    """Benchmarks every model x mode; ``quick`` shrinks widths, batch and repeats.

    ``variants`` adds rows of prototype steps (``"stop_frozen"``, sequential
    mode only).
    """
    if use_torch and torch is not None:
        torch.set_num_threads(threads)
    use_torch = use_torch and torch is not None
    kwargs = {"batch_size": batch_size, "repeats": repeats, "use_torch": use_torch}
    if quick:
        kwargs.update(
            width_mult=QUICK_SETUP["width_mult"],
            batch_size=QUICK_SETUP["batch_size"],
            repeats=repeats or QUICK_SETUP["repeats"],
            chunk=QUICK_SETUP["chunk"],
        )
    rows = []
    for name in model_names:
        for mode in modes:
            rows.append(bench_case(name, mode, **kwargs))
            if mode == "sequential":
                for variant in variants:
                    rows.append(bench_case(name, mode, variant=variant, **kwargs))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SETUPS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument(
        "--variants", default="", help="comma-separated prototype steps: stop_frozen"
    )
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    rows = run(
        [m for m in args.models.split(",") if m],
        [m for m in args.modes.split(",") if m],
        quick=args.quick,
        batch_size=args.batch_size,
        repeats=args.repeats,
        use_torch=not args.no_torch,
        threads=args.threads,
        variants=[v for v in args.variants.split(",") if v],
    )
    print(format_table(rows))
    print()
    print("Machine: " + machine_line())
    print("Command: python -m benchmarks.bench_train " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
