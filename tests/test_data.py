"""Data sources, normalization, augmentation and batching (hsicib.data)."""

import gzip
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsicib import data

FASHION_DIR = "/usr/share/datasets/fashion-mnist"

# Jitted once per static configuration: faster than op-by-op dispatch.
augment_jit = jax.jit(data.augment, static_argnames=("crop_padding", "flip"))
sample_params_jit = jax.jit(data._sample_augment_params, static_argnums=(1, 2, 3))


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C}
_IDX_CODES.update({np.float32: 0x0D, np.float64: 0x0E})


def write_idx(path, array, *, gz=False):
    """Writes ``array`` as an IDX file, byte by byte from the format's spec."""
    array = np.asarray(array)
    header = bytes([0, 0, _IDX_CODES[array.dtype.type], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + body)


def write_idx_folder(folder, train_x, train_y, test_x, test_y, *, gz):
    suffix = ".gz" if gz else ""
    for base, array in zip(
        data.IDX_FILES.values(), (train_x, train_y, test_x, test_y), strict=True
    ):
        write_idx(os.path.join(folder, base + suffix), array, gz=gz)


def pixel_stats(images):
    """Per-channel mean and std in [0, 1] units, the obvious way."""
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


@pytest.fixture(scope="module")
def digits_ds():
    return data.load_dataset("digits")


# --------------------------------------------------------------------------- #
# digits
# --------------------------------------------------------------------------- #


def test_digits_shapes_split_and_pixels(digits_ds):
    from sklearn.datasets import load_digits

    ds = digits_ds
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.train_images.shape == (1437, 8, 8, 1)
    assert ds.test_images.shape == (360, 8, 8, 1)
    assert ds.image_shape == (8, 8, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.test_images.dtype == np.uint8 and ds.test_labels.dtype == np.int32

    raw = load_digits()
    expected = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]

    # The split is a partition of the 1,797 examples: every (image, label) pair
    # appears exactly once across train and test.
    def keys(x, y):
        return sorted(xi.tobytes() + bytes([yi]) for xi, yi in zip(x, y, strict=True))

    got = keys(
        np.concatenate([ds.train_images, ds.test_images]),
        np.concatenate([ds.train_labels, ds.test_labels]),
    )
    assert got == keys(expected, raw.target)
    assert ds.train_images.max() == 255

    # Stratified: each class's share of the test set matches its overall share.
    full = np.bincount(raw.target, minlength=10)
    test = np.bincount(ds.test_labels, minlength=10)
    assert np.all(np.abs(test - full * 360 / 1797) < 1)

    mean, std = pixel_stats(ds.train_images)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(ds.std, std, rtol=1e-12)


def test_digits_is_deterministic(digits_ds):
    again = data.load_dataset("digits", seed=123)  # seed does not move the split
    np.testing.assert_array_equal(again.train_images, digits_ds.train_images)
    np.testing.assert_array_equal(again.test_labels, digits_ds.test_labels)


def test_digits_rejects_wrong_num_classes():
    with pytest.raises(ValueError, match="num_classes=7"):
        data.load_dataset("digits", num_classes=7)


# --------------------------------------------------------------------------- #
# IDX
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    train_y = np.array([0, 1, 2, 3, 4, 0, 1], np.uint8)
    test_x = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    test_y = np.array([4, 2, 0], np.uint8)
    write_idx_folder(tmp_path, train_x, train_y, test_x, test_y, gz=gz)

    ds = data.load_dataset("idx", "tiny", data_dir=tmp_path)
    assert ds.name == "tiny" and ds.num_classes == 5  # largest label + 1
    np.testing.assert_array_equal(ds.train_images, train_x[..., None])
    np.testing.assert_array_equal(ds.test_images, test_x[..., None])
    np.testing.assert_array_equal(ds.train_labels, train_y)
    np.testing.assert_array_equal(ds.test_labels, test_y)
    assert ds.train_labels.dtype == np.int32
    mean, std = pixel_stats(ds.train_images)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(ds.std, std, rtol=1e-12)

    ds12 = data.load_dataset("idx", data_dir=tmp_path, num_classes=12)
    assert ds12.num_classes == 12
    with pytest.raises(
        ValueError, match=r"train_labels must lie in \[0, num_classes=3"
    ):
        data.load_dataset("idx", data_dir=tmp_path, num_classes=3)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32])
def test_read_idx_dtypes(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(tmp_path / "a", array)
    out = data.read_idx(tmp_path / "a")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path):
    write_idx(tmp_path / "ok", np.zeros((4, 3), np.uint8))
    raw = (tmp_path / "ok").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="implies"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01\x00" + raw[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "magic")


