"""Tests of hsicib.infoplane: the schedule, the tables and the jitted tracker."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsicib import hsic, infoplane
from hsicib.models import build_model

# ----------------------------------------------------------------------------
# eval_epochs


def test_eval_epochs_default_schedule():
    assert infoplane.eval_epochs(100) == (0, 1, 2, 3, 4, 5, 7, 10, 20, 30, 40, 50, 60,
                                          70, 80, 90, 100)  # fmt: skip


def test_eval_epochs_always_has_first_and_last():
    for n in (0, 1, 3, 7, 11, 95, 400):
        epochs = infoplane.eval_epochs(n, every=25, num_log=6, log_until=20)
        assert epochs[0] == 0 and epochs[-1] == n
        assert list(epochs) == sorted(set(epochs))
        assert all(0 <= e <= n for e in epochs)
        regular = set(range(25, n + 1, 25))
        assert regular <= set(epochs)
    assert infoplane.eval_epochs(0) == (0,)


def test_eval_epochs_log_part_matches_numpy():
    epochs = infoplane.eval_epochs(1000, every=100, num_log=10, log_until=50)
    log_part = {round(v) for v in np.geomspace(1, 50, 10)}
    assert log_part <= set(epochs)
    assert set(epochs) - log_part == {0, *range(100, 1001, 100)}
    assert infoplane.eval_epochs(30, every=10, num_log=0) == (0, 10, 20, 30)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_epochs": -1}, "num_epochs"),
        ({"num_epochs": 2.5}, "num_epochs"),
        ({"num_epochs": 10, "every": 0}, "every"),
        ({"num_epochs": 10, "num_log": -2}, "num_log"),
        ({"num_epochs": 10, "log_until": 0}, "log_until"),
    ],
)
def test_eval_epochs_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        infoplane.eval_epochs(**kwargs)


# ----------------------------------------------------------------------------
# Tables


def _stats(num_blocks, offset=0.0):
    return {
        s: jnp.arange(num_blocks, dtype=jnp.float32) + 10 * i + offset + 0.125
        for i, s in enumerate(infoplane.STATISTICS)
    } | {"probe_acc": jnp.zeros(num_blocks), "test_acc_subset": jnp.float32(0.5)}


def test_to_rows_layout():
    rows = infoplane.to_rows(
        _stats(3), epoch=4, step=200, block_names=("conv1", "conv2", "fc1")
    )
    assert len(rows) == 3 * len(infoplane.STATISTICS)
    assert all(tuple(r) == infoplane.COLUMNS for r in rows)
    row = rows[len(rows) // 4 + 2]  # nhsic_y of block 2.
    assert row == {
        "epoch": 4,
        "step": 200,
        "block": 2,
        "block_name": "fc1",
        "statistic": "nhsic_y",
        "value": 12.125,
    }
    assert all(isinstance(r["value"], float) for r in rows)


def test_to_rows_rejects_wrong_lengths():
    with pytest.raises(ValueError, match="one value per block"):
        infoplane.to_rows(_stats(3), epoch=0, step=0, block_names=("a", "b"))
    stats = _stats(2)
    del stats["cka_y"]
    with pytest.raises(ValueError, match="cka_y"):
        infoplane.to_rows(stats, epoch=0, step=0, block_names=("a", "b"))


def test_csv_round_trip_and_pivot(tmp_path):
    names = ("b0", "b1")
    rows = []
    for epoch in (0, 1, 5):
        stats = _stats(2, offset=np.float32(epoch / 3))
        rows += infoplane.to_rows(stats, epoch=epoch, step=7 * epoch, block_names=names)
    path = infoplane.write_csv_atomic(
        tmp_path / "sub" / "infoplane.csv", rows, infoplane.COLUMNS
    )
    with path.open() as f:
        assert next(csv.reader(f)) == list(infoplane.COLUMNS)
    back = infoplane.read_infoplane(path)
    assert back == rows  # Exact floats, ints parsed back.
    assert [p.name for p in path.parent.iterdir()] == ["infoplane.csv"]
    epochs, block_names, values = infoplane.to_arrays(back)
    np.testing.assert_array_equal(epochs, [0, 1, 5])
    assert block_names == names
    assert set(values) == set(infoplane.STATISTICS)
    for i, epoch in enumerate((0, 1, 5)):
        expected = np.asarray(_stats(2, offset=np.float32(epoch / 3))["cka_x"])
        np.testing.assert_array_equal(values["cka_x"][i], expected)


def test_write_csv_atomic_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "t.csv"
    infoplane.write_csv_atomic(path, [{"a": 1}], ["a"])
    with pytest.raises(ValueError, match="lacks"):
        infoplane.write_csv_atomic(path, [{"a": 2}, {"b": 3}], ["a"])
    assert path.read_text().split() == ["a", "1"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_read_infoplane_rejects_bad_header(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("epoch,block,value\n0,0,1.0\n")
    with pytest.raises(ValueError, match="missing"):
        infoplane.read_infoplane(path)


# ----------------------------------------------------------------------------
# Tracker

NUM_CLASSES = 10
N = 200


def _random_variables(model, images, flags, seed):
    """Variables with the structure of ``model.init`` but filled by NumPy.

    (Compiling ``model.init`` costs tens of CPU seconds here: XLA compiles one
    truncated-normal sampler per parameter shape.)
    """
    shapes = jax.eval_shape(
        lambda k: model.init(k, jnp.asarray(images[:2]), **flags), jax.random.key(0)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:  # BatchNorm running variance.
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
        scale = 1.0 / np.sqrt(fan_in) if leaf.ndim > 1 else 0.1
        return jnp.asarray(scale * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def setup():
    model = build_model("lenet5", num_classes=NUM_CLASSES, width_mult=0.5)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(N, 12, 12, 1)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=N)
    flags = dict(
        train=False,
        cut_after=(False,) * model.num_blocks,
        detach_head=(True,) * model.num_blocks,
    )
    variables = [_random_variables(model, images, flags, seed) for seed in (0, 1)]
    config = hsic.HSICConfig(chunk_size=100)
    return model, images, labels, flags, variables, config


def _reference(model, images, labels, flags, variables, config):
    """A separate (jitted) forward pass, then hsic.all_layers on its features."""
    forward = jax.jit(lambda v: model.apply(v, jnp.asarray(images), **flags))
    results = []
    for v in variables:
        out = forward(v)
        stats = hsic.all_layers_jit(
            jnp.asarray(images.reshape(N, -1)),
            jnp.asarray(labels),
            list(out.features),
            num_classes=NUM_CLASSES,
            config=config,
        )
        probe = [
            np.mean(np.argmax(np.asarray(p), -1) == labels) for p in out.probe_logits
        ]
        test = np.mean(np.argmax(np.asarray(out.logits), -1) == labels)
        results.append((stats, np.array(probe), test))
    return results


@pytest.fixture(scope="module")
def expected(setup):
    return _reference(*setup)


def test_tracker_matches_separate_forward_pass_and_compiles_once(
    setup, expected, monkeypatch
):
    model, images, labels, _, variables, config = setup
    traces = []
    original = hsic.all_layers

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(hsic, "all_layers", counting)
    track = infoplane.make_tracker(
        model, images, labels, num_classes=NUM_CLASSES, config=config
    )
    results = [track(v) for v in variables]
    assert len(traces) == 1  # Traced once for two different parameter sets.
    assert track.jitted._cache_size() == 1
    monkeypatch.setattr(hsic, "all_layers", original)
    for got, (stats, probe, test) in zip(results, expected, strict=True):
        for name in infoplane.STATISTICS:
            assert got[name].shape == (model.num_blocks,)
            # Same math, separately compiled: float32 eigh round-off only.
            np.testing.assert_allclose(got[name], stats[name], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["probe_acc"], probe, atol=1e-6)
        np.testing.assert_allclose(got["test_acc_subset"], test, atol=1e-6)
    assert not np.allclose(results[0]["nhsic_x"], results[1]["nhsic_x"])


def test_tracker_batched_forward_is_the_same(setup, expected):
    model, images, labels, _, variables, config = setup
    batched = infoplane.make_tracker(
        model, images, labels, num_classes=NUM_CLASSES, config=config, batch_size=64
    )(variables[0])
    stats, probe, test = expected[0]
    for name in infoplane.STATISTICS:
        # Convolutions in batches of 64 round differently from one batch of
        # 200 (~1e-7 relative). The last block's features at initialization
        # spread over ~1e-3 of their offset; hsic centres such features before
        # the matmul identity, which keeps the gap at ~1e-5 (it was 1e-3).
        np.testing.assert_allclose(batched[name], stats[name], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(batched["probe_acc"], probe, atol=1e-6)
    np.testing.assert_allclose(batched["test_acc_subset"], test, atol=1e-6)


def test_tracker_rejects_bad_inputs(setup):
    model, images, labels, _, _, config = setup
    with pytest.raises(ValueError, match="eval_labels"):
        infoplane.make_tracker(
            model, images, labels[:-1], num_classes=NUM_CLASSES, config=config
        )
    with pytest.raises(ValueError, match="eval_labels"):
        infoplane.make_tracker(
            model, images, labels.astype(np.float32), num_classes=10, config=config
        )
    with pytest.raises(ValueError, match="chunk_size"):
        infoplane.make_tracker(
            model, images[:150], labels[:150], num_classes=10, config=config
        )
    with pytest.raises(ValueError, match="batch_size"):
        infoplane.make_tracker(
            model, images, labels, num_classes=10, config=config, batch_size=0
        )
