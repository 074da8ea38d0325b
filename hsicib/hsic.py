"""Kernel dependence statistics in JAX: Gram matrices, HSIC, NOCCO and CKA.

Synopsis
========

Every function takes samples first: a feature array of shape (n, ...) is
flattened to (n, d) and every Gram matrix is (n, n), whatever d is. Kernel
math runs in float32 (float64 when the input is float64 and x64 is on); bf16,
float16, integer and boolean inputs are upcast first. Everything is a pure
function, safe under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. Bad shapes and
unknown option names raise ``ValueError`` at trace time.

Distances (matmul identity, never an (n, n, d) broadcast)::

    D_ij = |x_i|^2 + |x_j|^2 - 2 x_i . x_j,   clamped at 0, D_ii = 0

with the inner products of the centered features, H X X^T H (distances do not
change, float32 cancellation does); features whose offset exceeds 30 times
their spread (layers at initialization) are mean-centered before the matmul
instead. Matmuls run with ``Precision.HIGHEST``.

Gaussian Gram, K_ij = exp(-D_ij / s) with D the squared distance
(``distance="squared"``) or the Euclidean distance sqrt(D) (``"euclidean"``,
the authors' May-2024 code), and the scale s chosen by ``bandwidth``:

* ``"per_dim"``: s = 2 sigma^2 d, d the flattened feature size (the rule of
  HSIC-bottleneck, Ma et al. 2020, used by Sakamoto & Sato 2024; sigma = 5).
* ``"fixed"``: s = 2 sigma^2.
* ``"median"``: s = 2 med, med = the median of the n(n-1)/2 off-diagonal
  entries of the chosen distance (an even count averages the two middle
  values; if med = 0 the mean is used, and 1 if that is 0 too).

Conversions: ``per_dim`` with sigma equals ``fixed`` with sigma * sqrt(d);
``median`` equals ``fixed`` with sigma = sqrt(med).

Labels use the linear kernel on one-hot codes, L = Y Y^T. Centering is
H K H with H = I - 1 1^T / n.

HSIC (Gretton et al. 2005), biased V-statistic with the (n-1)^-2 normalisation
of that paper::

    HSIC_b(K, L) = tr(K H L H) / (n - 1)^2

Unbiased (Song et al. 2012), K~, L~ = K, L with zeroed diagonals, n >= 4::

    HSIC_u = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

Normalized HSIC, the statistic of Sakamoto & Sato (2024): the normalized
cross-covariance operator NOCCO (Fukumizu et al. 2008) as estimated in the
HSIC-bottleneck code::

    nHSIC(K, L) = tr(R_K R_L),  R = G (G + eps n I)^-1,  G = H K H,  eps = 1e-5

It is not bounded by 1: with one-hot labels of C classes nHSIC(Y; Y) is close
to C - 1. We never form an inverse. Two solvers compute it:

* ``"cholesky"`` (default): A = G + eps n I is positive definite (its smallest
  eigenvalue is at least eps n, far above float32 round-off of G), so
  A = L L^T exists; Z = A^-1 G = R^T comes from two triangular solves, and
  tr(R_K R_L) = sum_ij (Z_K)_ij (Z_L)_ji. One Cholesky and 2 n^3 flops of
  solves per Gram, no (n, n) product per pair; plain autodiff gives the
  gradients (finite, since A stays positive definite).
* ``"eigh"``: with G = U diag(lam) U^T (lam clipped at 0), R = U diag(a) U^T,
  a = lam / (lam + eps n), so tr(R_K R_L) = a^T ((U^T V) o (U^T V)) b (o the
  elementwise product): one ``eigh`` per Gram and one (n, n) matmul per pair.
  Its derivative comes from dR = c A^-1 dG A^-1 (c = eps n, A = G + c I),
  which is smooth even where eigenvalues repeat, through a custom JVP. About
  3x (n = 1000) to 10x (n = 100) slower on CPU; round-off about 1e-7
  relative against about 1e-6 to 1e-5 for Cholesky on ill-conditioned Grams.

The authors' code centers one side only (G = K H); the trace is the same.

CKA (Kornblith et al. 2019)::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

in [0, 1] with the biased estimator (the unbiased one may dip slightly below
0); 0 when a Gram is constant (for example a layer whose features are all
equal). Minibatch CKA (Nguyen et al. 2021) averages unbiased HSIC terms over
batches before taking the ratio: ``StreamingCKA``.

All layers at once (``all_layers``): the L layer Grams stack to (L, n, n), the
statistic is vmapped over layers, the X and Y Grams are computed once, and the
sample axis may be split into chunks of m examples whose estimates are
averaged (the evaluation protocol of the authors' later code: 1,000 examples in
chunks of 100). The Y side uses the (n, C) centered one-hot factor instead of
an (n, n) eigendecomposition.

Numerics. Internally the Gaussian Gram is kept as K - 1 = expm1(-D / s):
centering, HSIC and NOCCO ignore the shift, and the paper's wide kernels
(sigma = 5 per dimension puts most entries within 1e-2 of 1) keep their full
float32 precision; with it, float32 nHSIC agrees with a float64 evaluation to
1e-4 relative or better (1e-6 to 1e-5 typical), where the authors' float32
explicit inverse is off by up to 1e-2. ``nhsic``, ``nhsic_labels``,
``all_layers`` and ``StreamingCKA`` use this path; ``nocco(gaussian_gram(x),
...)`` starts from K itself and is good to about 1e-3 in float32 (use x64 if
that matters). On CPU the factorizations of a stack run one at a time
(``_per_matrix``): jaxlib 0.10's batched LAPACK kernels can deadlock when
two batches run concurrently.

References:
  Gretton, Bousquet, Smola, Schoelkopf. Measuring statistical dependence with
    Hilbert-Schmidt norms. ALT 2005.
  Fukumizu, Gretton, Sun, Schoelkopf. Kernel measures of conditional
    dependence. NeurIPS 2008.
  Song, Smola, Gretton, Bedo, Borgwardt. Feature selection via dependence
    maximization. JMLR 2012.
  Kornblith, Norouzi, Lee, Hinton. Similarity of neural network
    representations revisited. ICML 2019.
  Ma, Lewis, Kleijn. The HSIC bottleneck: deep learning without
    back-propagation. AAAI 2020.
  Nguyen, Raghu, Kornblith. Do wide and deep networks learn the same things?
    ICLR 2021.
  Sakamoto, Sato. End-to-end training induces information bottleneck through
    layer-role differentiation. TMLR 2024.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import operator
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Bandwidth = Literal["per_dim", "median", "fixed"]
Distance = Literal["squared", "euclidean"]
Estimator = Literal["biased", "unbiased"]
Solver = Literal["cholesky", "eigh"]
CKAKernel = Literal["gaussian", "linear"]

BANDWIDTHS: tuple[str, ...] = ("per_dim", "median", "fixed")
DISTANCES: tuple[str, ...] = ("squared", "euclidean")
ESTIMATORS: tuple[str, ...] = ("biased", "unbiased")
SOLVERS: tuple[str, ...] = ("cholesky", "eigh")
CKA_KERNELS: tuple[str, ...] = ("gaussian", "linear")
STATISTICS: tuple[str, ...] = ("nhsic_x", "nhsic_y", "cka_x", "cka_y")

__all__ = [
    "BANDWIDTHS",
    "DISTANCES",
    "ESTIMATORS",
    "SOLVERS",
    "STATISTICS",
    "Bandwidth",
    "Distance",
    "Estimator",
    "HSICConfig",
    "Solver",
    "StreamingCKA",
    "StreamingCKAState",
    "all_layers",
    "all_layers_jit",
    "center",
    "cka",
    "gaussian_gram",
    "hsic",
    "label_gram",
    "linear_gram",
    "nhsic",
    "nhsic_labels",
    "nocco",
    "sq_distances",
]

_HIGHEST = jax.lax.Precision.HIGHEST

_mm = functools.partial(jnp.matmul, precision=_HIGHEST)
_einsum = functools.partial(jnp.einsum, precision=_HIGHEST)


def _outer_gram(x: Array) -> Array:
    """X X^T over the last two axes, (..., n, d) -> (..., n, n), as one
    ``dot_general`` contracting d (no transposed copy of the features:
    ``matmul(x, swapaxes(x))`` on a stack made XLA:CPU 1.6x slower)."""
    nd = x.ndim
    batch = tuple(range(nd - 2))
    return jax.lax.dot_general(
        x, x, (((nd - 1,), (nd - 1,)), (batch, batch)), precision=_HIGHEST
    )


# ----------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}; got {value!r}")


def _check_positive(name: str, value: object) -> None:
    """Checks a Python number is > 0 (traced values pass through unchecked)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}")


