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

* JAX runner: ``make_train_chunk`` (one jitted call per step, gather and
  augmentation included, the way hsicib trains), wall time of S steps / S;
* JAX scan: ``make_train_chunk(loop="scan")`` (one jitted ``lax.scan`` over
  S batches, ``train.loop="scan"``), wall time / S;
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
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from benchmarks import xla_memory
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
    """What one benchmarked network reads and how long to time it.

    Attributes:
      image_shape: (height, width, channels).
      repeats: timed repeats of the single jitted step and of the torch step.
      chunk: S, the steps in one scanned chunk.
      scan_repeats: timed chunks (each S steps); 0 skips the scan runner.
      scan_warmup: untimed chunks before the timed ones.
      warmup: untimed jit and torch steps before the timed ones (>= 1).
    """

    image_shape: tuple[int, int, int]
    repeats: int
    chunk: int
    scan_repeats: int
    scan_warmup: int
    warmup: int = 3


# ResNet-18 at batch 128 takes seconds per step on a 2-core CPU, hence its few
# repeats. Its lax.scan form is not timed by default: on XLA:CPU one scanned
# chunk of 2 steps took 484 s against 6 s per jitted step (2026-12-04), so it
# would dominate the run; --scan_repeats=1 times it anyway.
SETUPS = {
    "lenet5": ModelSetup(
        (28, 28, 1), repeats=10, chunk=5, scan_repeats=10, scan_warmup=1
    ),
    "resnet18": ModelSetup(
        (32, 32, 3), repeats=5, chunk=2, scan_repeats=0, scan_warmup=0, warmup=1
    ),
}
QUICK = {"width_mult": 0.125, "batch_size": 16, "repeats": 3, "chunk": 2}
# Untimed pause before every timed call, so that the worker threads of the
# runtime that ran last (XLA's pool, PyTorch's OpenMP team) have gone idle.
PAUSE_S = 0.05
# The dimension numbers XLA:CPU hands to its fast convolution kernels.
CANONICAL_CONV = "dim_labels=b01f_01io->b01f"


@dataclasses.dataclass
class Row:
    """One line of the result table (times in ms per step, memory in bytes).

    ``convs`` counts the convolutions of the compiled programs that are not in
    XLA:CPU's canonical form (:data:`CANONICAL_CONV`), as "jit/scan/total".
    """

    model: str
    mode: str
    jax_scan_ms: float | None
    jax_loop_ms: float | None
    jax_jit_ms: float
    torch_ms: float | None
    jax_mem: int
    torch_mem: int | None
    jax_gflop: float
    loss_gap: float | None
    convs: str
    best_ms: dict[str, float | None] = dataclasses.field(default_factory=dict)


def count_convs(hlo_text: str) -> tuple[int, int]:
    """(non-canonical, total) convolutions in an optimized HLO module's text."""
    labels = re.findall(r"dim_labels=[0-9a-z_]+->[0-9a-z]+", hlo_text)
    return sum(label != CANONICAL_CONV for label in labels), len(labels)


# --------------------------------------------------------------------------- #
# JAX side
# --------------------------------------------------------------------------- #


