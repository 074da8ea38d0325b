"""Block-structured models: shapes, variable names, gradient routing, BN, dropout.

Shape checks use ``jax.eval_shape`` (tracing only); numerical checks fill the
variables with NumPy random values (``model.init`` compiles slowly on a CPU)
and jit each function once.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsicib import losses, models
from hsicib.models import heads as heads_lib

EXPECTED_BLOCKS = {
    "mlp": 3,
    "lenet5": 4,
    "vgg8b": 7,
    "vgg11b": 11,
    "vgg11": 9,
    "resnet18": 9,
    "resnet34": 17,
    "resnet50": 17,
}
SHAPES = ((1, 8, 8), (1, 28, 28), (3, 32, 32))
WIDTH = 1 / 16


def _flags(model, cut, detach):
    return {
        "cut_after": (cut,) * model.num_blocks,
        "detach_head": (detach,) * model.num_blocks,
    }


def _shapes(model, x):
    """Variable shapes without running the initializers."""
    init = lambda x: model.init(
        jax.random.key(0), x, train=False, **_flags(model, 0, 1)
    )
    return jax.eval_shape(init, x)


def _init_shapes(model, x, cut=0, detach=1):
    """(NetOutput, variables) shapes of an eval-mode initialization (one trace)."""
    init = lambda x: model.init_with_output(
        jax.random.key(0), x, train=False, **_flags(model, cut, detach)
    )
    return jax.eval_shape(init, x)


def _fill(shapes, seed=0):
    """Arrays of the given shapes from NumPy: He-scaled kernels, BN-like stats."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
            value = rng.normal(0.0, std, leaf.shape)
        elif name == "scale":
            value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        elif name == "var":
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:  # bias, mean
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _random_variables(model, x, seed=0):
    """A BlockNet's variables filled by :func:`_fill` (no initializer compiled)."""
    return _fill(_shapes(model, x), seed)


def _images(shape_chw, batch=4, seed=0):
    c, h, w = shape_chw
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(batch, h, w, c)).astype(np.float32))


def _expected_keys(n):
    keys = {f"{p}_{i}" for p in ("block", "head", "probe") for i in range(n)}
    return keys | {"classifier"}


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_block_counts_and_names_on_unbound_model(name):
    model = models.build_model(name, num_classes=10, width_mult=WIDTH)
    assert model.num_blocks == EXPECTED_BLOCKS[name]
    assert len(model.block_names) == model.num_blocks
    assert len(set(model.block_names)) == model.num_blocks
    assert all(isinstance(b, str) for b in model.block_names)


def test_block_names():
    build = lambda n: models.build_model(n, num_classes=10)
    assert build("lenet5").block_names == ("conv1", "conv2", "fc1", "fc2")
    assert build("resnet18").block_names[:4] == (
        "stem",
        "layer1.0",
        "layer1.1",
        "layer2.0",
    )
    assert build("resnet50").block_names[-1] == "layer4.2"
    assert build("vgg8b").block_names == tuple(
        [f"conv{i}" for i in range(1, 7)] + ["fc1"]
    )


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_forward_shapes_and_variable_names(name, shape):
    model = models.build_model(name, num_classes=7, width_mult=WIDTH)
    x = jax.ShapeDtypeStruct((3, shape[1], shape[2], shape[0]), jnp.float32)
    out, variables = _init_shapes(model, x)
    n = model.num_blocks
    assert set(variables["params"]) == _expected_keys(n)
    assert set(variables["batch_stats"]) == {f"block_{i}" for i in range(n)}
    for field in ("features", "inputs", "head_out", "probe_logits"):
        assert len(getattr(out, field)) == n, field
    assert out.logits.shape == (3, 7)
    assert all(h.shape == (3, 7) for h in out.head_out)
    assert all(p.shape == (3, 7) for p in out.probe_logits)
    assert out.inputs[0].shape == x.shape
    for i in range(1, n):
        assert out.inputs[i].shape == out.features[i - 1].shape
    for i, f in enumerate(out.features):
        assert f.shape[0] == 3 and f.ndim in (2, 4)
        head_in = variables["params"][f"probe_{i}"]["out"]["kernel"].shape[0]
        assert head_in <= max(2048, f.shape[-1])