def _float_dtype(dtype) -> np.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _features(x, name: str) -> Array:
    """(n, ...) array -> (n, d) float array."""
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (n, ...) with samples first and at least 2 "
            f"dimensions; got shape {x.shape} (use {name}[:, None] for one "
            "feature per sample)"
        )
    d = math.prod(x.shape[1:])
    if d == 0 or x.shape[0] == 0:
        raise ValueError(
            f"{name} must have at least one sample and one feature; got shape {x.shape}"
        )
    return x.reshape(x.shape[0], d).astype(_float_dtype(x.dtype))


def _gram(k, name: str) -> Array:
    k = jnp.asarray(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(
            f"{name} must be a square (n, n) Gram matrix; got shape {k.shape}"
        )
    return k.astype(_float_dtype(k.dtype))


def _check_same_n(name_a: str, n_a: int, name_b: str, n_b: int) -> None:
    if n_a != n_b:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of samples n; got "
            f"n={n_a} for {name_a} and n={n_b} for {name_b}"
        )


def _gram_pair(k, other) -> tuple[Array, Array]:
    """Validates the (k, l) Gram pair of the public API."""
    k, other = _gram(k, "k"), _gram(other, "l")
    _check_same_n("k", k.shape[0], "l", other.shape[0])
    dtype = jnp.promote_types(k.dtype, other.dtype)
    return k.astype(dtype), other.astype(dtype)


def _check_n_for(estimator: str, n: int) -> None:
    _check_choice("estimator", estimator, ESTIMATORS)
    need = 4 if estimator == "unbiased" else 2
    if n < need:
        raise ValueError(
            f"the {estimator} estimator needs n >= {need} samples; got n={n}"
        )


def _num_classes(num_classes: object) -> int:
    try:
        value = operator.index(num_classes)
    except TypeError:
        value = None
    if value is None or isinstance(num_classes, bool) or value < 1:
        raise ValueError(
            f"num_classes must be a positive Python int; got {num_classes!r}"
        )
    return value


def _one_hot(y, num_classes: int | None, name: str = "y") -> Array:
    """Integer labels (n,) or one-hot codes (n, C) -> (n, C) float."""
    y = jnp.asarray(y)
    if y.ndim == 1:
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(
                f"{name} of shape (n,) must hold integer class labels; got dtype "
                f"{y.dtype} (pass one-hot codes as an (n, C) array)"
            )
        if num_classes is None:
            raise ValueError(
                f"num_classes is required with integer labels {name} of shape "
                f"{y.shape}; got None"
            )
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64
        return jax.nn.one_hot(y, _num_classes(num_classes), dtype=dtype)
    if y.ndim == 2:
        if num_classes is not None and y.shape[1] != _num_classes(num_classes):
            raise ValueError(
                f"{name} has {y.shape[1]} one-hot columns but num_classes={num_classes}"
            )
        return y.astype(_float_dtype(y.dtype))
    raise ValueError(
        f"{name} must be integer labels (n,) or one-hot codes (n, C); got shape "
        f"{y.shape}"
    )


# ----------------------------------------------------------------------------
# Gram matrices
# ----------------------------------------------------------------------------


def _center(k: Array) -> Array:
    """H K H on the last two axes (batch dimensions allowed)."""
    row = jnp.mean(k, axis=-1, keepdims=True)
    col = jnp.mean(k, axis=-2, keepdims=True)
    return k - row - col + jnp.mean(row, axis=-2, keepdims=True)


# A float32 Gram entry x_i . x_j carries rounding of about eps |x_i| |x_j|;
# the centered Gram H X X^T H (all that distances depend on) is smaller by the
# ratio tr(X X^T) / tr(H X X^T H) = (offset^2 + spread^2) / spread^2, which
# multiplies that error. Past this ratio (about 1.5 digits of float32's 7
# lost), the Gram is recomputed from mean-centered features.
_MAX_OFFSET_RATIO = 30.0


def _centered_feature_gram(x: Array) -> Array:
    """H X X^T H from mean-centered features: exact to float32 rounding of the
    spread, at the cost of one more pass over the (..., n, d) features. The
    mean is a matrix-vector product (on XLA:CPU a column mean of a wide array
    can cost more than the Gram matmul)."""
    n = x.shape[-2]
    mean = _mm(jnp.full((*x.shape[:-2], 1, n), 1.0 / n, x.dtype), x)
    x = x - mean
    return _outer_gram(x)