class _JaxCase:
    """hsicib's compiled step (and chunk runner) for one model and mode."""

    def __init__(self, model, mode, image_shape, batch_size, chunk, seed):
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
        self.state = state.replace(opt_state=tx.init(state.params))
        self.init_params = jax.tree.map(np.array, state.params)
        self.init_stats = jax.tree.map(np.array, state.batch_stats)
        cfg = training.StepConfig(num_classes=10, mean=self.mean, std=self.std)
        self.step_fn = training.make_train_step(
            model, training.make_routing(mode, num_blocks), tx, cfg, mask=mask
        )
        rng = np.random.default_rng(seed)
        n = batch_size * chunk
        self.images = jnp.asarray(
            rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        )
        self.labels = jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32))
        self.batch_idx = jnp.arange(n, dtype=jnp.int32).reshape(chunk, batch_size)
        self.chunk = chunk
        self.batch = (self.images[:batch_size], self.labels[:batch_size])
        self.step = (
            jax.jit(self.step_fn, donate_argnums=(0,))
            .lower(self.state, *self.batch)
            .compile()
        )
        self.run_chunk = None
        self.peak_bytes = xla_memory.buffer_bytes(self.step)
        cost = self.step.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.gflop = float(cost.get("flops", float("nan"))) / 1e9
        self.convs = {"jit": count_convs(self.step.as_text())}

    def compile_chunk(self, scan: bool = True) -> None:
        """Builds ``hsicib.training.make_train_chunk`` of the same step (the
        runner) and, with ``scan``, compiles its ``lax.scan`` form."""
        self.run_loop = training.make_train_chunk(self.step_fn)
        if not scan:
            return
        self.run_chunk = (
            training.make_train_chunk(self.step_fn, loop="scan")
            .lower(self.state, self.images, self.labels, self.batch_idx)
            .compile()
        )
        self.convs["scan"] = count_convs(self.run_chunk.as_text())

    def time_step(self) -> tuple[float, dict]:
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, *self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start, metrics

    def time_loop(self) -> float:
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        self.state, metrics = self.run_loop(
            self.state, self.images, self.labels, self.batch_idx
        )
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / self.chunk

    def time_chunk(self) -> float:
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        self.state, metrics = self.run_chunk(
            self.state, self.images, self.labels, self.batch_idx
        )
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / self.chunk


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
        time.sleep(PAUSE_S)
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
        mem = sorted(
            (e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"
        )
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


@dataclasses.dataclass
class _Case:
    """One mode of one model, both frameworks."""

    mode: str
    jax: _JaxCase
    torch: _TorchCase | None
    scan: bool
    loss_gap: float | None = None
    times: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {"loop": [], "scan": [], "jit": [], "torch": []}
    )

    @property
    def label(self) -> str:
        return self.mode


def bench_model(
    name: str,
    modes: Sequence[str] = MODES,
    *,
    batch_size: int = 128,
    width_mult: float = 1.0,
    setup: ModelSetup | None = None,
    use_torch: bool = True,
    seed: int = 0,
) -> list[Row]:
    """Times every mode of one model in JAX (scan and jit) and in PyTorch.

    All cases are built first. Each then runs ``setup.warmup`` untimed steps per
    framework (the first, from identical weights on one batch, gives
    ``loss_gap``) and ``setup.scan_warmup`` untimed chunks. The timed repeats go
    round-robin over the cases, and within a case run one chunk (while
    ``setup.scan_repeats`` lasts), one jitted step and one torch step, so that
    load from other processes falls on every column alike.

    Args:
      name: ``"lenet5"`` or ``"resnet18"``.
      modes: entries of ``MODES`` (``sequential`` trains stage 0).
      batch_size: examples per step.
      width_mult: network width multiplier.
      setup: repeats and chunk length (default: ``SETUPS[name]``).
      use_torch: also run the PyTorch twin (needs torch).
      seed: seed of the initialization and the synthetic data.

    Returns:
      One :class:`Row` per case.
    """
    if name not in SETUPS:
        raise ValueError(f"model={name!r} is not benchmarked; allowed: {tuple(SETUPS)}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not benchmarked; allowed: {MODES}")
    if use_torch and torch is None:
        raise ValueError("use_torch=True needs PyTorch: pip install torch (CPU build)")
    setup = setup or SETUPS[name]
    model = models.build_model(name, num_classes=10, width_mult=width_mult)
    specs = models.block_specs(name, width_mult=width_mult)
    cases = []
    for mode in modes:
        logging.info("compiling %s/%s", name, mode)
        jc = _JaxCase(model, mode, setup.image_shape, batch_size, setup.chunk, seed)
        scan = setup.scan_repeats > 0
        jc.compile_chunk(scan=scan)
        tc = None
        if use_torch:
            tc = _TorchCase(specs, mode, jc, setup.image_shape)
        cases.append(_Case(mode, jc, tc, scan))
    for case in cases:
        _, jax_metrics = case.jax.time_step()
        if case.torch is not None:
            _, torch_metrics = case.torch.time_step()
            jl, tl = float(jax_metrics["loss"]), float(torch_metrics["loss"])
            case.loss_gap = abs(jl - tl) / max(abs(jl), 1e-12)
        for _ in range(setup.warmup - 1):
            case.jax.time_step()
            if case.torch is not None:
                case.torch.time_step()
        case.jax.time_loop()  # The runner's first call compiles its step.
        for _ in range(setup.scan_warmup if case.scan else 0):
            case.jax.time_chunk()
    for r in range(max(setup.repeats, setup.scan_repeats)):
        for case in cases:
            if r < setup.repeats:
                case.times["loop"].append(case.jax.time_loop())
            if case.scan and r < setup.scan_repeats:
                case.times["scan"].append(case.jax.time_chunk())
            if r < setup.repeats:
                case.times["jit"].append(case.jax.time_step()[0])
                if case.torch is not None:
                    case.times["torch"].append(case.torch.time_step()[0])
            logging.info(
                "%s/%s repeat %d: %s",
                name,
                case.label,
                r,
                ", ".join(f"{k} {v[-1]:.3f} s" for k, v in case.times.items() if v),
            )
    return [_row(name, case) for case in cases]