def test_cifar_feature_shapes_and_head_pooling_at_full_width():
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    vgg = models.build_model("vgg8b", num_classes=10)
    out, v = _init_shapes(vgg, x)
    assert [f.shape[1:] for f in out.features] == [
        (32, 32, 128),
        (32, 32, 256),
        (16, 16, 256),
        (16, 16, 512),
        (8, 8, 512),
        (4, 4, 512),
        (1024,),
    ]
    # Maps pooled to <= 2048 values: 4x4x128, 2x4x256, 2x4x256, 2x2x512, ...
    widths = [v["params"][f"probe_{i}"]["out"]["kernel"].shape[0] for i in range(7)]
    assert widths == [2048, 2048, 2048, 2048, 2048, 2048, 1024]
    res = models.build_model("resnet50", num_classes=10, width_mult=0.25)
    out, _ = _init_shapes(res, x)
    assert out.features[0].shape == (2, 32, 32, 16)
    assert out.features[3].shape == (2, 32, 32, 64)  # layer1: 4 x 16 channels
    assert out.features[-1].shape == (2, 4, 4, 512)  # layer4: 4 x 128 channels


@pytest.mark.parametrize("name", ["vgg8b", "resnet18"])
def test_forward_runs_and_updates_batch_stats_only_in_train(name):
    model = models.build_model(name, num_classes=5, width_mult=WIDTH)
    x = _images((3, 8, 8), batch=4)
    variables = _random_variables(model, x)
    flags = _flags(model, 0, 1)

    @jax.jit
    def forward(v, x):
        out_train, new = model.apply(v, x, train=True, mutable=["batch_stats"], **flags)
        out_eval, same = model.apply(
            v, x, train=False, mutable=["batch_stats"], **flags
        )
        return out_train, new, out_eval, same

    out, new, out_eval, same = forward(variables, x)
    for o in (out, out_eval):
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(o))
    assert not np.allclose(out.logits, out_eval.logits)
    for i in range(model.num_blocks):
        before = jax.tree.leaves(variables["batch_stats"][f"block_{i}"])
        after = jax.tree.leaves(new["batch_stats"][f"block_{i}"])
        unchanged = jax.tree.leaves(same["batch_stats"][f"block_{i}"])
        assert all(not np.allclose(a, b) for a, b in zip(after, before, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(unchanged, before, strict=True))


def test_bottleneck_block_with_projection_shortcut():
    spec = models.BlockSpec("bottleneck", 4, "layer2.0", stride=2)
    block = models.make_block(spec)
    x = _images((8, 5, 5), batch=2)
    v = _fill(
        jax.eval_shape(lambda x: block.init(jax.random.key(0), x, train=False), x)
    )
    y = jax.jit(lambda v, x: block.apply(v, x, train=False))(v, x)
    assert y.shape == (2, 3, 3, 16)  # ceil(5 / 2) = 3, 4x expansion
    assert np.all(np.asarray(y) >= 0) and np.any(np.asarray(y) > 0)
    assert set(v["params"]) == {
        "conv1",
        "conv2",
        "conv3",
        "bn1",
        "bn2",
        "bn3",
        "proj_conv",
        "proj_bn",
    }


def test_lenet5_has_the_classic_parameter_count():
    model = models.build_model("lenet5", num_classes=10, batch_norm=False)
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    params = _shapes(model, x)["params"]
    backbone = {k: v for k, v in params.items() if k.startswith("block_")}
    backbone["classifier"] = params["classifier"]
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(backbone))
    # conv1 156 + conv2 2,416 + fc1 48,120 + fc2 10,164 + classifier 850.
    assert count == models.CLASSIC_PARAM_COUNT == 61_706
    assert params["block_2"]["dense"]["kernel"].shape == (400, 120)


def test_lenet5_adapts_to_8x8_digits():
    model = models.build_model("lenet5", num_classes=10)
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    out, _ = _init_shapes(model, x)
    # conv1 SAME + pool: 8 -> 4; conv2 falls back to SAME on 4x4, pool: 4 -> 2.
    assert [f.shape for f in out.features] == [
        (2, 4, 4, 6),
        (2, 2, 2, 16),
        (2, 120),
        (2, 84),
    ]


def _setup(name, **kw):
    model = models.build_model(name, num_classes=4, **kw)
    x = _images((1, 12, 12), batch=6)
    labels = jnp.array([0, 1, 2, 3, 0, 1])
    return model, x, labels, _random_variables(model, x)


def _jacobian(model, x, variables, flags, rows, extra=None):
    """Jacobian of a vector of scalars picked from the NetOutput, w.r.t. params.

    ``extra(params)``, if given, is differentiated in the same compiled call.
    """

    def values(params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
            **flags,
        )
        return rows(out)

    def both(params):
        jac = jax.jacrev(values)(params)
        return jac, (None if extra is None else jax.grad(extra)(params))

    return jax.jit(both)(variables["params"])


