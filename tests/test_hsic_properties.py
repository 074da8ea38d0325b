"""Property tests (hypothesis): the statistics stay finite and well behaved on
random inputs, including constant columns, duplicated rows and extreme scales.

Known limit: features are float32, so those whose spread is below ~1e-6 of a
constant offset (e.g. values 4.3 + 1e-6 * noise) have no differences left to
measure (distances are computed on mean-centered features, so the matmul adds
no cancellation of its own); the constant columns drawn here are on the scale
of the features. And with the paper's bandwidth (sigma = 5 per
dimension) features whose spread is below ~1e-2 give Gram matrices within a few
float32 ulps of all-ones: the statistics stay finite there, but the scale-free
ones (CKA) become ratios of rounding noise (seen: CKA 0.185 vs 0.187 after a
permutation, biased CKA -0.004), so symmetry, permutation invariance and the
[0, 1] range are checked for features whose spread is at least 0.5; below that
only finiteness is.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsicib import hsic

_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Fixed shapes keep jit caches warm; hypothesis varies the content.
N, D = 12, 5
SCALES = (1e-6, 1e-3, 1e-2, 0.1, 1.0, 10.0, 1e3, 1e6)


@st.composite
def features(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from(SCALES))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)) * scale
    if draw(st.booleans()):  # constant columns
        cols = rng.choice(D, size=draw(st.integers(1, D)), replace=False)
        x[:, cols] = draw(st.floats(-5, 5)) * scale
    if draw(st.booleans()):  # duplicated rows
        k = draw(st.integers(1, N // 2))
        x[N - k :] = x[:k]
    return x.astype(np.float32)


@jax.jit
def _grams(x, y):
    return hsic.gaussian_gram(x), hsic.gaussian_gram(y)


# Jitted once each (fixed shapes): hypothesis then only varies the content.
_STATISTICS = [
    jax.jit(fn)
    for fn in (
        hsic.hsic,
        functools.partial(hsic.hsic, estimator="unbiased"),
        hsic.cka,
        functools.partial(hsic.cka, estimator="unbiased"),
        hsic.nocco,
    )
]
_CKA = jax.jit(hsic.cka)
_CKA_UNBIASED = jax.jit(functools.partial(hsic.cka, estimator="unbiased"))
_NHSIC = jax.jit(hsic.nhsic)


@_SETTINGS
@given(features(), features(), st.integers(0, 10_000))
def test_statistics_finite_symmetric_and_permutation_invariant(x, y, seed):
    k, lg = _grams(x, y)
    tiny = min(np.ptp(x), np.ptp(y)) < 0.5  # see the module docstring
    perm = np.random.default_rng(seed).permutation(N)
    kp, lpg = _grams(x[perm], y[perm])
    for fn in _STATISTICS:
        v = float(fn(k, lg))
        assert np.isfinite(v)
        if tiny:
            continue
        np.testing.assert_allclose(v, float(fn(lg, k)), rtol=5e-3, atol=1e-4)
        np.testing.assert_allclose(v, float(fn(kp, lpg)), rtol=5e-3, atol=1e-4)


@_SETTINGS
@given(features(), features())
def test_cka_is_within_unit_interval(x, y):
    """Biased CKA is a cosine of PSD matrices: in [0, 1]. The unbiased HSIC can
    be negative (it is an unbiased estimate of a non-negative number), so the
    unbiased CKA is only checked to be finite and at most 1."""
    k, lg = _grams(x, y)
    if min(np.ptp(x), np.ptp(y)) < 0.5:  # see the module docstring
        assert np.isfinite(float(_CKA(k, lg)))
        return
    v = float(_CKA(k, lg))
    assert -1e-5 <= v <= 1 + 1e-5, v
    u = float(_CKA_UNBIASED(k, lg))
    assert np.isfinite(u) and u <= 1 + 1e-4, u


@_SETTINGS
@given(features())
def test_nhsic_with_itself_is_bounded_by_rank_and_finite(x):
    v = float(_NHSIC(x, x))
    assert np.isfinite(v)
    # tr(R^2) with R's eigenvalues in [0, 1) is at most the rank, at most n - 1.
    assert -1e-4 <= v <= N - 1 + 1e-3