def _sq_distances(x: Array) -> Array:
    """(..., n, d) float -> (..., n, n) squared Euclidean distances.

    The inner products come from H (X X^T) H (exact algebra, O(n^2) extra),
    unless the features carry an offset more than ``_MAX_OFFSET_RATIO`` times
    their spread (e.g. a layer at initialization); then, and only then, from
    mean-centered features (``lax.cond`` over the whole stack, so the usual
    case pays no extra pass over the features).
    """
    gram = _outer_gram(x)
    g = _center(gram)
    trace = lambda a: jnp.trace(a, axis1=-2, axis2=-1)
    total = trace(gram)  # sum of x * x, without another pass over the features
    offset = jnp.any(_MAX_OFFSET_RATIO * trace(g) < total)
    g = jax.lax.cond(offset, lambda: _center(_centered_feature_gram(x)), lambda: g)
    g = 0.5 * (g + _swap(g))
    sq = jnp.diagonal(g, axis1=-2, axis2=-1)
    dist = jnp.maximum(sq[..., :, None] + sq[..., None, :] - 2.0 * g, 0.0)
    n = x.shape[-2]
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, dist)


def sq_distances(x) -> Array:
    """Pairwise squared Euclidean distances by the matmul identity.

    D_ij = |x_i|^2 + |x_j|^2 - 2 x_i . x_j on mean-centered features (the
    distances do not change; float32 cancellation does), ``Precision.HIGHEST``,
    symmetrized, clamped at 0, and an exactly zero diagonal. Never forms an
    (n, n, d) array. The precision limit is then the input's own: float32
    features whose spread is below ~1e-6 of a common offset have no
    differences left to measure.

    Args:
      x: features, shape (n, ...) (flattened to (n, d)); any real dtype, bf16
        upcast to float32.

    Returns:
      Distances, shape (n, n), float32 (float64 for float64 input under x64).

    Raises:
      ValueError: if ``x`` has fewer than 2 dimensions or no features.
    """
    return _sq_distances(_features(x, "x"))


def _safe_sqrt(v: Array) -> Array:
    """sqrt with a zero (not infinite) derivative at 0."""
    pos = v > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


def _median_offdiag(dist: Array) -> Array:
    n = dist.shape[0]
    rows, cols = np.triu_indices(n, k=1)
    off = dist[rows, cols]
    med = jnp.median(off)
    mean = jnp.mean(off)
    return jnp.where(med > 0, med, jnp.where(mean > 0, mean, 1.0))


def _gaussian_minus_one(x: Array, sigma, bandwidth: str, distance: str) -> Array:
    """K - 1 = expm1(-D / s) for x (..., n, d).

    Centering, HSIC and NOCCO ignore the constant shift; expm1 keeps full
    relative precision in the small entries of a wide (flat) kernel, where
    K itself is within float32 rounding of 1.
    """
    dist = _sq_distances(x)
    if distance == "euclidean":
        dist = _safe_sqrt(dist)
    if bandwidth == "per_dim":
        scale = 2.0 * sigma**2 * x.shape[-1]
    elif bandwidth == "fixed":
        scale = 2.0 * sigma**2
    else:
        if x.shape[-2] < 2:
            raise ValueError(
                f"bandwidth='median' needs n >= 2 samples; got n={x.shape[-2]}"
            )
        median = _median_offdiag
        for _ in range(dist.ndim - 2):
            median = jax.vmap(median)
        scale = 2.0 * median(dist)[..., None, None]
    return jnp.expm1(-dist / scale)


def _gaussian(x: Array, sigma, bandwidth: str, distance: str) -> Array:
    return 1.0 + _gaussian_minus_one(x, sigma, bandwidth, distance)


def _check_kernel_args(sigma, bandwidth, distance) -> None:
    _check_choice("bandwidth", bandwidth, BANDWIDTHS)
    _check_choice("distance", distance, DISTANCES)
    _check_positive("sigma", sigma)


def gaussian_gram(
    x,
    *,
    sigma: float = 5.0,
    bandwidth: Bandwidth = "per_dim",
    distance: Distance = "squared",
) -> Array:
    """Gaussian Gram matrix K_ij = exp(-D_ij / s).

    D is the squared Euclidean distance (``distance="squared"``, default) or
    its square root (``"euclidean"``, the authors' May-2024 code). The scale s:

    * ``"per_dim"`` (default): s = 2 sigma^2 d, d = flattened feature size
      (HSIC-bottleneck, Ma et al. 2020; Sakamoto & Sato 2024 use sigma = 5).
    * ``"fixed"``: s = 2 sigma^2.
    * ``"median"``: s = 2 med with med the median of the n(n-1)/2 off-diagonal
      entries of D (``sigma`` is ignored; the mean if the median is 0, then 1).

    ``per_dim`` with sigma is ``fixed`` with sigma sqrt(d); ``median`` is
    ``fixed`` with sigma = sqrt(med).

    Args:
      x: features, shape (n, ...), flattened to (n, d).
      sigma: kernel width, > 0 (a Python float, or a traced scalar).
      bandwidth: ``"per_dim"``, ``"median"`` or ``"fixed"``.
      distance: ``"squared"`` or ``"euclidean"``.

    Returns:
      Gram matrix, shape (n, n), float32, ones on the diagonal. Entries within
      float32 rounding of 1 (very wide kernels, nearly constant features) lose
      their differences here; ``nhsic`` and ``all_layers`` keep K - 1 inside
      and do not.

    Raises:
      ValueError: on an unknown option, sigma <= 0 or a bad shape.
    """
    _check_kernel_args(sigma, bandwidth, distance)
    return _gaussian(_features(x, "x"), sigma, bandwidth, distance)


def linear_gram(x) -> Array:
    """Linear Gram matrix K = X X^T of flattened features.

    Args:
      x: features, shape (n, ...), flattened to (n, d).

    Returns:
      Gram matrix, shape (n, n), float32.
    """
    x = _features(x, "x")
    return _mm(x, x.T)


def label_gram(y, num_classes: int | None = None) -> Array:
    """Linear kernel on one-hot labels, L = Y Y^T (L_ij = 1 if same class).

    Args:
      y: integer labels in [0, num_classes), shape (n,) (labels outside the
        range give an all-zero code, as ``jax.nn.one_hot`` does), or one-hot
        (or soft) codes, shape (n, C).
      num_classes: number of classes C, a Python int; required with integer
        labels, checked against C for codes.

    Returns:
      Gram matrix, shape (n, n), float32.

    Raises:
      ValueError: on a bad shape or dtype, or a missing ``num_classes``.
    """
    codes = _one_hot(y, num_classes)
    return _mm(codes, codes.T)


