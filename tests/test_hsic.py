"""Tests of hsicib.hsic against slow, obvious NumPy references."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from hsicib import hsic

# ----------------------------------------------------------------------------
# Slow references (explicit loops, float64)
# ----------------------------------------------------------------------------


def np_sq_distances(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1]))
    return d


def np_gaussian(x, sigma=5.0, bandwidth="per_dim", distance="squared"):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    dist = np_sq_distances(x)
    if distance == "euclidean":
        dist = np.sqrt(dist)
    n, d = x.shape
    if bandwidth == "per_dim":
        s = 2 * sigma**2 * d
    elif bandwidth == "fixed":
        s = 2 * sigma**2
    else:
        s = 2 * np.median([dist[i, j] for i in range(n) for j in range(i + 1, n)])
    k = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            k[i, j] = np.exp(-dist[i, j] / s)
    return k


def np_h(n):
    return np.eye(n) - np.ones((n, n)) / n


def np_hsic_biased(k, g):
    n = len(k)
    h = np_h(n)
    return np.trace(k @ h @ g @ h) / (n - 1) ** 2


def np_hsic_unbiased(k, g):
    """The U-statistic of Song et al. (2012), summed over distinct indices."""
    n = len(k)
    pairs = sum(k[i, j] * g[i, j] for i, j in itertools.permutations(range(n), 2))
    quads = sum(k[i, j] * g[q, r] for i, j, q, r in itertools.permutations(range(n), 4))
    triples = sum(k[i, j] * g[i, q] for i, j, q in itertools.permutations(range(n), 3))
    return (
        pairs / (n * (n - 1))
        + quads / (n * (n - 1) * (n - 2) * (n - 3))
        - 2 * triples / (n * (n - 1) * (n - 2))
    )


def np_cka(k, g, estimator="biased"):
    f = np_hsic_biased if estimator == "biased" else np_hsic_unbiased
    return f(k, g) / np.sqrt(f(k, k) * f(g, g))


def np_nocco_authors(k, g, eps=1e-5):
    """The HSIC-bottleneck code's formula: one-sided centering, explicit inverse."""
    n = len(k)
    h = np_h(n)
    kc, lc = k @ h, g @ h
    rx = kc @ np.linalg.inv(kc + eps * n * np.eye(n))
    ry = lc @ np.linalg.inv(lc + eps * n * np.eye(n))
    return np.sum(rx * ry.T)


def np_label_gram(y, c):
    n = len(y)
    return np.array([[float(y[i] == y[j]) for j in range(n)] for i in range(n)])


def close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=atol)