def _row(name: str, case: _Case) -> Row:
    jc, tc, times = case.jax, case.torch, case.times
    convs = jc.convs["jit"][0], jc.convs.get("scan", (None,))[0], jc.convs["jit"][1]
    row = Row(
        model=name,
        mode=case.label,
        jax_scan_ms=_median_ms(times["scan"]) if times["scan"] else None,
        jax_loop_ms=_median_ms(times["loop"]) if times["loop"] else None,
        jax_jit_ms=_median_ms(times["jit"]),
        torch_ms=_median_ms(times["torch"]) if times["torch"] else None,
        jax_mem=jc.peak_bytes,
        torch_mem=tc.peak_bytes() if tc is not None else None,
        jax_gflop=jc.gflop,
        loss_gap=case.loss_gap,
        convs="/".join("-" if c is None else str(c) for c in convs),
        best_ms={k: 1e3 * min(v) if v else None for k, v in times.items()},
    )
    logging.info(
        "%s/%s: runner %s ms, scan %s ms, jit %.1f ms, torch %s ms",
        row.model,
        row.mode,
        _num(row.jax_loop_ms, "%.1f"),
        _num(row.jax_scan_ms, "%.1f"),
        row.jax_jit_ms,
        _num(row.torch_ms, "%.1f"),
    )
    return row


