"""All-layer nHSIC: hsicib.hsic beside per-layer calls and the authors' way.

Usage::

    python -m benchmarks.bench_hsic               # 15-25 min on 2 loaded CPU cores
    python -m benchmarks.bench_hsic --quick       # small n, a few minutes
    python -m benchmarks.bench_hsic --out=/tmp/bench_hsic.md

Two layer sets, with random features drawn from a class-structured latent
factor model (so the Gram spectra decay as real features do):

* LeNet5 widths at n = 1000: input 28x28x1, conv1 6x28x28, conv2 16x10x10
  (both before pooling), fc 120, fc 84; 10 classes.
* ResNet-18 feature maps at n = 512: input 3x32x32, stem 64x32x32, blocks
  64x32x32 x2, 128x16x16 x2, 256x8x8 x2, 512x4x4 x2; 10 classes.

Each is evaluated on all n examples at once (chunk None) and with the
chunked protocol (chunks of m, estimates averaged; m = 100 for LeNet5 as in
the authors' later code, m = 128 for ResNet-18 since 100 does not divide 512).
The columns:

* ours: ``hsicib.hsic.all_layers_jit`` (nHSIC and CKA against X and Y for
  every layer in one compiled call, default ``solver="cholesky"``), median
  wall time; ``solver="eigh"`` beside it.
* floor: the parts no implementation of this estimator can skip, each timed
  as its own jitted call in the same run: every Gram at its barest (one
  X X^T matmul per layer, exp, centering) and the factorization of every
  Gram (X and every layer; the label side needs only a C x C one): the
  Cholesky factor of G + eps m I and the two triangular solves that give
  (G + eps m I)^-1 G. ours / floor is the overhead of everything else (the
  traces, CKA, the label factor, the exact expm1 Gram with its offset check).
* per-layer eager: the same public functions (``gaussian_gram``,
  ``label_gram``, ``nocco``, ``cka``), one layer and one chunk at a time,
  without jit.
* authors' way: a NumPy float32 transcription of the HSIC-bottleneck code
  the paper's authors used: (n, n, d) broadcast distances, then
  R = K H (K H + eps n I)^-1 with an explicit ``np.linalg.inv`` per Gram
  (X and Y once per chunk, each layer once), nHSIC = sum(R_X o R_T^T).
  The (n, n, d) tensor is materialized in row tiles of at most
  ``--ref_budget_gib`` (the full tensor size is reported); layers whose
  predicted time would exceed ``--ref_max_s`` are not run but extrapolated
  from the measured time per element (marked "est.").

Timings interleave the variants repeat after repeat, so load from other
processes hits all alike; the machine is shared, so read ratios, not
absolute times. Memory of the jitted call is XLA's static buffer assignment
(``memory_analysis()``: arguments + outputs + temporaries).

BLAS threads: jaxlib's CPU eigh runs in the OpenBLAS that ships with SciPy.
With its default threading, every eigh call spins extra threads that fight
XLA's own pool and other processes; on a loaded 2-core machine that made
eigh 10-50x slower. ``--blas_threads`` (default 1) limits it through
threadpoolctl.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import xla_memory
from hsicib import hsic

GIB = 1024.0**3


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One benchmarked layer set.

    Attributes:
      name: table label.
      n: examples.
      input_shape: shape of one input example.
      layer_shapes: shape of one example's features, per layer.
      chunk: the chunked protocol's m (must divide n).
      num_classes: C.
    """

    name: str
    n: int
    input_shape: tuple[int, ...]
    layer_shapes: tuple[tuple[int, ...], ...]
    chunk: int
    num_classes: int = 10


