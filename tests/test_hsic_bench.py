"""The benchmark's reference (the authors' way) computes the same statistic."""

from __future__ import annotations

import numpy as np

from benchmarks import bench_hsic
from hsicib import hsic


def test_reference_gram_tiles_match_matmul_identity():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 3, 4)).astype(np.float32)
    # A budget of a few rows forces several (rows, m, d) tiles.
    k = bench_hsic.reference_gram(a, sigma=5.0, budget_bytes=3 * 2 * 4 * 20 * 12)
    np.testing.assert_allclose(k, hsic.gaussian_gram(a), rtol=1e-5, atol=1e-6)


def test_reference_all_layers_matches_ours():
    x, y, layers = bench_hsic.make_data(40, (6, 2), [(5,), (2, 2, 2)], 4)
    assert x.shape == (40, 6, 2) and layers[1].shape == (40, 2, 2, 2)
    ref = bench_hsic.reference_all_layers(x, y, layers, num_classes=4, chunk=20)
    ours = hsic.all_layers_jit(
        x, y, layers, num_classes=4, config=hsic.HSICConfig(chunk_size=20)
    )
    assert not ref.extrapolated_layers
    # The float32 explicit inverse of the reference is good to ~1e-2.
    np.testing.assert_allclose(ref.nhsic_x, ours["nhsic_x"], rtol=2e-2)
    np.testing.assert_allclose(ref.nhsic_y, ours["nhsic_y"], rtol=2e-2)


def test_reference_extrapolates_past_its_time_budget():
    x, y, layers = bench_hsic.make_data(16, (4,), [(3,), (8,)], 2)
    ref = bench_hsic.reference_all_layers(
        x, y, layers, num_classes=2, chunk=None, max_seconds=0.0
    )
    assert sorted(ref.extrapolated_layers) == [0, 1]
    assert np.all(np.isnan(ref.nhsic_x)) and ref.seconds > ref.measured_seconds