def _mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else "%.1f MiB" % (nbytes / 2**20)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt % value


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def format_table(rows: Sequence[Row]) -> str:
    """The markdown result table, then the layerwise / e2e time ratios."""
    lines = [
        "| model | mode | JAX runner step ms | JAX scan step ms | JAX jit step ms "
        "| torch step ms | JAX/torch (runner) | JAX/torch (scan) | JAX/torch (jit) "
        "| peak mem JAX | peak mem torch | "
        "XLA GFLOP/step | non-canonical convs jit/scan/all | loss gap |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.mode} | {_num(r.jax_loop_ms, '%.1f')} | "
            f"{_num(r.jax_scan_ms, '%.1f')} | "
            f"{r.jax_jit_ms:.1f} | {_num(r.torch_ms, '%.1f')} | "
            f"{_num(_ratio(r.jax_loop_ms, r.torch_ms), '%.2f')} | "
            f"{_num(_ratio(r.jax_scan_ms, r.torch_ms), '%.2f')} | "
            f"{_num(_ratio(r.jax_jit_ms, r.torch_ms), '%.2f')} | "
            f"{_mib(r.jax_mem)} | {_mib(r.torch_mem)} | {r.jax_gflop:.1f} | "
            f"{r.convs} | {_num(r.loss_gap, '%.0e')} |"
        )
    lines += [
        "",
        "Fastest repeat (ms), less sensitive to load from other processes:",
        "",
        "| model | mode | JAX runner | JAX scan | JAX jit | torch | JAX jit/torch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r.best_ms
        lines.append(
            f"| {r.model} | {r.mode} | {_num(b.get('loop'), '%.1f')} | "
            f"{_num(b.get('scan'), '%.1f')} | "
            f"{_num(b.get('jit'), '%.1f')} | {_num(b.get('torch'), '%.1f')} | "
            f"{_num(_ratio(b.get('jit'), b.get('torch')), '%.2f')} |"
        )
    by_key = {(r.model, r.mode): r for r in rows}
    ratio_lines = []
    for name in dict.fromkeys(r.model for r in rows):
        e2e, lw = by_key.get((name, "e2e")), by_key.get((name, "layerwise"))
        if e2e is None or lw is None:
            continue
        ratio_lines.append(
            f"| {name} | {_num(_ratio(lw.jax_loop_ms, e2e.jax_loop_ms), '%.2f')} | "
            f"{_num(_ratio(lw.jax_scan_ms, e2e.jax_scan_ms), '%.2f')} | "
            f"{lw.jax_jit_ms / e2e.jax_jit_ms:.2f} | "
            f"{_num(_ratio(lw.torch_ms, e2e.torch_ms), '%.2f')} |"
        )
    if ratio_lines:
        lines += [
            "",
            "Step time of layerwise over e2e (medians):",
            "",
            "| model | layerwise/e2e JAX runner | layerwise/e2e JAX scan | "
            "layerwise/e2e JAX jit | layerwise/e2e torch |",
            "|---|---:|---:|---:|---:|",
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
    load = f"load average {os.getloadavg()[0]:.1f}"
    return (
        f"{cpu}, {os.cpu_count()} cores; {versions}; {load}; "
        f"{datetime.date.today().isoformat()}"
    )


def run(
    model_names: Sequence[str] = tuple(SETUPS),
    modes: Sequence[str] = MODES,
    *,
    quick: bool = False,
    batch_size: int = 128,
    repeats: int | None = None,
    scan_repeats: int | None = None,
    use_torch: bool = True,
    threads: int = 2,
) -> list[Row]:
    """Benchmarks every model x mode.

    Args:
      model_names: keys of ``SETUPS``.
      modes: entries of ``MODES``.
      quick: width x 1/8, batch 16, 3 repeats, chunks of 2 (a smoke run).
      batch_size: examples per step (ignored when ``quick``).
      repeats: overrides the setups' repeats of the jit and torch steps.
      scan_repeats: overrides the setups' number of timed chunks.
      use_torch: also time the PyTorch twin when torch is installed.
      threads: PyTorch intra-op threads (XLA:CPU uses every core).

    Returns:
      The rows, in order.
    """
    use_torch = use_torch and torch is not None
    if use_torch:
        torch.set_num_threads(threads)
    width_mult = 1.0
    rows = []
    for name in model_names:
        if name not in SETUPS:
            raise ValueError(
                f"model={name!r} is not benchmarked; allowed: {tuple(SETUPS)}"
            )
        setup = SETUPS[name]
        if quick:
            width_mult, batch_size = QUICK["width_mult"], QUICK["batch_size"]
            setup = dataclasses.replace(
                setup,
                repeats=QUICK["repeats"],
                chunk=QUICK["chunk"],
                scan_repeats=QUICK["repeats"],
                scan_warmup=1,
                warmup=2,
            )
        if repeats is not None:
            setup = dataclasses.replace(setup, repeats=repeats)
        if scan_repeats is not None:
            setup = dataclasses.replace(setup, scan_repeats=scan_repeats)
        rows += bench_model(
            name,
            modes,
            batch_size=batch_size,
            width_mult=width_mult,
            setup=setup,
            use_torch=use_torch,
        )
    return rows


# The 3x3 convolutions of ResNet-18's four stages: (map size, channels).
RESNET_CONVS = ((32, 64), (16, 128), (8, 256), (4, 512))


def _time_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _median_ms(times)


def _jax_conv_ms(size: int, channels: int, batch_size: int, repeats: int):
    """JAX times of one 3x3 convolution: forward, input and weight gradients."""
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (batch_size, size, size, channels))
    w = jax.random.normal(keys[1], (3, 3, channels, channels)) * 0.05
    g = jax.random.normal(keys[2], x.shape)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def dx(x, w, g):
        return jax.vjp(lambda x: conv(x, w), x)[1](g)[0]

    def dw(x, w, g):
        return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]

    def dw_scan(x, w, g):
        def body(carry, _):
            x, acc = carry
            return (1.0001 * x, acc + dw(x, w, g)), None

        return jax.lax.scan(body, (x, jnp.zeros_like(w)), None, length=2)[0][1]

    out = {}
    for key, fn in (("fwd", conv), ("dx", dx), ("dw", dw), ("dw_scan", dw_scan)):
        args = (x, w) if key == "fwd" else (x, w, g)
        compiled = jax.jit(fn).lower(*args).compile()
        out[key] = _time_ms(
            lambda c=compiled, a=args: jax.block_until_ready(c(*a)), repeats
        )
    out["dw_scan"] /= 2
    return out