def test_idx_count_mismatch(tmp_path):
    x = np.zeros((4, 2, 2), np.uint8)
    write_idx_folder(tmp_path, x, np.zeros(3, np.uint8), x, np.zeros(4, np.uint8), gz=0)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        data.load_dataset("idx", data_dir=tmp_path)


def test_idx_missing_folder_and_files(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=r"data_dir=.*nope.*dataset-fashion-mnist"):
        data.load_dataset("idx", data_dir=missing)
    with pytest.raises(ValueError, match="data_dir=None"):
        data.load_dataset("idx")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(data.DataUnavailableError, match="t10k-labels-idx1-ubyte"):
        data.load_dataset("idx", data_dir=tmp_path)


@pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist absent"
)
def test_real_fashion_mnist():
    ds = data.load_dataset("idx", "fashion_mnist", data_dir=FASHION_DIR)
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    # The known constants agree with the real training pixels.
    x = ds.train_images
    mean = x.mean(dtype=np.float64) / 255
    std = np.sqrt((x.astype(np.float32) ** 2).mean(dtype=np.float64) / 255**2 - mean**2)
    assert ds.mean == data.KNOWN_STATS["fashion_mnist"][0]
    np.testing.assert_allclose(ds.mean, [mean], atol=1e-4)
    np.testing.assert_allclose(ds.std, [std], atol=1e-4)


# --------------------------------------------------------------------------- #
# TFDS
# --------------------------------------------------------------------------- #