def center(k) -> Array:
    """Double centering H K H with H = I - 1 1^T / n (no H is formed).

    Args:
      k: Gram matrix, shape (n, n).

    Returns:
      The centered matrix, shape (n, n); its rows and columns sum to 0.
    """
    return _center(_gram(k, "k"))


# ----------------------------------------------------------------------------
# HSIC and CKA
# ----------------------------------------------------------------------------


def _offdiag_shifted(k: Array) -> Array:
    """K with zero diagonal and its off-diagonal mean removed (batched).

    HSIC_u is exactly invariant to adding a constant to the off-diagonal
    entries; removing the mean avoids float32 cancellation for flat kernels.
    """
    n = k.shape[-1]
    eye = jnp.eye(n, dtype=bool)
    k = jnp.where(eye, 0.0, k)
    mean = jnp.sum(k, axis=(-2, -1), keepdims=True) / (n * (n - 1))
    return jnp.where(eye, 0.0, k - mean)


def _hsic_unbiased_matrix(ks: Array, ls: Array) -> Array:
    """Unbiased HSIC between every pair: ks (A, n, n), ls (B, n, n) -> (A, B)."""
    n = ks.shape[-1]
    kt, lt = _offdiag_shifted(ks), _offdiag_shifted(ls)
    trace = _einsum("aij,bji->ab", kt, lt)
    ksum, lsum = jnp.sum(kt, axis=(1, 2)), jnp.sum(lt, axis=(1, 2))
    kcol, lrow = jnp.sum(kt, axis=1), jnp.sum(lt, axis=2)
    cross = _mm(kcol, lrow.T)
    total = (
        trace
        + ksum[:, None] * lsum[None, :] / ((n - 1) * (n - 2))
        - 2.0 * cross / (n - 2)
    )
    return total / (n * (n - 3))


def _hsic(k: Array, g: Array, estimator: str) -> Array:
    n = k.shape[-1]
    if estimator == "unbiased":
        return _hsic_unbiased_matrix(k[None], g[None])[0, 0]
    return jnp.sum(_center(k) * _center(g).T) / (n - 1) ** 2


def hsic(k, l, *, estimator: Estimator = "biased") -> Array:  # noqa: E741
    """Hilbert-Schmidt independence criterion from two Gram matrices.

    ``"biased"`` (Gretton et al. 2005): tr(K H L H) / (n - 1)^2.
    ``"unbiased"`` (Song et al. 2012), with K~, L~ the Grams with zero
    diagonal: [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] /
    (n(n-3)).

    Args:
      k: Gram matrix, shape (n, n).
      l: Gram matrix, shape (n, n).
      estimator: ``"biased"`` (n >= 2) or ``"unbiased"`` (n >= 4).

    Returns:
      Scalar float32.

    Raises:
      ValueError: on mismatched n, a non-square input, an unknown estimator or
        too few samples.
    """
    k, g = _gram_pair(k, l)
    _check_n_for(estimator, k.shape[0])
    return _hsic(k, g, estimator)


def _safe_ratio(num: Array, den_a: Array, den_b: Array) -> Array:
    """num / sqrt(den_a den_b), 0 where either denominator is not positive."""
    ok = (den_a > 0) & (den_b > 0)
    root = jnp.sqrt(jnp.where(ok, den_a, 1.0)) * jnp.sqrt(jnp.where(ok, den_b, 1.0))
    return jnp.where(ok, num / root, 0.0)


def _cka(k: Array, g: Array, estimator: str) -> Array:
    return _safe_ratio(
        _hsic(k, g, estimator), _hsic(k, k, estimator), _hsic(g, g, estimator)
    )


def cka(k, l, *, estimator: Estimator = "biased") -> Array:  # noqa: E741
    """Centered kernel alignment HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

    Kornblith et al. (2019). In [0, 1] with the biased estimator; the
    unbiased one can be slightly negative for independent inputs. Returns 0
    (not NaN) when either Gram has no variation (HSIC(K, K) <= 0).

    Args:
      k: Gram matrix, shape (n, n).
      l: Gram matrix, shape (n, n).
      estimator: ``"biased"`` or ``"unbiased"`` HSIC.

    Returns:
      Scalar float32.

    Raises:
      ValueError: as ``hsic``.
    """
    k, g = _gram_pair(k, l)
    _check_n_for(estimator, k.shape[0])
    return _cka(k, g, estimator)


# ----------------------------------------------------------------------------
# NOCCO (normalized HSIC) through eigendecompositions
# ----------------------------------------------------------------------------


def _swap(a: Array) -> Array:
    return jnp.swapaxes(a, -1, -2)


def _per_matrix(fn, *stacks: Array):
    """``fn`` over stacks of matrices (B, ...) sharing B; results stacked.

    On CPU, jaxlib's LAPACK kernels (eigh, Cholesky, triangular solve) spread
    a batch over XLA's intra-op thread pool and block a pool thread until the
    batch is done; two such batched calls running at the same time can wait
    on each other forever (seen with jaxlib 0.10.2: two concurrent eighs on
    a 2-core machine, trsm on 8 host devices). So on CPU this loops over
    unbatched calls (``lax.map``); other platforms get one batched call of
    ``fn``, which must accept leading batch dimensions.
    """
    if stacks[0].shape[0] == 1:
        return jax.tree.map(lambda a: a[None], fn(*(a[0] for a in stacks)))
    return jax.lax.platform_dependent(
        *stacks,
        cpu=lambda *a: jax.lax.map(lambda t: fn(*t), a),
        default=fn,
    )


def _eigh_many(g: Array) -> tuple[Array, Array]:
    """Eigendecompositions of a stack (B, n, n) -> (B, n), (B, n, n)."""
    return tuple(_per_matrix(jnp.linalg.eigh, g))


def _spectra(ga: Array, gb: Array | None, fb: Array | None, c):
    """Spectral data of the Grams of ``_nocco_against`` (one eigh per Gram).

    Returns (a, p, U) for ga, batch shapes (B, P, n), (B, P, n), (B, P, n, n);
    the same for gb without the P axis (or None); for fb (q, V, F V) with
    q = 1 / (s^2 + c) and F^T F = V diag(s^2) V^T, shapes (B, r), (B, r, r),
    (B, n, r) (or None). a = lam / (lam + c), p = 1 / (lam + c), lam >= 0.
    """
    b, p, n, _ = ga.shape
    mats = ga if gb is None else jnp.concatenate([ga, gb[:, None]], axis=1)
    lam, u = _eigh_many(mats.reshape(-1, n, n))
    lam = jnp.maximum(lam, 0.0).reshape(b, -1, n)
    u = u.reshape(b, -1, n, n)
    inv = 1.0 / (lam + c)
    a = lam * inv
    spec_a = (a[:, :p], inv[:, :p], u[:, :p])
    spec_b = None if gb is None else (a[:, p], inv[:, p], u[:, p])
    spec_f = None
    if fb is not None:
        s2, v = _eigh_many(_mm(_swap(fb), fb))
        spec_f = (1.0 / (jnp.maximum(s2, 0.0) + c), v, _mm(fb, v))
    return spec_a, spec_b, spec_f