def _row(jac, r):
    return jax.tree.map(lambda leaf: leaf[r], jac)


def _norm(tree):
    return float(sum(jnp.sum(jnp.abs(leaf)) for leaf in jax.tree.leaves(tree)))


def _all_zero(tree):
    return all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(tree))


def test_layerwise_cut_confines_each_head_to_its_block():
    # BlockNet routes gradients the same way for every block type; the MLP
    # (with BatchNorm) compiles fastest.
    model, x, labels, variables = _setup("mlp", mlp_hidden=(16, 16, 16))
    n = model.num_blocks
    rows = lambda o: jnp.stack(
        [losses.cross_entropy(h, labels) for h in o.head_out]
        + [losses.cross_entropy(o.logits, labels)]
    )
    jac, _ = _jacobian(model, x, variables, _flags(model, 1, 0), rows)
    for k in range(n):
        for j in range(n):
            g = _row(jac[f"block_{j}"], k)
            if j == k:
                assert _norm(g) > 0, (k, j)
            else:
                assert _all_zero(g), (k, j)
        assert _norm(_row(jac[f"head_{k}"], k)) > 0
    # The final classifier's loss reaches the classifier and no block.
    assert all(_all_zero(_row(jac[f"block_{j}"], n)) for j in range(n))
    assert _norm(_row(jac["classifier"], n)) > 0


def test_e2e_final_loss_is_plain_backprop_and_heads_probes_are_detached():
    model, x, labels, variables = _setup("lenet5")
    n = model.num_blocks
    keys = [f"block_{i}" for i in range(n)] + ["classifier"]

    def plain(params):
        """The same network written without heads: blocks in sequence."""
        h = x
        for i, spec in enumerate(model.blocks):
            block = models.make_block(spec, batch_norm=True)
            h, _ = block.apply(
                {
                    "params": params[f"block_{i}"],
                    "batch_stats": variables["batch_stats"][f"block_{i}"],
                },
                h,
                train=True,
                mutable=["batch_stats"],
            )
        logits = heads_lib.Classifier(4).apply({"params": params["classifier"]}, h)
        return losses.cross_entropy(logits, labels)

    rows = lambda o: jnp.stack(
        [
            losses.cross_entropy(o.logits, labels),
            sum(losses.cross_entropy(h, labels) for h in o.head_out),
            sum(losses.cross_entropy(p, labels) for p in o.probe_logits),
        ]
    )
    jac, want = _jacobian(model, x, variables, _flags(model, 0, 1), rows, plain)
    for k in keys:
        got = _row(jac[k], 0)
        # jacrev and grad order the same sums differently: float32 round-off.
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max()
            ),
            got,
            want[k],
        )
        assert _norm(got) > 0
    for i in range(n):
        # Head losses train only their heads; probe losses only their probes.
        assert _all_zero(_row(jac[f"block_{i}"], 1))
        assert _all_zero(_row(jac[f"block_{i}"], 2))
        assert _norm(_row(jac[f"head_{i}"], 1)) > 0
        assert _norm(_row(jac[f"probe_{i}"], 2)) > 0
        assert _all_zero(_row(jac[f"head_{i}"], 0))


def test_same_seed_same_parameters_in_every_mode():
    model = models.build_model("mlp", num_classes=3, mlp_hidden=(8, 8))
    x = jnp.ones((2, 4, 4, 1))

    def init(key, cut, detach, train):
        return model.init(key, x, train=train, **_flags(model, cut, detach))

    init = jax.jit(init, static_argnums=(1, 2, 3))
    a = init(jax.random.key(0), 0, 1, False)
    b = init(jax.random.key(0), 1, 0, True)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = init(jax.random.key(1), 0, 1, False)
    assert not np.allclose(
        a["params"]["block_0"]["dense"]["kernel"],
        c["params"]["block_0"]["dense"]["kernel"],
    )


def test_dropout_only_in_train():
    model = models.build_model(
        "mlp", num_classes=3, mlp_hidden=(64, 64), dropout=0.5, batch_norm=False
    )
    x = _images((1, 4, 4), batch=3)
    variables = _random_variables(model, x)
    flags = _flags(model, 0, 1)

    @jax.jit
    def features(key):
        train = model.apply(variables, x, train=True, rngs={"dropout": key}, **flags)
        return train.features[0], model.apply(
            variables, x, train=False, **flags
        ).features[0]

    t1, e1 = features(jax.random.key(1))
    t2, e2 = features(jax.random.key(2))
    np.testing.assert_array_equal(e1, e2)
    assert not np.array_equal(t1, t2)
    dropped = (np.asarray(t1) == 0) & (np.asarray(e1) != 0)
    assert 0.3 < dropped.mean() / (np.asarray(e1) != 0).mean() < 0.7
    kept = np.asarray(t1) != 0
    np.testing.assert_allclose(
        np.asarray(t1)[kept], 2 * np.asarray(e1)[kept], rtol=1e-5
    )