def test_tfds_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset("tfds", "mnist", data_dir=tmp_path)
    assert ds.train_images.shape == (12, 28, 28, 1)
    assert ds.test_images.shape == (12, 28, 28, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.num_classes == 10
    assert ds.train_labels.min() >= 0 and ds.train_labels.max() < 10
    assert (ds.mean, ds.std) == data.KNOWN_STATS["mnist"]


def _make_tiny_tfds(root):
    """Prepares a real array_record TFDS dataset on disk, without TensorFlow."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pil = pytest.importorskip("PIL.Image")

    def examples(n, seed):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(n)  # A unique tag: TFDS reorders records.
        return images, np.arange(n) % 4

    class HsicibTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(6, 5, 3)),
                    "label": tfds.features.ClassLabel(num_classes=4),
                }
            )
            return tfds.core.DatasetInfo(
                builder=self, features=features, supervised_keys=("image", "label")
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(11, 0),
                "test": self._generate_examples(5, 1),
            }

        def _generate_examples(self, n, seed):
            images, labels = examples(n, seed)
            for i in range(n):
                # PIL images are PNG-encoded by PIL, so TensorFlow is not needed.
                yield i, {"image": pil.fromarray(images[i]), "label": int(labels[i])}

    HsicibTinyImages(data_dir=root, file_format="array_record").download_and_prepare()
    return examples(11, 0), examples(5, 1)


def test_tfds_prepared_array_record(tmp_path):
    (train_x, train_y), (test_x, test_y) = _make_tiny_tfds(tmp_path)
    # Not a registered builder: TFDS reads it from the prepared files alone, as
    # after copying a prepared folder to an offline machine.
    ds = data.load_dataset("tfds", "hsicib_tiny_images", data_dir=tmp_path)
    assert ds.num_classes == 4 and ds.image_shape == (6, 5, 3)
    for got_x, got_y, want_x, want_y in (
        (ds.train_images, ds.train_labels, train_x, train_y),
        (ds.test_images, ds.test_labels, test_x, test_y),
    ):
        order = np.argsort(got_x[:, 0, 0, 0])
        np.testing.assert_array_equal(got_x[order], want_x)
        np.testing.assert_array_equal(got_y[order], want_y)
    mean, std = pixel_stats(ds.train_images)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(ds.std, std, rtol=1e-12)
    # Each process of a multi-host run reads only its rows of the train split.
    shards = [
        data.load_dataset(
            "tfds", "hsicib_tiny_images", data_dir=tmp_path, train_shard=(i, 3)
        )
        for i in range(3)
    ]
    for i, shard in enumerate(shards):
        np.testing.assert_array_equal(
            shard.train_images, ds.train_images[3 * i : 3 * i + 3]
        )
        np.testing.assert_array_equal(
            shard.train_labels, ds.train_labels[3 * i : 3 * i + 3]
        )
        np.testing.assert_array_equal(shard.test_images, ds.test_images)


def test_tfds_unprepared_fails_fast(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailableError) as info:
        data.load_dataset("tfds", "cifar10", data_dir=tmp_path / "empty")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "'cifar10'" in message and "empty" in message and "tfds build" in message
    assert elapsed < 5.0
    assert isinstance(info.value, ValueError)


def test_tfds_bad_names(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="name="):
        data.load_dataset("tfds", "no_such_dataset_xyz", data_dir=tmp_path)
    with pytest.raises(ValueError, match="name must be a TFDS"):
        data.load_dataset("tfds")


# --------------------------------------------------------------------------- #
# synthetic, validation
# --------------------------------------------------------------------------- #


def test_synthetic_is_learnable_and_seeded():
    ds = data.load_dataset(
        "synthetic", synthetic_shape=(8, 8, 1), synthetic_size=(512, 256)
    )
    assert ds.train_images.shape == (512, 8, 8, 1) and ds.test_images.shape == (
        256,
        8,
        8,
        1,
    )
    assert ds.num_classes == 10 and len(np.unique(ds.train_labels)) == 10
    # Nearest class mean on raw pixels: chance is 0.1.
    x = ds.train_images.reshape(512, -1).astype(np.float64)
    means = np.stack([x[ds.train_labels == k].mean(0) for k in range(10)])
    t = ds.test_images.reshape(256, -1).astype(np.float64)
    pred = np.argmin(((t[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(pred == ds.test_labels) > 0.35

    same = data.load_dataset("synthetic")
    np.testing.assert_array_equal(same.train_images, ds.train_images)
    other = data.load_dataset("synthetic", seed=1)
    assert not np.array_equal(other.train_images, ds.train_images)
    rgb = data.load_dataset("synthetic", synthetic_shape=(4, 4, 3), num_classes=3)
    assert rgb.image_shape == (4, 4, 3) and len(rgb.mean) == 3 and rgb.num_classes == 3


def test_validation_errors():
    with pytest.raises(ValueError, match=r"source must be one of .*'digits'.*'nope'"):
        data.load_dataset("nope")
    with pytest.raises(ValueError, match="num_classes must be in"):
        data.load_dataset("synthetic", synthetic_shape=(2, 2, 1), num_classes=5)
    images = np.zeros((3, 2, 2, 1), np.uint8)
    labels = np.array([0, 1, 4], np.int32)
    with pytest.raises(
        ValueError, match=r"test_labels must lie in \[0, num_classes=4\)"
    ):
        data.Dataset("x", images, labels % 4, images, labels, 4, (0.5,), (0.2,))
    with pytest.raises(ValueError, match="uint8"):
        data.Dataset(
            "x", images.astype(np.float32), labels, images, labels, 5, (0.5,), (0.2,)
        )


# --------------------------------------------------------------------------- #
# normalize, augment, batches, eval subset
# --------------------------------------------------------------------------- #


def test_normalize_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 3, 2), dtype=np.uint8)
    mean, std = (0.25, 0.5), (0.2, 0.4)
    want = (images / 255.0 - np.array(mean)) / np.array(std)
    got = jax.jit(data.normalize, static_argnums=(1, 2))(images, mean, std)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        data.normalize(images, (0.1,), (0.2,))


def _numpy_augment(images, offsets, flips, pad):
    out = np.empty_like(images)
    _, h, w, _ = images.shape
    for i, image in enumerate(images):
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        r, c = offsets[i]
        window = padded[r : r + h, c : c + w]
        out[i] = window[:, ::-1] if flips[i] else window
    return out


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    return jnp.asarray(rng.integers(1, 256, (16, 7, 6, 3), dtype=np.uint8))


def test_augment_identity_when_off(batch):
    assert data.augment(jax.random.PRNGKey(0), batch) is batch


@pytest.mark.parametrize(("pad", "flip"), [(0, True), (2, True)])
def test_augment_matches_numpy(batch, pad, flip):
    key = jax.random.PRNGKey(7)
    out = augment_jit(key, batch, crop_padding=pad, flip=flip)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    offsets, flips = sample_params_jit(key, batch.shape[0], pad, flip)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    assert offsets.min() >= 0 and offsets.max() <= 2 * pad
    if flip:
        assert 0 < flips.sum() < len(flips)  # Both outcomes occur in 16 draws.
    else:
        assert not flips.any()
    if pad:
        assert len({tuple(o) for o in offsets}) > 1
    want = _numpy_augment(np.asarray(batch), offsets, flips, pad)
    np.testing.assert_array_equal(np.asarray(out), want)


def test_augment_flip_only_is_an_exact_mirror(batch):
    out = np.asarray(augment_jit(jax.random.PRNGKey(3), batch, flip=True))
    x = np.asarray(batch)
    for o, i in zip(out, x, strict=True):
        assert np.array_equal(o, i) or np.array_equal(o, i[:, ::-1])


def test_augment_jits_once(batch):
    traces = []

    @jax.jit
    def step(key, images):
        traces.append(1)
        return data.augment(key, images, crop_padding=2, flip=True)

    outs = [step(jax.random.PRNGKey(s), batch) for s in range(4)]
    assert len(traces) == 1
    assert not np.array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(
        outs[2], augment_jit(jax.random.PRNGKey(2), batch, crop_padding=2, flip=True)
    )


def test_augment_rejects_bad_args(batch):
    with pytest.raises(ValueError, match="crop_padding"):
        data.augment(jax.random.PRNGKey(0), batch, crop_padding=-1)
    with pytest.raises(ValueError, match="images must have shape"):
        data.augment(jax.random.PRNGKey(0), batch[0], flip=True)


def test_epoch_batches():
    key = jax.random.PRNGKey(0)
    idx = data.epoch_batches(key, 103, 10)
    assert idx.shape == (10, 10) and idx.dtype == jnp.int32
    flat = np.asarray(idx).ravel()
    assert len(np.unique(flat)) == 100 and flat.min() >= 0 and flat.max() < 103
    exact = np.sort(np.asarray(data.epoch_batches(key, 100, 20)).ravel())
    np.testing.assert_array_equal(exact, np.arange(100))
    np.testing.assert_array_equal(data.epoch_batches(key, 103, 10), idx)
    assert not np.array_equal(data.epoch_batches(jax.random.PRNGKey(1), 103, 10), idx)
    for bad in (0, -3, 104):
        with pytest.raises(ValueError, match=f"batch_size must .* got {bad}"):
            data.epoch_batches(key, 103, bad)


def test_eval_subset(digits_ds):
    x, y = data.eval_subset(digits_ds, 100, seed=0)
    assert x.shape == (100, 8, 8, 1) and y.shape == (100,)
    x2, y2 = data.eval_subset(digits_ds, 100, seed=0)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    test_keys = {im.tobytes() for im in digits_ds.test_images}
    assert all(im.tobytes() in test_keys for im in x)
    x_all, y_all = data.eval_subset(digits_ds, 10_000)
    assert x_all.shape[0] == 360
    np.testing.assert_array_equal(y_all, digits_ds.test_labels)
    with pytest.raises(ValueError, match="size must be"):
        data.eval_subset(digits_ds, 0)


def test_train_shard_rows_and_global_statistics(digits_ds):
    n = digits_ds.train_images.shape[0]
    size = n // 4
    shards = [data.load_dataset("digits", train_shard=(i, 4)) for i in range(4)]
    for i, shard in enumerate(shards):
        rows = slice(i * size, (i + 1) * size)
        np.testing.assert_array_equal(shard.train_images, digits_ds.train_images[rows])
        np.testing.assert_array_equal(shard.train_labels, digits_ds.train_labels[rows])
        np.testing.assert_array_equal(shard.test_labels, digits_ds.test_labels)
    # Summed per-process histograms give the statistics of the rows used.
    counts = sum(data.pixel_histogram(s.train_images) for s in shards)
    mean, std = data.stats_from_histogram(counts)
    used = digits_ds.train_images[: 4 * size].astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, [used.mean()], rtol=1e-12)
    np.testing.assert_allclose(std, [used.std()], rtol=1e-12)
    for bad in ((4, 4), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="train_shard"):
            data.load_dataset("digits", train_shard=bad)
    with pytest.raises(ValueError, match="train_shard count=2000"):
        data.load_dataset("digits", train_shard=(0, 2000))


def test_sharded_epoch_batches():
    key = jax.random.PRNGKey(0)
    idx = data.sharded_epoch_batches(key, 30, 4, 16)  # 4 per device and batch.
    assert idx.shape == (7, 16) and idx.dtype == np.int32
    for d in range(4):
        block = idx[:, 4 * d : 4 * d + 4].ravel()
        assert len(np.unique(block)) == 28 and block.min() >= 0 and block.max() < 30
    # Devices shuffle independently, reproducibly.
    assert not np.array_equal(idx[:, :4], idx[:, 4:8])
    np.testing.assert_array_equal(data.sharded_epoch_batches(key, 30, 4, 16), idx)
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        data.sharded_epoch_batches(key, 30, 4, 10)
    with pytest.raises(ValueError, match="shard_size"):
        data.sharded_epoch_batches(key, 3, 4, 16)