def _quad(a: Array, w2: Array, b: Array) -> Array:
    """sum_ij a_i w2_ij b_j per batch: a (B, P, n), w2 (B, P, n, k), b (B, k)."""
    return _einsum("bpi,bpij,bj->bp", a, w2, b)


@jax.custom_jvp
def _nocco_against(ga: Array, gb: Array | None, fb: Array | None, c: Array):
    """tr(R_a R_b) for a stack of centered Grams against one or two partners.

    Args:
      ga: centered Grams, shape (B, P, n, n) (B chunks, P layers).
      gb: one centered Gram per chunk, shape (B, n, n), or None.
      fb: a factor F per chunk, shape (B, n, r), of the centered Gram
        G = F F^T (centered one-hot labels), or None.
      c: the ridge eps * n (scalar).

    Returns:
      (against gb or None, against fb or None), each shape (B, P).
    """
    (a_a, _, u_a), spec_b, spec_f = _spectra(ga, gb, fb, c)
    out_b = out_f = None
    if spec_b is not None:
        a_b, _, u_b = spec_b
        w = _einsum("bpki,bkj->bpij", u_a, u_b)
        out_b = _quad(a_a, w * w, a_b)
    if spec_f is not None:
        q, _, fv = spec_f
        z = _einsum("bpki,bkj->bpij", u_a, fv)
        out_f = _quad(a_a, z * z, q)
    return out_b, out_f


@_nocco_against.defjvp
def _nocco_against_jvp(primals, tangents):
    # d tr(R_a R_b) = <c A^-1 R_b A^-1, dG_a> + <c B^-1 R_a B^-1, dG_b> + ...
    # (A = G_a + c I); in the eigenbasis the weights are c p_i p_j, smooth at
    # repeated eigenvalues, unlike the derivative of eigh itself.
    ga, gb, fb, c = primals
    dga, dgb, dfb, dc = tangents
    (a_a, p_a, u_a), spec_b, spec_f = _spectra(ga, gb, fb, c)
    u_a_t = _swap(u_a)
    e_a = _mm(_mm(u_a_t, dga), u_a)
    pp_a = p_a[..., :, None] * p_a[..., None, :]
    da_a = -a_a * p_a
    out_b = out_f = d_b = d_f = None
    if spec_b is not None:
        a_b, p_b, u_b = spec_b
        w = _einsum("bpki,bkj->bpij", u_a, u_b)
        w2 = w * w
        out_b = _quad(a_a, w2, a_b)
        s_a = _mm(w * a_b[:, None, None, :], _swap(w))  # U^T R_b U
        s_b = _mm(_swap(w) * a_a[..., None, :], w)  # V^T R_a V
        e_b = _mm(_mm(_swap(u_b), dgb), u_b)[:, None]
        pp_b = (p_b[:, :, None] * p_b[:, None, :])[:, None]
        d_b = c * (
            jnp.sum(pp_a * s_a * e_a, axis=(-2, -1))
            + jnp.sum(pp_b * s_b * e_b, axis=(-2, -1))
        ) + dc * (_quad(da_a, w2, a_b) + _quad(a_a, w2, -a_b * p_b))
    if spec_f is not None:
        q, v, fv = spec_f
        z = _einsum("bpki,bkj->bpij", u_a, fv)
        z2 = z * z
        out_f = _quad(a_a, z2, q)
        s_f = _mm(z * q[:, None, None, :], _swap(z))  # U^T R_f U
        # Gradient in F: 2 (I - R_f) R_a F S^-1 with S = F^T F + c I.
        t = _mm(
            _mm(u_a, a_a[..., :, None] * z * q[:, None, None, :]), _swap(v)[:, None]
        )
        fvq = (fv * q[:, None, :])[:, None]
        grad_f = 2.0 * (t - _mm(fvq, _mm(_swap(fv)[:, None], t)))
        d_f = (
            c * jnp.sum(pp_a * s_f * e_a, axis=(-2, -1))
            + jnp.sum(grad_f * dfb[:, None], axis=(-2, -1))
            - dc * (_quad(a_a * p_a, z2, q) + _quad(a_a, z2, q * q))
        )
    return (out_b, out_f), (d_b, d_f)


def _cholesky_many(a: Array) -> Array:
    """Lower Cholesky factors of a stack (B, n, n) -> (B, n, n)."""
    return _per_matrix(jnp.linalg.cholesky, a)


def _ridge_factor(g: Array, c) -> Array:
    """Cholesky factors of G + c I for a stack of Grams (..., n, n)."""
    n = g.shape[-1]
    a = g + c * jnp.eye(n, dtype=g.dtype)
    return _cholesky_many(a.reshape(-1, n, n)).reshape(g.shape)


def _solve_lower_lt(chol: Array, rhs: Array) -> Array:
    """(L L^T)^-1 rhs by two triangular solves (batch dimensions allowed)."""
    solve = functools.partial(
        jax.lax.linalg.triangular_solve, left_side=True, lower=True
    )
    return solve(chol, solve(chol, rhs), transpose_a=True)


def _ridge_solve(chol: Array, rhs: Array) -> Array:
    """A^-1 rhs for A = L L^T: chol (..., n, n) lower, rhs (..., n, k), the
    same leading dimensions (stacks through ``_per_matrix``)."""
    flat = _per_matrix(
        _solve_lower_lt,
        chol.reshape(-1, *chol.shape[-2:]),
        rhs.reshape(-1, *rhs.shape[-2:]),
    )
    return flat.reshape(rhs.shape)