def _torch_conv_ms(size: int, channels: int, batch_size: int, repeats: int):
    """PyTorch times of the same convolution (oneDNN), same three parts."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, channels, size, size, generator=gen)
    w = torch.randn(channels, channels, 3, 3, generator=gen) * 0.05
    g = torch.randn(x.shape, generator=gen)

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
        )

    with torch.no_grad():
        return {
            "fwd": _time_ms(
                lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats
            ),
            "dx": _time_ms(lambda: backward([True, False, False]), repeats),
            "dw": _time_ms(lambda: backward([False, True, False]), repeats),
        }


def conv_table(batch_size: int = 32, repeats: int = 3, threads: int = 2) -> str:
    """Markdown table: the 3x3 convolutions of ResNet-18, JAX beside PyTorch.

    Times (ms, median) of the forward convolution, its input gradient (dx), its
    weight gradient (dw), and in JAX also the weight gradient computed inside a
    ``lax.scan`` body (per iteration), for every stage of ResNet-18.
    """
    lines = [
        "| map | channels | JAX fwd | JAX dx | JAX dw | JAX dw in scan | "
        "torch fwd | torch dx | torch dw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if torch is not None:
        torch.set_num_threads(threads)
    for size, channels in RESNET_CONVS:
        j = _jax_conv_ms(size, channels, batch_size, repeats)
        t = (
            _torch_conv_ms(size, channels, batch_size, repeats)
            if torch is not None
            else {}
        )
        lines.append(
            f"| {size}x{size} | {channels} | {j['fwd']:.1f} | {j['dx']:.1f} | "
            f"{j['dw']:.1f} | {j['dw_scan']:.1f} | {_num(t.get('fwd'), '%.1f')} | "
            f"{_num(t.get('dx'), '%.1f')} | {_num(t.get('dw'), '%.1f')} |"
        )
        logging.info("convolution %dx%dx%d timed", size, size, channels)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: parses flags, runs :func:`run`, prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SETUPS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--scan_repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument(
        "--convs",
        action="store_true",
        help="time ResNet-18's 3x3 convolutions (forward, dx, dw) instead",
    )
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    start = time.time()
    print("Start: " + machine_line(), flush=True)
    if args.convs:
        batch_size = 32 if args.quick else args.batch_size
        print(conv_table(batch_size, args.repeats or 3, args.threads))
        print("End: " + machine_line())
        return
    rows = run(
        [m for m in args.models.split(",") if m],
        [m for m in args.modes.split(",") if m],
        quick=args.quick,
        batch_size=args.batch_size,
        repeats=args.repeats,
        scan_repeats=args.scan_repeats,
        use_torch=not args.no_torch,
        threads=args.threads,
    )
    print(format_table(rows))
    print()
    print("End: " + machine_line())
    print("Wall time: %.0f s" % (time.time() - start))
    print("Command: python -m benchmarks.bench_train " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