LENET5 = ((6, 28, 28), (16, 10, 10), (120,), (84,))
RESNET18 = (
    ((64, 32, 32),) * 3 + ((128, 16, 16),) * 2 + ((256, 8, 8),) * 2 + ((512, 4, 4),) * 2
)


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [
            Scenario("LeNet5", 200, (28, 28, 1), LENET5, 100),
            Scenario("ResNet-18", 64, (3, 32, 32), RESNET18, 32),
        ]
    return [
        Scenario("LeNet5", 1000, (28, 28, 1), LENET5, 100),
        Scenario("ResNet-18", 512, (3, 32, 32), RESNET18, 128),
    ]


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def make_data(
    n: int,
    input_shape: Sequence[int],
    layer_shapes: Sequence[Sequence[int]],
    num_classes: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Class-structured features: tanh of random maps of a 32-d latent.

    Returns:
      x (n, *input_shape), y (n,) int32, layers [(n, *shape) ...], float32.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n).astype(np.int32)
    means = rng.normal(size=(num_classes, 32)).astype(np.float32)
    latent = means[y] + rng.normal(size=(n, 32)).astype(np.float32)

    def features(shape: Sequence[int]) -> np.ndarray:
        d = int(np.prod(shape))
        w = rng.normal(size=(32, d)).astype(np.float32) / np.sqrt(32.0)
        noise = 0.3 * rng.standard_normal((n, d), dtype=np.float32)
        return (np.tanh(latent @ w) + noise).reshape(n, *shape)

    return features(input_shape), y, [features(s) for s in layer_shapes]


# ----------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------