def _nocco_against_cholesky(
    ga: Array, gb: Array | None, fb: Array | None, c: Array
) -> tuple[Array | None, Array | None]:
    """``_nocco_against`` through Cholesky factors (same arguments and result).

    With A = G_a + c I = L L^T and Z_a = A^-1 G_a (so R_a = Z_a^T):
    tr(R_a R_b) = sum(Z_a o Z_b^T); against the factor F (G = F F^T),
    R_f = F S^-1 F^T with S = F^T F + c I (r x r, symmetric), and
    tr(R_a R_f) = sum(Z_a o R_f), or sum((G_a A^-1 F) o (S^-1 F^T)^T) when
    Z_a is not needed otherwise. Plain autodiff.
    """
    b, p, n, _ = ga.shape
    mats = ga if gb is None else jnp.concatenate([ga, gb[:, None]], axis=1)
    chol = _ridge_factor(mats, c)
    out_b = out_f = z = None
    if gb is not None:
        z = _ridge_solve(chol, mats)  # (B, P + 1, n, n)
        out_b = jnp.sum(z[:, :p] * _swap(z[:, p])[:, None], axis=(-2, -1))
    if fb is not None:
        r = fb.shape[-1]
        # (B, r, n) = S^-1 F^T, S = F^T F + c I
        w = _ridge_solve(_ridge_factor(_mm(_swap(fb), fb), c), _swap(fb))
        if z is not None:  # sum(Z_a o R_f), R_f = F S^-1 F^T (n^2 r, once)
            out_f = _einsum("bpij,bij->bp", z[:, :p], _mm(fb, w))
        else:
            fs = jnp.broadcast_to(fb[:, None], (b, p, n, r))
            zf = _mm(ga, _ridge_solve(chol[:, :p], fs))  # G_a A^-1 F
            out_f = jnp.sum(zf * _swap(w)[:, None], axis=(-2, -1))
    return out_b, out_f


def _nocco_pairs(
    ga: Array, gb: Array | None, fb: Array | None, c, solver: str
) -> tuple[Array | None, Array | None]:
    """tr(R_a R_b), tr(R_a R_f) by ``solver`` (see ``_nocco_against``)."""
    if solver == "eigh":
        return _nocco_against(ga, gb, fb, c)
    return _nocco_against_cholesky(ga, gb, fb, c)


def nocco(k, l, *, eps: float = 1e-5, solver: Solver = "cholesky") -> Array:  # noqa: E741
    """Normalized HSIC (NOCCO) tr(R_K R_L), R = G (G + eps n I)^-1, G = H K H.

    Fukumizu et al. (2008), the statistic of Sakamoto & Sato (2024). Never an
    inverse: ``solver="cholesky"`` factors A = G + eps n I = L L^T and takes
    tr(Z_K Z_L^T) with Z = A^-1 G from triangular solves; ``solver="eigh"``
    uses G_K = U diag(lam) U^T, G_L = V diag(mu) V^T, a = lam / (lam + eps n),
    b = mu / (mu + eps n) and a^T ((U^T V) o (U^T V)) b (eigenvalues clipped
    at 0; gradients by dR = c A^-1 dG A^-1, c = eps n, A = G + c I). Both give
    finite gradients for constant or duplicated inputs. Not bounded by 1 (at
    most n).

    Precision: in float32, a Gram whose entries sit close to a constant (the
    paper's wide Gaussian kernels) or that has many exactly-zero eigenvalues
    next to large ones (label Grams) costs about 1e-3 relative accuracy here;
    ``nhsic``, ``nhsic_labels`` and ``all_layers`` avoid both (module
    docstring, "Numerics").

    Args:
      k: Gram matrix, shape (n, n) (centered inside).
      l: Gram matrix, shape (n, n).
      eps: regularization, > 0; the ridge is eps * n.
      solver: ``"cholesky"`` (default, faster) or ``"eigh"``.

    Returns:
      Scalar float32; 0 when either Gram is constant.

    Raises:
      ValueError: on mismatched n, a non-square input or eps <= 0.
    """
    k, g = _gram_pair(k, l)
    _check_positive("eps", eps)
    _check_choice("solver", solver, SOLVERS)
    out, _ = _nocco_pairs(
        _center(k)[None, None], _center(g)[None], None, eps * k.shape[0], solver
    )
    return out[0, 0]


def nhsic(
    x,
    z,
    *,
    sigma: float = 5.0,
    eps: float = 1e-5,
    distance: Distance = "squared",
    solver: Solver = "cholesky",
) -> Array:
    """nHSIC(X; Z): NOCCO between two feature arrays with the paper's kernel.

    Both Grams are Gaussian with the ``per_dim`` bandwidth,
    K_ij = exp(-D_ij / (2 sigma^2 d)); see ``gaussian_gram`` and ``nocco``.
    Differentiable in both arguments with finite gradients (the training
    regularizer uses it).

    Args:
      x: features, shape (n, ...), e.g. the model input.
      z: features, shape (n, ...), e.g. a head output.
      sigma: kernel width, > 0.
      eps: NOCCO regularization, > 0.
      distance: ``"squared"`` (default) or ``"euclidean"``.
      solver: ``"cholesky"`` (default) or ``"eigh"`` (see ``nocco``).

    Returns:
      Scalar float32.

    Raises:
      ValueError: on mismatched n, bad shapes or bad options.
    """
    _check_kernel_args(sigma, "per_dim", distance)
    _check_positive("eps", eps)
    _check_choice("solver", solver, SOLVERS)
    x, z = _features(x, "x"), _features(z, "z")
    _check_same_n("x", x.shape[0], "z", z.shape[0])
    kx = _gaussian_minus_one(x, sigma, "per_dim", distance)
    kz = _gaussian_minus_one(z, sigma, "per_dim", distance)
    out, _ = _nocco_pairs(
        _center(kx)[None, None], _center(kz)[None], None, eps * x.shape[0], solver
    )
    return out[0, 0]


def nhsic_labels(
    y,
    z,
    *,
    num_classes: int | None = None,
    sigma: float = 5.0,
    eps: float = 1e-5,
    distance: Distance = "squared",
    solver: Solver = "cholesky",
) -> Array:
    """nHSIC(Y; Z): NOCCO between labels (linear kernel on one-hot) and features.

    Equals ``nocco(label_gram(y, C), gaussian_gram(z, ...))`` but uses the
    (n, C) centered one-hot factor of the label Gram instead of its (n, n)
    eigendecomposition: cheaper, and exact where float32 ``eigh`` would
    smear the label Gram's n - C + 1 zero eigenvalues (about 1e-3 relative
    error through the generic path).

    Args:
      y: integer labels (n,) (then ``num_classes`` is required) or one-hot or
        soft codes (n, C).
      z: features, shape (n, ...).
      num_classes: C, a Python int.
      sigma: kernel width of the ``per_dim`` Gaussian kernel on z, > 0.
      eps: NOCCO regularization, > 0.
      distance: ``"squared"`` (default) or ``"euclidean"``.
      solver: ``"cholesky"`` (default) or ``"eigh"`` (see ``nocco``).

    Returns:
      Scalar float32 (close to C - 1 when z determines the class).

    Raises:
      ValueError: on mismatched n, bad shapes or bad options.
    """
    _check_kernel_args(sigma, "per_dim", distance)
    _check_positive("eps", eps)
    _check_choice("solver", solver, SOLVERS)
    z = _features(z, "z")
    codes = _one_hot(y, num_classes)
    _check_same_n("y", codes.shape[0], "z", z.shape[0])
    kz = _gaussian_minus_one(z, sigma, "per_dim", distance)
    fy = codes - jnp.mean(codes, axis=0, keepdims=True)
    _, out = _nocco_pairs(
        _center(kz)[None, None], None, fy[None], eps * z.shape[0], solver
    )
    return out[0, 0]