@pytest.fixture
def data():
    """Dependent features: x (24, 3, 4), z (24, 5), labels from 4 classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 3, 4)).astype(np.float32)
    w = rng.normal(size=(12, 5)).astype(np.float32)
    z = np.tanh(x.reshape(24, -1) @ w) + 0.3 * rng.normal(size=(24, 5))
    y = (x.reshape(24, -1)[:, 0] > 0).astype(np.int32) * 2 + rng.integers(0, 2, 24)
    return x, z.astype(np.float32), y.astype(np.int32)


# ----------------------------------------------------------------------------
# Grams
# ----------------------------------------------------------------------------


def test_sq_distances_matches_loops(data):
    x, _, _ = data
    x = x[:10] + 3.0  # an offset: distances must not lose precision
    d = hsic.sq_distances(x)
    assert d.shape == (10, 10) and d.dtype == jnp.float32
    close(d, np_sq_distances(x), rtol=1e-5, atol=1e-4)
    assert np.all(np.diag(d) == 0) and np.all(np.asarray(d) >= 0)
    np.testing.assert_array_equal(d, d.T)


@pytest.mark.parametrize("bandwidth", ["per_dim", "fixed", "median"])
@pytest.mark.parametrize("distance", ["squared", "euclidean"])
def test_gaussian_gram_matches_loops(data, bandwidth, distance):
    x, _, _ = data
    x = x[:9]  # odd pair count: the median is one distance
    k = hsic.gaussian_gram(x, sigma=2.0, bandwidth=bandwidth, distance=distance)
    close(k, np_gaussian(x, 2.0, bandwidth, distance), rtol=1e-5, atol=1e-6)


def test_bandwidth_conventions_convert(data):
    x, _, _ = data
    d = 12  # 3 x 4 features
    per_dim = hsic.gaussian_gram(x, sigma=5.0, bandwidth="per_dim")
    fixed = hsic.gaussian_gram(x, sigma=5.0 * np.sqrt(d), bandwidth="fixed")
    close(per_dim, fixed, rtol=1e-6, atol=1e-6)
    dist = np_sq_distances(x)
    med = np.median(dist[np.triu_indices(len(x), 1)])
    median = hsic.gaussian_gram(x, bandwidth="median")
    close(median, hsic.gaussian_gram(x, sigma=np.sqrt(med), bandwidth="fixed"))


def test_linear_and_label_grams(data):
    x, _, y = data
    close(hsic.linear_gram(x), x.reshape(24, -1) @ x.reshape(24, -1).T, rtol=1e-5)
    lab = hsic.label_gram(y, 4)
    close(lab, np_label_gram(y, 4), atol=0)
    close(hsic.label_gram(np.eye(4)[y]), np_label_gram(y, 4), atol=0)
    with pytest.raises(ValueError, match="num_classes"):
        hsic.label_gram(y)
    with pytest.raises(ValueError, match="integer"):
        hsic.label_gram(y.astype(np.float32), 4)
    with pytest.raises(ValueError, match="num_classes"):
        hsic.label_gram(np.eye(4)[y], 3)


def test_center_is_hkh(data):
    x, _, _ = data
    k = np_gaussian(x)
    close(hsic.center(k), np_h(24) @ k @ np_h(24), atol=1e-6)


# ----------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------


def test_hsic_estimators_match_references(data):
    x, z, _ = data
    k, g = np_gaussian(x[:8], 1.0, "fixed"), np_gaussian(z[:8], 1.0, "fixed")
    close(hsic.hsic(k, g), np_hsic_biased(k, g), rtol=1e-5)
    close(hsic.hsic(k, g, estimator="unbiased"), np_hsic_unbiased(k, g), rtol=1e-4)
    with pytest.raises(ValueError, match="n >= 4"):
        hsic.hsic(k[:3, :3], g[:3, :3], estimator="unbiased")
    with pytest.raises(ValueError, match="estimator"):
        hsic.hsic(k, g, estimator="debiased")


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_cka_matches_reference(data, estimator):
    x, z, _ = data
    k, g = np_gaussian(x[:8], 1.0, "fixed"), np_gaussian(z[:8], 1.0, "fixed")
    close(hsic.cka(k, g, estimator=estimator), np_cka(k, g, estimator), rtol=1e-4)


@pytest.mark.parametrize("solver", hsic.SOLVERS)
@pytest.mark.parametrize("distance", ["squared", "euclidean"])
def test_nocco_equals_authors_explicit_inverse(data, distance, solver):
    x, z, _ = data
    kx, kz = np_gaussian(x, distance=distance), np_gaussian(z, distance=distance)
    expected = np_nocco_authors(kx, kz)
    got = hsic.nocco(
        hsic.gaussian_gram(x, distance=distance),
        hsic.gaussian_gram(z, distance=distance),
        solver=solver,
    )
    close(got, expected, rtol=2e-4)
    close(hsic.nhsic(x, z, distance=distance, solver=solver), expected, rtol=1e-4)
    close(
        hsic.nocco(kx, kz, eps=1e-3, solver=solver),
        np_nocco_authors(kx, kz, 1e-3),
        rtol=1e-4,
    )


@pytest.mark.parametrize("solver", hsic.SOLVERS)
def test_nhsic_labels_equals_authors_formula(data, solver):
    _, z, y = data
    expected = np_nocco_authors(np_label_gram(y, 4), np_gaussian(z))
    close(hsic.nhsic_labels(y, z, num_classes=4, solver=solver), expected, rtol=1e-4)
    close(hsic.nhsic_labels(np.eye(4)[y], z, solver=solver), expected, rtol=1e-4)


def test_solvers_agree_on_wide_and_ill_conditioned_grams():
    """Cholesky and eigh give the same nHSIC (float32) as float64, for Grams
    from wide features and from a few features at a large scale (condition
    number of G + eps n I about 1e4)."""
    rng = np.random.default_rng(3)
    n = 200
    y = rng.integers(0, 10, n)
    x = rng.normal(size=(n, 64)).astype(np.float32)
    centers = rng.normal(size=(10, 300))
    wide = np.tanh(rng.normal(size=(n, 300)) + 2 * centers[y]).astype(np.float32)
    narrow = (5 * (rng.normal(size=(n, 10)) + 2 * centers[y, :10])).astype(np.float32)
    kx = np_gaussian(x.astype(np.float64))
    ly = np_label_gram(y, 10)
    for t in (wide, narrow):
        kt = np_gaussian(t.astype(np.float64))
        want_x, want_y = np_nocco_authors(kx, kt), np_nocco_authors(ly, kt)
        for solver in hsic.SOLVERS:
            close(hsic.nhsic(x, t, solver=solver), want_x, rtol=1e-4)
            close(
                hsic.nhsic_labels(y, t, num_classes=10, solver=solver),
                want_y,
                rtol=1e-4,
            )


def test_permutation_invariance(data):
    x, z, y = data
    perm = np.random.default_rng(1).permutation(24)
    kx, kz = hsic.gaussian_gram(x), hsic.gaussian_gram(z)
    kxp, kzp = hsic.gaussian_gram(x[perm]), hsic.gaussian_gram(z[perm])
    for f in (
        hsic.nocco,
        hsic.hsic,
        hsic.cka,
        functools.partial(hsic.hsic, estimator="unbiased"),
    ):
        f = jax.jit(f)
        close(f(kxp, kzp), f(kx, kz), rtol=1e-4)
    cfg = hsic.HSICConfig(chunk_size=None)
    run = functools.partial(hsic.all_layers_jit, num_classes=4, config=cfg)
    a = run(x, y, [z, x])
    b = run(x[perm], y[perm], [z[perm], x[perm]])
    for name in hsic.STATISTICS:
        close(b[name], a[name], rtol=1e-4)


def test_cka_of_itself_is_one(data):
    x, _, y = data
    close(hsic.cka(hsic.gaussian_gram(x), hsic.gaussian_gram(x)), 1.0, rtol=1e-5)
    lab = hsic.label_gram(y, 4)
    close(hsic.cka(lab, lab, estimator="unbiased"), 1.0, rtol=1e-5)


def test_nhsic_of_labels_with_themselves_is_about_c_minus_1():
    y = np.repeat(np.arange(10), 20)
    lab = hsic.label_gram(y, 10)
    value = float(hsic.nocco(lab, lab))
    # Eigenvalues n/C = 20 against eps n = 2e-3: a = 1 / (1 + eps C) each.
    close(value, 9 / (1 + 1e-4) ** 2, rtol=1e-3)


def test_independent_inputs_give_small_cka():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    z = rng.normal(size=(400, 3)).astype(np.float32)
    kx, kz = hsic.gaussian_gram(x), hsic.gaussian_gram(z)
    assert float(hsic.cka(kx, kz)) < 0.05
    assert abs(float(hsic.cka(kx, kz, estimator="unbiased"))) < 0.02
    dependent = hsic.gaussian_gram(np.tanh(x[:, :3]) + 0.1 * z)
    assert float(hsic.cka(kx, dependent)) > 0.5


# ----------------------------------------------------------------------------
# Gradients (float64 for finite differences)
# ----------------------------------------------------------------------------


def _inv_nocco(k, g, eps=1e-5):
    n = k.shape[0]
    h = jnp.eye(n) - 1.0 / n
    rk = (k @ h) @ jnp.linalg.inv(k @ h + eps * n * jnp.eye(n))
    rl = (g @ h) @ jnp.linalg.inv(g @ h + eps * n * jnp.eye(n))
    return jnp.sum(rk * rl.T)


@pytest.mark.parametrize("solver", hsic.SOLVERS)
def test_gradients_match_finite_differences_and_inverse_formula(data, solver):
    x, z, y = data
    with jax.enable_x64(True):
        x, z, y = (
            jnp.asarray(x[:16], jnp.float64),
            jnp.asarray(z[:16], jnp.float64),
            y[:16],
        )

        # Autodiff through the explicit-inverse formula: the same derivative.
        def both(a, b):
            ref = _inv_nocco(hsic.gaussian_gram(a), hsic.gaussian_gram(b))
            return hsic.nhsic(a, b, solver=solver), ref

        ours, ref = jax.jit(jax.jacrev(both, (0, 1)))(x, z)
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
        soft = jax.nn.one_hot(y, 4, dtype=jnp.float64) * 0.9 + 0.025

        # Against finite differences: every differentiable entry point at once
        # (the Euclidean variant, labels, CKA, all layers in chunks).
        @jax.jit
        def everything(t, a, codes):
            cfg = hsic.HSICConfig(chunk_size=8, solver=solver)
            out = hsic.all_layers(a, y, [t, t[:, :2] ** 2], num_classes=4, config=cfg)
            return (
                hsic.nhsic(a, t, distance="euclidean", solver=solver)
                + hsic.nhsic_labels(codes, t, solver=solver)
                + hsic.cka(hsic.gaussian_gram(a), hsic.gaussian_gram(t))
                + out["nhsic_x"].sum()
                + out["nhsic_y"].sum()
                + out["cka_y"].sum()
            )

        check_grads(everything, (z, x, soft), order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("solver", hsic.SOLVERS)
def test_gradients_finite_for_constant_and_duplicated_inputs(data, solver):
    x, z, y = data
    const = jnp.ones((24, 5))
    dup = jnp.concatenate([z[:12], z[:12]])

    @jax.jit
    def grads(a, t):
        kx = hsic.gaussian_gram(a)
        nh = functools.partial(hsic.nhsic, solver=solver)
        return [
            jax.grad(nh, (0, 1))(a, t),
            jax.grad(lambda u: nh(a, u, distance="euclidean"))(t),
            jax.grad(lambda u: hsic.cka(kx, hsic.gaussian_gram(u)))(t),
            jax.grad(lambda u: hsic.nhsic_labels(y, u, num_classes=4, solver=solver))(
                t
            ),
        ]

    for t in (const, dup):
        for g in jax.tree.leaves(grads(x, t)):
            assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------
# All layers at once
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("config", "num_classes"))
def _per_layer(x, y, layers, config, num_classes=4):
    """The public functions one layer at a time: {statistic: (L,)}."""
    kern = functools.partial(
        hsic.gaussian_gram,
        sigma=config.sigma,
        bandwidth=config.bandwidth,
        distance=config.distance,
    )
    kx, ly = kern(x), hsic.label_gram(y, num_classes)
    est = config.cka_estimator
    rows = []
    for t in layers:
        kt = kern(t)
        rows.append(
            [
                hsic.nocco(kx, kt, eps=config.eps, solver=config.solver),
                hsic.nocco(ly, kt, eps=config.eps, solver=config.solver),
                hsic.cka(kx, kt, estimator=est),
                hsic.cka(ly, kt, estimator=est),
            ]
        )
    return dict(zip(hsic.STATISTICS, jnp.asarray(rows).T, strict=True))


CONFIGS = [
    hsic.HSICConfig(chunk_size=None),
    hsic.HSICConfig(
        chunk_size=None,
        bandwidth="median",
        distance="euclidean",
        cka_estimator="unbiased",
        eps=1e-3,
    ),
    hsic.HSICConfig(chunk_size=None, solver="eigh"),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_all_layers_equals_per_layer_calls(data, config):
    """Same numbers as the one-layer-at-a-time calls (float64: logic, not
    rounding, is under test here)."""
    x, z, y = data
    with jax.enable_x64(True):
        x, z = jnp.asarray(x, jnp.float64), jnp.asarray(z, jnp.float64)
        layers = [z, x * 2.0, jnp.sin(z[:, :2])]
        got = hsic.all_layers_jit(x, y, layers, num_classes=4, config=config)
        want = _per_layer(x, y, layers, config)
        for name in hsic.STATISTICS:
            assert got[name].shape == (3,)
            close(got[name], want[name], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solver", hsic.SOLVERS)
def test_all_layers_float32_matches_float64_reference(data, solver):
    x, z, y = data
    layers = [z, np.sin(z[:, :2])]
    config = hsic.HSICConfig(chunk_size=None, solver=solver)
    got = hsic.all_layers_jit(x, y, layers, num_classes=4, config=config)
    kx, ly = np_gaussian(x), np_label_gram(y, 4)
    for i, t in enumerate(layers):
        kt = np_gaussian(t)
        close(got["nhsic_x"][i], np_nocco_authors(kx, kt), rtol=1e-4)
        close(got["nhsic_y"][i], np_nocco_authors(ly, kt), rtol=1e-4)
        close(got["cka_x"][i], np_cka(kx, kt), rtol=1e-4)
        close(got["cka_y"][i], np_cka(ly, kt), rtol=1e-4)


def test_chunked_equals_mean_of_per_chunk_calls(data):
    x, z, y = data
    config = hsic.HSICConfig(chunk_size=8, cka_estimator="unbiased")
    with jax.enable_x64(True):
        x, z = jnp.asarray(x, jnp.float64), jnp.asarray(z, jnp.float64)
        layers = [z, x[:, :2]]
        got = hsic.all_layers_jit(x, y, layers, num_classes=4, config=config)
        parts = [
            _per_layer(
                x[s : s + 8], y[s : s + 8], [t[s : s + 8] for t in layers], config
            )
            for s in (0, 8, 16)
        ]
        for name in hsic.STATISTICS:
            want = np.mean([p[name] for p in parts], axis=0)
            close(got[name], want, rtol=1e-8, atol=1e-10)
        with pytest.raises(ValueError, match="multiple of"):
            hsic.all_layers(
                x, y, layers, num_classes=4, config=hsic.HSICConfig(chunk_size=10)
            )


def test_jitted_all_layers_compiles_once():
    traces = []

    @functools.partial(jax.jit, static_argnames=("num_classes", "config"))
    def counted(x, y, layers, num_classes, config):
        traces.append(1)
        return hsic.all_layers(x, y, layers, num_classes=num_classes, config=config)

    rng = np.random.default_rng(2)
    config = hsic.HSICConfig(chunk_size=10)
    for _ in range(3):
        x = rng.normal(size=(30, 6)).astype(np.float32)
        layers = [rng.normal(size=(30, 4)), rng.normal(size=(30, 2, 2))]
        layers = [t.astype(np.float32) for t in layers]
        y = rng.integers(0, 3, 30).astype(np.int32)
        out = counted(x, y, layers, num_classes=3, config=config)
        assert all(np.all(np.isfinite(v)) for v in out.values())
    assert len(traces) == 1
    counted(x, y, layers, num_classes=3, config=hsic.HSICConfig(chunk_size=None))
    assert len(traces) == 2  # a new static config is a new program


# ----------------------------------------------------------------------------
# Degenerate and bad input
# ----------------------------------------------------------------------------


@jax.jit
def _everything(x, t, y):
    """Every statistic between x and t (and the labels y, 4 classes)."""
    kx, kt = hsic.gaussian_gram(x), hsic.gaussian_gram(t)
    stats = hsic.all_layers(
        x, y, [t, x], num_classes=4, config=hsic.HSICConfig(chunk_size=8)
    )
    return {
        "nocco": hsic.nocco(kx, kt),
        "nhsic": hsic.nhsic(x, t),
        "nhsic_euclidean": hsic.nhsic(x, t, distance="euclidean"),
        "cka": hsic.cka(kx, kt),
        "cka_unbiased_self": hsic.cka(kt, kt, estimator="unbiased"),
        "nhsic_labels": hsic.nhsic_labels(y, t, num_classes=4),
        **{name: value[0] for name, value in stats.items()},
    }


def test_constant_features_give_zero_not_nan(data):
    x, _, y = data
    const = np.full((24, 5), 3.0, np.float32)  # z's shape: one compile for both
    for name, value in _everything(x, const, y).items():
        assert float(value) == 0.0, name


def test_duplicated_rows_are_fine(data):
    x, z, y = data
    xd, zd = np.concatenate([x[:12], x[:12]]), np.concatenate([z[:12], z[:12]])
    got = _everything(xd, zd, y)
    for name, value in got.items():
        assert np.isfinite(value), name
    expected = np_nocco_authors(np_gaussian(xd), np_gaussian(zd))
    close(got["nhsic"], expected, rtol=2e-4)
    close(got["cka_unbiased_self"], 1.0, rtol=1e-5)


def test_offset_features_keep_their_precision(data):
    """Layers at initialization: an offset thousands of times the spread."""
    x, z, _ = data
    t = (0.04 + 7e-6 * z).astype(np.float32)
    kx, kt = np_gaussian(x), np_gaussian(t)
    # all_layers and nhsic keep K - 1 (here ~1e-12, below float32's rounding
    # of K itself, so the public gaussian_gram(t) is all ones).
    got = hsic.all_layers_jit(
        x,
        np.zeros(24, np.int32),
        [t],
        num_classes=4,
        config=hsic.HSICConfig(chunk_size=None),
    )
    close(got["cka_x"], np_cka(kx, kt), rtol=1e-4)
    close(got["nhsic_x"], np_nocco_authors(kx, kt), rtol=1e-3, atol=1e-6)
    close(hsic.nhsic(x, t), np_nocco_authors(kx, kt), rtol=1e-3, atol=1e-6)
    d = hsic.sq_distances(t)
    close(d, np_sq_distances(t), rtol=1e-3, atol=1e-14)


def test_mismatched_n_and_bad_shapes_raise(data):
    x, z, y = data
    k = hsic.gaussian_gram(x)
    with pytest.raises(ValueError, match="same number of samples"):
        hsic.nhsic(x, z[:10])
    for f in (hsic.hsic, hsic.cka, hsic.nocco):
        with pytest.raises(ValueError, match="same number of samples"):
            f(k, k[:10, :10])
        with pytest.raises(ValueError, match="square"):
            f(k, k[:, :10])
    with pytest.raises(ValueError, match="same number of samples"):
        hsic.all_layers(x, y, [z[:20]], num_classes=4)
    with pytest.raises(ValueError, match="same number of samples"):
        hsic.all_layers(x, y[:20], [z], num_classes=4)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        hsic.sq_distances(np.ones(5))
    with pytest.raises(ValueError, match="at least one array"):
        hsic.all_layers(x, y, [], num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        hsic.all_layers(x, y, [z], num_classes=0)
    with pytest.raises(ValueError, match="sigma"):
        hsic.gaussian_gram(x, sigma=-1.0)
    with pytest.raises(ValueError, match="'cosine'"):
        hsic.gaussian_gram(x, distance="cosine")
    with pytest.raises(ValueError, match="eps"):
        hsic.nocco(k, k, eps=0.0)
    with pytest.raises(ValueError, match="n >= 4"):
        hsic.cka(k[:3, :3], k[:3, :3], estimator="unbiased")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, "HSICConfig.sigma"),
        ({"eps": -1e-5}, "HSICConfig.eps"),
        ({"bandwidth": "silverman"}, "HSICConfig.bandwidth.*'silverman'"),
        ({"distance": "l1"}, "HSICConfig.distance"),
        ({"cka_estimator": "debiased"}, "HSICConfig.cka_estimator"),
        ({"chunk_size": 0}, "HSICConfig.chunk_size"),
        ({"chunk_size": 3, "cka_estimator": "unbiased"}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"solver": "inv"}, "HSICConfig.solver.*'inv'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hsic.HSICConfig(**kwargs)


def test_bf16_inputs_are_upcast(data):
    x, z, y = data
    xb, zb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(z, jnp.bfloat16)
    x32, z32 = xb.astype(jnp.float32), zb.astype(jnp.float32)
    assert hsic.sq_distances(xb).dtype == jnp.float32
    got, want = _everything(xb, zb, y), _everything(x32, z32, y)
    for name, value in got.items():
        assert value.dtype == jnp.float32
        close(value, want[name], rtol=1e-6)


# ----------------------------------------------------------------------------
# Minibatch CKA
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_streaming_cka_equals_cka_of_averaged_unbiased_hsic(kernel):
    """CKA = mean_b HSIC_u(K_b, L_b) / sqrt(mean_b HSIC_u(K_b, K_b)
    mean_b HSIC_u(L_b, L_b)) over the same batches b (Nguyen et al. 2021)."""
    rng = np.random.default_rng(3)
    num_batches, b = 4, 16
    x = rng.normal(size=(num_batches, b, 6)).astype(np.float32)
    y = rng.integers(0, 3, (num_batches, b)).astype(np.int32)
    t1 = np.tanh(x[..., :3]) + 0.2 * rng.normal(size=(num_batches, b, 3))
    t2 = rng.normal(size=(num_batches, b, 2, 2))
    layers = [t1.astype(np.float32), t2.astype(np.float32)]
    stream = hsic.StreamingCKA(num_classes=3, kernel=kernel)
    update = jax.jit(stream.update)
    state = stream.init(2)
    for i in range(num_batches):
        state = update(state, x[i], y[i], [t[i] for t in layers])
    got = stream.result(state)
    assert int(state.count) == num_batches

    @jax.jit
    def gram(a):
        a = a.reshape(len(a), -1)
        return hsic.linear_gram(a) if kernel == "linear" else hsic.gaussian_gram(a)

    hsic_u = jax.jit(functools.partial(hsic.hsic, estimator="unbiased"))

    def avg(f, g):
        return np.mean([hsic_u(f(i), g(i)) for i in range(num_batches)])

    kx = lambda i: gram(x[i])
    ly = lambda i: hsic.label_gram(y[i], 3)
    for l_idx, t in enumerate(layers):
        kt = lambda i, t=t: gram(t[i])
        for name, other in (("cka_x", kx), ("cka_y", ly)):
            want = avg(kt, other) / np.sqrt(avg(kt, kt) * avg(other, other))
            close(got[name][l_idx], want, rtol=1e-4, atol=1e-6)
    k0 = lambda i: gram(layers[0][i])
    k1 = lambda i: gram(layers[1][i])
    want = avg(k0, k1) / np.sqrt(avg(k0, k0) * avg(k1, k1))
    close(got["cka_layers"][0, 1], want, rtol=1e-4, atol=1e-6)
    close(np.diag(got["cka_layers"]), [1.0, 1.0], rtol=1e-5)


def test_streaming_cka_validation():
    stream = hsic.StreamingCKA(num_classes=3)
    state = stream.init(1)
    x = np.zeros((8, 2), np.float32)
    y = np.zeros(8, np.int32)
    with pytest.raises(ValueError, match="initialized for 1"):
        stream.update(state, x, y, [x, x])
    with pytest.raises(ValueError, match="n >= 4"):
        stream.update(state, x[:3], y[:3], [x[:3]])
    with pytest.raises(ValueError, match="num_layers"):
        stream.init(0)
    with pytest.raises(ValueError, match="kernel"):
        hsic.StreamingCKA(num_classes=3, kernel="rbf")
    result = stream.result(state)  # no batches yet: zeros, not NaN
    assert np.all(np.asarray(result["cka_x"]) == 0)