def _block(out):
    return jax.block_until_ready(out)


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Median wall time of each function; one warm-up call each, then repeats
    rounds that call every function once."""
    for fn in fns.values():
        _block(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            _block(fn())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def jit_memory_bytes(fn, *args) -> int:
    """Static peak of a jitted function: arguments + outputs + temporaries."""
    compiled = fn.lower(*args).compile()
    total = xla_memory.buffer_bytes(compiled)
    if total is None:
        return -1
    peak = getattr(compiled.memory_analysis(), "peak_memory_in_bytes", 0) or 0
    return int(max(peak, total))


# ----------------------------------------------------------------------------
# The variants
# ----------------------------------------------------------------------------


def ours(x, y, layers, num_classes: int, chunk: int | None, solver: str = "cholesky"):
    config = hsic.HSICConfig(chunk_size=chunk, solver=solver)
    return hsic.all_layers_jit(x, y, layers, num_classes=num_classes, config=config)


def _split(a: jax.Array, m: int) -> jax.Array:
    return a.reshape(a.shape[0] // m, m, -1)


def _bare_gram(a: jax.Array, sigma: float = 5.0) -> jax.Array:
    """The minimum a centered Gaussian Gram needs: X X^T, exp, centering."""
    g = jax.lax.dot_general(a, a, (((1,), (1,)), ((), ())), precision="highest")
    sq = jnp.diagonal(g)
    k = jnp.exp(-(sq[:, None] + sq[None, :] - 2.0 * g) / (2.0 * sigma**2 * a.shape[1]))
    return k - k.mean(0) - k.mean(1)[:, None] + k.mean()


@functools.partial(jax.jit, static_argnames="m")
def floor_grams(x, layers, m: int):
    """Every centered Gram (X and each layer) per chunk: (B (L + 1), m, m)."""
    grams = [jax.vmap(_bare_gram)(_split(a, m)) for a in [x, *layers]]
    return jnp.concatenate(grams).reshape(-1, m, m)


@jax.jit
def floor_factor(grams):
    """Per Gram G (m x m): L = chol(G + eps m I), then (G + eps m I)^-1 G by
    two triangular solves; the same calls all_layers makes."""
    chol = hsic._ridge_factor(grams, 1e-5 * grams.shape[-1])
    return hsic._ridge_solve(chol, grams)


def per_layer_eager(x, y, layers, num_classes: int, chunk: int | None):
    """The public functions one chunk and one layer at a time, no jit."""
    n = x.shape[0]
    m = n if chunk is None else chunk
    rows = []
    for start in range(0, n, m):
        part = slice(start, start + m)
        kx = hsic.gaussian_gram(x[part])
        ly = hsic.label_gram(y[part], num_classes)
        for t in layers:
            kt = hsic.gaussian_gram(t[part])
            rows.append(
                [
                    hsic.nocco(kx, kt),
                    hsic.nocco(ly, kt),
                    hsic.cka(kx, kt),
                    hsic.cka(ly, kt),
                ]
            )
    return rows


# ----------------------------------------------------------------------------
# The authors' way (NumPy float32)
# ----------------------------------------------------------------------------


def broadcast_bytes(m: int, d: int) -> int:
    """Bytes of one float32 (m, m, d) difference tensor."""
    return 4 * m * m * d


def reference_gram(a: np.ndarray, sigma: float, budget_bytes: float) -> np.ndarray:
    """exp(-D / (2 sigma^2 d)) with D from (m, m, d) broadcast differences.

    The difference tensor and its square are materialized in row tiles whose
    two live copies stay under ``budget_bytes``.
    """
    a = a.reshape(a.shape[0], -1).astype(np.float32)
    m, d = a.shape
    rows = int(max(1, budget_bytes // (2 * 4 * m * d)))
    dist = np.empty((m, m), np.float32)
    for i in range(0, m, rows):
        diff = a[i : i + rows, None, :] - a[None, :, :]
        dist[i : i + rows] = (diff**2).sum(-1)
    return np.exp(-dist / np.float32(2.0 * sigma**2 * d))


def reference_r(k: np.ndarray, eps: float) -> np.ndarray:
    """R = K H (K H + eps m I)^-1 with an explicit inverse (authors' code)."""
    m = k.shape[0]
    h = np.eye(m, dtype=np.float32) - np.float32(1.0 / m)
    kc = k @ h
    return kc @ np.linalg.inv(kc + np.float32(eps * m) * np.eye(m, dtype=np.float32))


@dataclasses.dataclass
class ReferenceResult:
    seconds: float  # measured + extrapolated
    measured_seconds: float
    extrapolated_layers: list[int]
    nhsic_x: np.ndarray
    nhsic_y: np.ndarray


def reference_all_layers(
    x: np.ndarray,
    y: np.ndarray,
    layers: Sequence[np.ndarray],
    *,
    num_classes: int,
    chunk: int | None,
    sigma: float = 5.0,
    eps: float = 1e-5,
    budget_bytes: float = 2 * GIB,
    max_seconds: float = float("inf"),
) -> ReferenceResult:
    """nHSIC(X; T_l), nHSIC(Y; T_l) the authors' way, chunk means.

    Layers run in order of increasing width; once one has run, a layer whose
    predicted time (measured seconds per broadcast element x its elements)
    would pass ``max_seconds`` is extrapolated instead (its values are NaN).
    """
    n = x.shape[0]
    m = n if chunk is None else chunk
    chunks = [slice(s, s + m) for s in range(0, n, m)]
    codes = np.eye(num_classes, dtype=np.float32)[y]
    start = time.perf_counter()
    rx, ry = [], []
    for part in chunks:
        rx.append(reference_r(reference_gram(x[part], sigma, budget_bytes), eps))
        ry.append(reference_r(codes[part] @ codes[part].T, eps))
    measured = time.perf_counter() - start
    elements = len(chunks) * m * m * int(np.prod(x.shape[1:]))
    nh_x = np.full(len(layers), np.nan)
    nh_y = np.full(len(layers), np.nan)
    extrapolated, predicted = [], 0.0
    order = sorted(range(len(layers)), key=lambda i: np.prod(layers[i].shape[1:]))
    for i in order:
        d = int(np.prod(layers[i].shape[1:]))
        layer_elements = len(chunks) * m * m * d
        guess = measured / max(elements, 1) * layer_elements
        if measured + predicted + guess > max_seconds:
            extrapolated.append(i)
            predicted += guess
            continue
        t0 = time.perf_counter()
        vx, vy = [], []
        for j, part in enumerate(chunks):
            rt = reference_r(reference_gram(layers[i][part], sigma, budget_bytes), eps)
            vx.append(np.sum(rx[j] * rt.T))
            vy.append(np.sum(ry[j] * rt.T))
        measured += time.perf_counter() - t0
        elements += layer_elements
        nh_x[i], nh_y[i] = np.mean(vx), np.mean(vy)
    return ReferenceResult(measured + predicted, measured, extrapolated, nh_x, nh_y)


# ----------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------


def _fmt_s(s: float) -> str:
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1e3:.1f} ms"