# ----------------------------------------------------------------------------
# All layers at once
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HSICConfig:
    """Settings of ``all_layers`` (hashable, so usable as a static jit argument).

    Attributes:
      sigma: Gaussian kernel width, > 0 (ignored by ``bandwidth="median"``).
      bandwidth: ``"per_dim"`` (paper), ``"median"`` or ``"fixed"``.
      distance: ``"squared"`` (paper) or ``"euclidean"`` (authors' May-2024
        code).
      eps: NOCCO regularization, > 0 (ridge eps * m, m the samples per
        estimate).
      cka_estimator: HSIC estimator inside CKA, ``"biased"`` or
        ``"unbiased"``.
      chunk_size: m; the n examples are split into n / m chunks whose
        estimates are averaged (n must be a multiple of m); None = one
        estimate on all n.
      solver: how NOCCO is computed, ``"cholesky"`` (default) or ``"eigh"``
        (see ``nocco``).
    """

    sigma: float = 5.0
    bandwidth: Bandwidth = "per_dim"
    distance: Distance = "squared"
    eps: float = 1e-5
    cka_estimator: Estimator = "biased"
    chunk_size: int | None = 100
    solver: Solver = "cholesky"

    def __post_init__(self):
        for name in ("sigma", "eps"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not value > 0
                or not math.isfinite(value)
            ):
                raise ValueError(
                    f"HSICConfig.{name} must be a finite positive number; got {value!r}"
                )
        _check_choice("HSICConfig.bandwidth", self.bandwidth, BANDWIDTHS)
        _check_choice("HSICConfig.distance", self.distance, DISTANCES)
        _check_choice("HSICConfig.cka_estimator", self.cka_estimator, ESTIMATORS)
        _check_choice("HSICConfig.solver", self.solver, SOLVERS)
        m = self.chunk_size
        if m is not None:
            minimum = 4 if self.cka_estimator == "unbiased" else 2
            if (
                isinstance(m, bool)
                or not isinstance(m, numbers.Integral)
                or m < (minimum)
            ):
                raise ValueError(
                    f"HSICConfig.chunk_size must be None or an int >= {minimum} "
                    f"(with cka_estimator={self.cka_estimator!r}); got {m!r}"
                )


def _layer_features(x, layers, n_name: str = "x") -> tuple[Array, list[Array]]:
    x = _features(x, n_name)
    if isinstance(layers, (jax.Array, np.ndarray)) or not isinstance(layers, Sequence):
        raise ValueError(
            "layers must be a sequence (list or tuple) of (n, ...) arrays; got "
            f"{type(layers).__name__}"
        )
    if not layers:
        raise ValueError("layers must hold at least one array; got an empty sequence")
    ts = [_features(t, f"layers[{i}]") for i, t in enumerate(layers)]
    for i, t in enumerate(ts):
        _check_same_n(n_name, x.shape[0], f"layers[{i}]", t.shape[0])
    return x, ts


def _labels_codes(y, n: int, num_classes: int) -> Array:
    codes = _one_hot(y, _num_classes(num_classes))
    _check_same_n("x", n, "y", codes.shape[0])
    return codes


def _all_layers_stats(
    xs: Array, codes: Array, tss: list[Array], config: HSICConfig
) -> dict[str, Array]:
    """Per-chunk statistics: xs (B, m, d), codes (B, m, C), tss[l] (B, m, d_l).

    Returns each statistic with shape (B, L).
    """
    kern = functools.partial(  # K - 1: the same centered Grams, HSIC, CKA as K.
        _gaussian_minus_one,
        sigma=config.sigma,
        bandwidth=config.bandwidth,
        distance=config.distance,
    )
    m = xs.shape[1]
    kx = kern(xs)
    kts = jnp.stack([kern(t) for t in tss], axis=1)
    gx, gts = _center(kx), _center(kts)
    fy = codes - jnp.mean(codes, axis=1, keepdims=True)
    nh_x, nh_y = _nocco_pairs(gts, gx, fy, config.eps * m, config.solver)
    if config.cka_estimator == "biased":
        # tr(K H L H) = <G_K, G_L>; the (m - 1)^-2 cancels in the ratio, and
        # G_Y = F F^T (F the centered codes) never needs forming.
        tt = jnp.sum(gts * gts, axis=(-2, -1))
        cka_x = _safe_ratio(
            _einsum("blij,bij->bl", gts, gx),
            tt,
            jnp.sum(gx * gx, axis=(-2, -1))[:, None],
        )
        yy = jnp.sum(jnp.square(_mm(_swap(fy), fy)), axis=(-2, -1))
        ty = _einsum("blij,bjc,bic->bl", gts, fy, fy)
        cka_y = _safe_ratio(ty, tt, yy[:, None])
    else:
        per_layer = jax.vmap(
            jax.vmap(functools.partial(_cka, estimator="unbiased"), (0, None))
        )
        cka_x = per_layer(kts, kx)
        cka_y = per_layer(kts, _mm(codes, _swap(codes)))
    return {"nhsic_x": nh_x, "nhsic_y": nh_y, "cka_x": cka_x, "cka_y": cka_y}