@pytest.mark.parametrize("local_loss", ["sim", "supcon"])
def test_head_outputs_per_local_loss(local_loss):
    model = models.build_model(
        "vgg8b",
        num_classes=10,
        local_loss=local_loss,
        head="mlp",
        proj_dim=16,
        width_mult=WIDTH,
    )
    x = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
    out, variables = _init_shapes(model, x, cut=1, detach=0)
    for h, f in zip(out.head_out, out.features, strict=True):
        assert h.dtype == jnp.float32
        want = (4, 16) if local_loss == "supcon" else (4, f.shape[-1])
        assert h.shape == want
    if local_loss == "supcon":
        assert variables["params"]["head_0"]["hidden"]["kernel"].shape[1] == 512
    else:  # a 3x3 same-width convolution for maps, a square Dense for fc features
        assert variables["params"]["head_0"]["proj"]["kernel"].shape == (3, 3, 8, 8)
        assert variables["params"]["head_6"]["proj"]["kernel"].shape == (64, 64)


def test_similarity_head_is_the_spatial_std_of_a_conv_projection():
    head = heads_lib.LocalHead(local_loss="sim", head="linear", num_classes=3)
    h = _images((2, 5, 5), batch=3)
    v = _fill(jax.eval_shape(lambda h: head.init(jax.random.key(0), h), h))
    z = jax.lax.conv_general_dilated(
        h,
        v["params"]["proj"]["kernel"],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(
        head.apply(v, h), np.sqrt(np.var(np.asarray(z), axis=(1, 2)) + 1e-8), rtol=1e-5
    )


def test_bfloat16_compute_keeps_float32_outputs():
    model = models.build_model("lenet5", num_classes=10, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    out, variables = _init_shapes(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert out.features[0].dtype == jnp.bfloat16
    assert out.logits.dtype == out.head_out[0].dtype == jnp.float32


@pytest.mark.parametrize(
    ("hwc", "grid"),
    [
        ((32, 32, 128), (4, 4)),
        ((32, 32, 256), (2, 4)),
        ((28, 28, 6), (14, 14)),
        ((14, 14, 6), (14, 14)),
        ((8, 8, 4096), (1, 1)),
        ((7, 7, 512), (2, 2)),
        ((1, 1, 64), (1, 1)),
    ],
)
def test_head_pool_shape(hwc, grid):
    assert models.head_pool_shape(*hwc, 2048) == grid


def test_head_pool_shape_is_bounded_and_smallest():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 40, size=2)
        c = int(rng.integers(1, 600))
        oh, ow = models.head_pool_shape(int(h), int(w), c, 2048)
        assert 1 <= oh <= h and 1 <= ow <= w
        assert oh * ow * c <= 2048 or (oh, ow) == (1, 1)
        if h * w * c <= 2048:
            assert (oh, ow) == (h, w)


def test_adaptive_avg_pool_matches_numpy_windows():
    x = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype(np.float32)
    got = models.adaptive_avg_pool(jnp.asarray(x), (3, 4))
    want = np.zeros((2, 3, 4, 3), np.float32)
    for i in range(3):
        for j in range(4):
            r0, r1 = (i * 7) // 3, math.ceil((i + 1) * 7 / 3)
            c0, c1 = (j * 9) // 4, math.ceil((j + 1) * 9 / 4)
            want[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "vgg99"}, "model"),
        ({"head": "conv"}, "head"),
        ({"local_loss": "mse"}, "local_loss"),
        ({"dropout": 1.5}, "dropout"),
        ({"width_mult": 0.0}, "width_mult"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_field(kwargs, field):
    args = {"name": "lenet5", "num_classes": 10} | kwargs
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=rf"{field}.*{value!r}") as err:
        models.build_model(args.pop("name"), **args)
    assert field in str(err.value)


def test_wrong_flag_lengths_raise():
    model = models.build_model("mlp", num_classes=3, mlp_hidden=(4, 4))
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="cut_after"):
        model.init(
            jax.random.key(0),
            x,
            train=False,
            cut_after=(True,),
            detach_head=(True, True),
        )
    with pytest.raises(ValueError, match="static Python bools"):
        model.init(
            jax.random.key(0),
            x,
            train=False,
            cut_after=(True, True),
            detach_head=jnp.array([True, False]),
        )