def _fmt_b(b: float) -> str:
    if b >= GIB:
        return f"{b / GIB:.1f} GiB"
    return f"{b / 1024**2:.0f} MiB"


def bench_scenario(sc: Scenario, args) -> list[str]:
    """Rows of the main table for one scenario (chunk None and chunk m)."""
    x_np, y_np, layers_np = make_data(sc.n, sc.input_shape, sc.layer_shapes, 10)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    layers = [jnp.asarray(t) for t in layers_np]
    widths = [int(np.prod(sc.input_shape))] + [int(np.prod(s)) for s in sc.layer_shapes]
    rows = []
    for chunk in (None, sc.chunk):
        m = sc.n if chunk is None else chunk
        print(f"[{sc.name} n={sc.n} chunk={chunk}] timing ...", file=sys.stderr)
        grams = floor_grams(x, layers, m)
        times = time_interleaved(
            {
                "ours": functools.partial(ours, x, y, layers, sc.num_classes, chunk),
                "grams": functools.partial(floor_grams, x, layers, m),
                "factor": functools.partial(floor_factor, grams),
                "eigh": functools.partial(
                    ours, x, y, layers, sc.num_classes, chunk, "eigh"
                ),
            },
            args.repeats,
        )
        floor = times["grams"] + times["factor"]
        eager = time_interleaved(
            {
                "eager": functools.partial(
                    per_layer_eager, x, y, layers, sc.num_classes, chunk
                )
            },
            args.eager_repeats,
        )["eager"]
        mem = _ours_memory(x, y, layers, sc.num_classes, chunk)
        print(f"[{sc.name} n={sc.n} chunk={chunk}] reference ...", file=sys.stderr)
        ref = reference_all_layers(
            x_np,
            y_np,
            layers_np,
            num_classes=sc.num_classes,
            chunk=chunk,
            budget_bytes=args.ref_budget_gib * GIB,
            max_seconds=args.ref_max_s,
        )
        got = ours(x, y, layers, sc.num_classes, chunk)
        ran = np.isfinite(ref.nhsic_x)
        gap = max(
            _rel_gap(np.asarray(got["nhsic_x"])[ran], ref.nhsic_x[ran]),
            _rel_gap(np.asarray(got["nhsic_y"])[ran], ref.nhsic_y[ran]),
        )
        full = max(broadcast_bytes(m, d) for d in widths)
        ref_note = f"{_fmt_s(ref.seconds)}" + (
            f" (est.; {len(ref.extrapolated_layers)} of {len(widths) - 1} layers"
            " extrapolated)"
            if ref.extrapolated_layers
            else ""
        )
        tiled = " (tiled)" if 2 * full > args.ref_budget_gib * GIB else ""
        cells = [
            sc.name,
            str(sc.n),
            str(chunk),
            _fmt_s(times["ours"]),
            f"{_fmt_s(times['grams'])} + {_fmt_s(times['factor'])}",
            f"{times['ours'] / floor:.2f}x",
            f"{_fmt_s(times['eigh'])} ({times['eigh'] / times['ours']:.1f}x)",
            f"{_fmt_s(eager)} ({eager / times['ours']:.0f}x)",
            f"{ref_note} ({ref.seconds / times['ours']:.0f}x)",
            _fmt_b(mem),
            _fmt_b(full) + tiled,
            f"{gap:.1e}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr)
    return rows


def _rel_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12), initial=0.0))


def _ours_memory(x, y, layers, num_classes: int, chunk: int | None) -> int:
    fn = jax.jit(
        functools.partial(
            hsic.all_layers,
            num_classes=num_classes,
            config=hsic.HSICConfig(chunk_size=chunk),
        )
    )
    return jit_memory_bytes(fn, x, y, layers)