def all_layers(
    x,
    y,
    layers: Sequence[Array],
    *,
    num_classes: int,
    config: HSICConfig = HSICConfig(),
) -> dict[str, Array]:
    """nHSIC and CKA between every layer and the input and the label.

    The Gaussian Grams (``config`` kernel) of the L layers, vmapped over the
    n / m chunks when ``config.chunk_size = m``, stack to (n / m, L, m, m); the
    X Gram and the label factor are computed once per chunk; every statistic
    is computed for all chunks and layers at once (batched factorizations and
    matmuls, no Python loop over chunks), per chunk with the ridge eps * m, and the
    chunk estimates are averaged (chunk j holds examples j m .. (j+1) m - 1).
    Memory is O(L n m) instead of O(L n^2). Labels use the linear kernel on
    one-hot codes (the Y side of NOCCO goes through the (m, C) centered
    codes, no (m, m) eigendecomposition). CKA uses the same Grams as nHSIC.

    Jit it with ``num_classes`` and ``config`` static: ``all_layers_jit`` does
    exactly that; it compiles once per set of shapes.

    Args:
      x: model input batch, shape (n, ...).
      y: integer labels in [0, num_classes), shape (n,), or one-hot codes
        (n, C).
      layers: T_1 .. T_L, each shape (n, ...), shapes may differ.
      num_classes: C, a Python int.
      config: kernel, estimator and chunk settings.

    Returns:
      ``{"nhsic_x", "nhsic_y", "cka_x", "cka_y"}``, each shape (L,) float32:
      nHSIC(X; T_l), nHSIC(Y; T_l), CKA(X, T_l), CKA(Y, T_l).

    Raises:
      ValueError: on mismatched n, bad shapes, n not a multiple of
        ``config.chunk_size``, or a bad ``config``/``num_classes``.
    """
    if not isinstance(config, HSICConfig):
        raise ValueError(f"config must be an HSICConfig; got {type(config).__name__}")
    x, ts = _layer_features(x, layers)
    n = x.shape[0]
    codes = _labels_codes(y, n, num_classes)
    m = n if config.chunk_size is None else config.chunk_size
    if n % m:
        raise ValueError(
            f"the number of examples n={n} must be a multiple of "
            f"config.chunk_size={m} (or set chunk_size=None)"
        )
    _check_n_for(config.cka_estimator, m)

    def split(a: Array) -> Array:
        return a.reshape(n // m, m, a.shape[1])

    stats = _all_layers_stats(split(x), split(codes), [split(t) for t in ts], config)
    return {name: jnp.mean(value, axis=0) for name, value in stats.items()}


all_layers_jit = jax.jit(all_layers, static_argnames=("num_classes", "config"))
"""``all_layers`` under ``jax.jit`` with ``num_classes`` and ``config`` static."""


# ----------------------------------------------------------------------------
# Minibatch (streaming) CKA
# ----------------------------------------------------------------------------


class StreamingCKAState(NamedTuple):
    """Running sums of unbiased HSIC terms (a pytree).

    Attributes:
      count: number of batches seen, scalar int32.
      hsic_sum: sum over batches of the unbiased HSIC between every pair of
        Grams in the order [X, Y, T_1, ..., T_L], shape (L + 2, L + 2).
    """

    count: Array
    hsic_sum: Array


@dataclasses.dataclass(frozen=True)
class StreamingCKA:
    """Minibatch CKA (Nguyen et al. 2021) over any number of batches, in jit.

    For batches b = 1..B with Grams K_b (layer) and L_b (input or label),
    CKA = mean_b HSIC_u(K_b, L_b) / sqrt(mean_b HSIC_u(K_b, K_b)
    mean_b HSIC_u(L_b, L_b)), HSIC_u the unbiased estimator (Song et al. 2012),
    so the result does not depend on the batch size's bias. Pure functions on
    a pytree state: ``state = s.init(L)``, ``state = s.update(state, x, y,
    layers)`` (jit it: ``jax.jit(s.update)``), ``s.result(state)``.

    Attributes:
      num_classes: C, for integer labels.
      config: kernel settings (sigma, bandwidth, distance) for X and layers.
      kernel: ``"gaussian"`` (the ``config`` kernel, as ``all_layers``) or
        ``"linear"`` (linear CKA) for X and the layers; labels always use the
        linear kernel on one-hot codes.
    """

    num_classes: int
    config: HSICConfig = HSICConfig()
    kernel: CKAKernel = "gaussian"

    def __post_init__(self):
        _num_classes(self.num_classes)
        if not isinstance(self.config, HSICConfig):
            raise ValueError(
                f"config must be an HSICConfig; got {type(self.config).__name__}"
            )
        _check_choice("kernel", self.kernel, CKA_KERNELS)

    def init(self, num_layers: int) -> StreamingCKAState:
        """Zero state for ``num_layers`` layers (a Python int >= 1)."""
        if (
            isinstance(num_layers, bool)
            or not isinstance(num_layers, numbers.Integral)
            or num_layers < 1
        ):
            raise ValueError(f"num_layers must be a positive int; got {num_layers!r}")
        size = int(num_layers) + 2
        return StreamingCKAState(
            count=jnp.zeros((), jnp.int32),
            hsic_sum=jnp.zeros((size, size), jnp.float32),
        )

    def _gram(self, x: Array) -> Array:
        if self.kernel == "linear":
            return _mm(x, x.T)
        c = self.config
        return _gaussian_minus_one(x, c.sigma, c.bandwidth, c.distance)

    def update(
        self, state: StreamingCKAState, x, y, layers: Sequence[Array]
    ) -> StreamingCKAState:
        """Adds one batch.

        Args:
          state: the running state (from ``init`` or ``update``).
          x: input batch, shape (b, ...), b >= 4.
          y: integer labels (b,) or one-hot codes (b, C).
          layers: T_1..T_L, each shape (b, ...), L as in ``init``.

        Returns:
          The new state.

        Raises:
          ValueError: on mismatched shapes, b < 4 or a wrong number of layers.
        """
        x, ts = _layer_features(x, layers)
        codes = _labels_codes(y, x.shape[0], self.num_classes)
        _check_n_for("unbiased", x.shape[0])
        if state.hsic_sum.shape[0] != len(ts) + 2:
            raise ValueError(
                f"layers has {len(ts)} arrays but the state was initialized for "
                f"{state.hsic_sum.shape[0] - 2} layers"
            )
        grams = jnp.stack(
            [self._gram(x), _mm(codes, codes.T)] + [self._gram(t) for t in ts]
        )
        batch = _hsic_unbiased_matrix(grams, grams)
        return StreamingCKAState(
            count=state.count + 1,
            hsic_sum=state.hsic_sum + batch.astype(state.hsic_sum.dtype),
        )

    def result(self, state: StreamingCKAState) -> dict[str, Array]:
        """Minibatch CKA from the accumulated sums.

        Returns:
          ``{"cka_x": (L,), "cka_y": (L,), "cka_layers": (L, L)}``: CKA of each
          layer with the input, with the label, and between layers; 0 where a
          denominator is not positive (also before any update).
        """
        h = state.hsic_sum / jnp.maximum(state.count, 1)
        diag = jnp.diagonal(h)
        ratio = _safe_ratio(h, diag[:, None], diag[None, :])
        return {
            "cka_x": ratio[0, 2:],
            "cka_y": ratio[1, 2:],
            "cka_layers": ratio[2:, 2:],
        }