MAIN_HEADER = (
    "| layers | n | chunk m | ours (jit) | floor: Grams + factorizations | "
    "ours / floor | ours, solver=eigh (/ ours) | "
    "per-layer eager (/ ours) | authors' way (/ ours) | ours peak memory | "
    "largest (m, m, d) broadcast | max rel. gap |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def bench_scaling_n(args) -> list[str]:
    ns = [128, 256, 512] if args.quick else [256, 512, 1024, 2048, 4096]
    rows = []
    for n in ns:
        x, y, layers = make_data(n, (28, 28, 1), LENET5, 10)
        x, y, layers = jnp.asarray(x), jnp.asarray(y), [jnp.asarray(t) for t in layers]
        cells = [str(n)]
        for chunk in (None, 128):
            reps = 1 if n >= 2048 and chunk is None else args.repeats
            print(f"[scaling n={n} chunk={chunk}]", file=sys.stderr)
            t = time_interleaved(
                {"ours": functools.partial(ours, x, y, layers, 10, chunk)}, reps
            )["ours"]
            cells += [_fmt_s(t), _fmt_b(_ours_memory(x, y, layers, 10, chunk))]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr)
    return rows


def bench_scaling_layers(args) -> list[str]:
    n = 256 if args.quick else 1000
    counts = [1, 2, 4, 8] if args.quick else [1, 2, 4, 8, 16]
    rows = []
    for count in counts:
        x, y, layers = make_data(n, (784,), [(512,)] * count, 10)
        x, y, layers = jnp.asarray(x), jnp.asarray(y), [jnp.asarray(t) for t in layers]
        cells = [str(count)]
        for chunk in (None, 100 if n % 100 == 0 else 128):
            print(f"[scaling L={count} chunk={chunk}]", file=sys.stderr)
            t = time_interleaved(
                {"ours": functools.partial(ours, x, y, layers, 10, chunk)},
                args.repeats,
            )["ours"]
            cells += [_fmt_s(t), _fmt_b(_ours_memory(x, y, layers, 10, chunk))]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr)
    return rows


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [
                ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), jax {jax.__version__} "
        f"({jax.default_backend()}), numpy {np.__version__}, BLAS threads "
        f"{os.environ.get('HSICIB_BENCH_BLAS_THREADS', 'default')}, 1-min load "
        f"average at start {load:.1f}"
    )


def limit_blas_threads(threads: int) -> None:
    """Caps OpenBLAS threads, including the copy jaxlib loads for LAPACK.

    jaxlib loads SciPy's OpenBLAS on its first LAPACK call, after which
    OPENBLAS_NUM_THREADS is no longer read; so set the variable, make one
    eigh call, then cap every loaded BLAS with threadpoolctl.
    """
    import threadpoolctl

    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    jax.block_until_ready(jnp.linalg.eigh(jnp.eye(2)))
    threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    os.environ["HSICIB_BENCH_BLAS_THREADS"] = str(threads)


def parse_args(argv: Sequence[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small n, a few minutes")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (5)")
    p.add_argument("--eager_repeats", type=int, default=None, help="(3)")
    p.add_argument(
        "--ref_budget_gib",
        type=float,
        default=2.0,
        help="memory for the reference's broadcast tiles",
    )
    p.add_argument(
        "--ref_max_s",
        type=float,
        default=None,
        help="time budget of the reference per row (180 s; quick 10 s)",
    )
    p.add_argument(
        "--blas_threads",
        type=int,
        default=1,
        help="OpenBLAS threads (0 = leave the default)",
    )
    p.add_argument("--skip_scaling", action="store_true")
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.eager_repeats is None:
        args.eager_repeats = 1 if args.quick else 2
    if args.ref_max_s is None:
        args.ref_max_s = 10.0 if args.quick else 180.0
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    if args.blas_threads > 0:
        limit_blas_threads(args.blas_threads)
    lines = [f"Machine: {machine()}.", "", MAIN_HEADER]
    for sc in scenarios(args.quick):
        lines += bench_scenario(sc, args)
    if not args.skip_scaling:
        lines += [
            "",
            "Growth with n (LeNet5 widths, 4 layers):",
            "",
            "| n | chunk None: time | memory | chunk 128: time | memory |",
            "|---|---|---|---|---|",
            *bench_scaling_n(args),
            "",
            "Growth with the number of layers (width 512 each):",
            "",
            "| layers | chunk None: time | memory | chunked: time | memory |",
            "|---|---|---|---|---|",
            *bench_scaling_layers(args),
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
