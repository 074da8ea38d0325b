"""Datasets as in-memory arrays, and augmentation that runs inside ``jit``.

Synopsis::

    ds = load_dataset("digits")                     # bundled, offline
    ds = load_dataset("idx", "fashion_mnist",
                      data_dir="/usr/share/datasets/fashion-mnist")
    ds = load_dataset("tfds", "cifar10", data_dir="~/tensorflow_datasets")
    ds = load_dataset("synthetic", synthetic_shape=(8, 8, 1))

    idx = epoch_batches(rng, len(ds.train_labels), batch_size)  # (steps, B)
    x = augment(rng, images[idx[i]], crop_padding=4, flip=True)  # uint8
    x = normalize(x, ds.mean, ds.std)                            # float32

Every source returns the same :class:`Dataset`: uint8 NHWC images and int32
labels for a train and a test split, the number of classes and per-channel
normalization constants. The arrays are small enough (MNIST, CIFAR) to live on
the accelerator whole; each epoch is a ``jax.random.permutation`` of indices
(:func:`epoch_batches`) and augmentation (:func:`augment`) is a pure function
of a PRNG key, so the whole input pipeline can sit inside one jitted step.

Sources (see :func:`load_dataset`):

* ``"digits"``: scikit-learn's bundled handwritten digits (1,797 real 8x8
  images); needs no files and no network.
* ``"idx"``: a folder of IDX files, the MNIST file format (optionally gzipped).
  The Debian package ``dataset-fashion-mnist`` installs the real Fashion-MNIST
  in this form under ``/usr/share/datasets/fashion-mnist``.
* ``"tfds"``: any prepared TFDS image-classification dataset, read through
  ``tfds.data_source`` (array_record files), so TensorFlow is not required.
* ``"synthetic"``: random images whose label is a fixed linear function of the
  pixels; for smoke tests only.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

SOURCES = ("tfds", "digits", "idx", "synthetic")

# Per-channel mean and standard deviation of the training images, in [0, 1]
# pixel units (population statistics over every training pixel). The
# Fashion-MNIST values are checked against the real data by the tests.
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# The scikit-learn digits split: 360 test examples (about 20 %), stratified by
# class, drawn with this seed; independent of the training seed so that every
# run of every mode sees the same split.
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type codes (the third magic byte) -> big-endian NumPy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataUnavailableError(ValueError):
    """The requested data is not on this machine and cannot be fetched."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train and a test split of an image-classification dataset in memory.

    Attributes:
      name: the dataset's name, e.g. ``"fashion_mnist"``.
      train_images: uint8 array, shape (number of training examples, height,
        width, channels).
      train_labels: int32 array, shape (number of training examples,), values in
        [0, num_classes).
      test_images: uint8 array, shape (number of test examples, height, width,
        channels).
      test_labels: int32 array, shape (number of test examples,).
      num_classes: the number of classes C.
      mean: per-channel mean of the training pixels in [0, 1] units.
      std: per-channel standard deviation of the training pixels, same units.

    Equality is identity (``eq=False``): the fields are arrays.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(
                    f"{split}_images must be uint8 with shape (N, H, W, C), got "
                    f"dtype {images.dtype} and shape {images.shape}"
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{split}_labels must be int32 with shape ({images.shape[0]},), "
                    f"got dtype {labels.dtype} and shape {labels.shape}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"test_images have shape {self.test_images.shape[1:]} per example "
                f"but train_images have {self.train_images.shape[1:]}; they must "
                "match"
            )
        if int(self.num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        _check_labels(self.train_labels, self.num_classes, "train_labels")
        _check_labels(self.test_labels, self.num_classes, "test_labels")
        channels = self.image_shape[-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"mean and std need one value per channel ({channels}), got "
                f"mean={self.mean} and std={self.std}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image."""
        return tuple(int(d) for d in self.train_images.shape[1:])


def load_dataset(
    source: str,
    name: str = "",
    *,
    data_dir: str | os.PathLike | None = None,
    synthetic_shape: Sequence[int] = (8, 8, 1),
    synthetic_size: Sequence[int] = (512, 256),
    num_classes: int | None = None,
    seed: int = 0,
    download: bool = False,
    train_shard: tuple[int, int] | None = None,
) -> Dataset:
    """Loads a whole image-classification dataset into NumPy arrays.

    Args:
      source: one of :data:`SOURCES`:

        * ``"digits"``: scikit-learn's bundled 8x8 digits. Pixel values 0..16
          become uint8 ``round(x * 255 / 16)``; images have shape (8, 8, 1).
          The split is stratified by class, 1,437 train / 360 test, drawn with
          the fixed seed :data:`DIGITS_SPLIT_SEED` (``seed`` does not change
          it). 10 classes.
        * ``"idx"``: ``data_dir`` holds the four MNIST-format files named in
          :data:`IDX_FILES`, each optionally gzipped (``.gz``). ``name`` is
          informational (it selects known normalization constants, e.g.
          ``"fashion_mnist"``).
        * ``"tfds"``: the TFDS dataset ``name`` (e.g. ``"mnist"``,
          ``"cifar10"``), splits ``"train"`` and ``"test"``, read from
          ``data_dir`` (TFDS's default when None) as array_record files
          without TensorFlow.
        * ``"synthetic"``: ``synthetic_size = (train, test)`` random uint8
          images of shape ``synthetic_shape``; the label is the index of the
          brightest of ``num_classes`` fixed, disjoint pixel groups (the
          argmax of a linear function of the pixels, so a linear classifier
          can reach 100 %). For smoke tests only.
      name: the dataset name (required for ``"tfds"``; defaults to the source
        name otherwise).
      data_dir: folder to read from (``"idx"``: required; ``"tfds"``:
        optional).
      synthetic_shape: (height, width, channels) of synthetic images.
      synthetic_size: (number of train, number of test) synthetic examples.
      num_classes: ``"synthetic"``: the number of classes (default 10);
        ``"idx"``: the number of classes (default: largest label + 1);
        ``"digits"``/``"tfds"``: if given, must match the dataset.
      seed: seed of the synthetic data (other sources ignore it).
      download: ``"tfds"`` only: let TFDS download and prepare the data if it
        is missing (needs internet, and TensorFlow for most builders). Off by
        default so that a missing dataset fails at once instead of waiting on
        the network.
      train_shard: ``(index, count)``: keep only training rows
        index s .. (index + 1) s - 1 with s = N // count (the last N mod count
        rows belong to no shard); a multi-host run gives each process its own
        shard. ``"tfds"`` reads only those rows; the other sources are small
        files and are sliced after reading. The test split stays whole. The
        normalization statistics are those of the rows loaded (the runner
        combines every process's pixel histogram, :func:`pixel_histogram`).

    Returns:
      A :class:`Dataset`. ``mean``/``std`` are the constants of
      :data:`KNOWN_STATS` when ``name`` (without any ``/config`` or
      ``:version``) is listed there, else computed from the training images.

    Raises:
      ValueError: an unknown source, bad arguments, malformed files, or labels
        outside [0, num_classes).
      DataUnavailableError: (a ValueError) the files are not on this machine;
        the message says how to prepare them.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if train_shard is not None:
        index, count = train_shard
        if not (
            int(count) == count >= 1 and int(index) == index and 0 <= index < count
        ):
            raise ValueError(
                f"train_shard must be (index, count) with 0 <= index < count, got "
                f"{train_shard!r}"
            )
    if source == "digits":
        ds_name, arrays, classes = _load_digits(name or "digits", num_classes)
    elif source == "idx":
        ds_name, arrays, classes = _load_idx(name or "idx", data_dir, num_classes)
    elif source == "tfds":
        ds_name, arrays, classes = _load_tfds(
            name, data_dir, num_classes, download, train_shard
        )
    else:
        ds_name = name or "synthetic"
        arrays, classes = _make_synthetic(
            synthetic_shape, synthetic_size, num_classes, seed
        )
    train_images, train_labels, test_images, test_labels = arrays
    if train_shard is not None and source != "tfds":
        rows = shard_rows(len(train_labels), *train_shard)
        train_images, train_labels = train_images[rows], train_labels[rows]
    for field, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        _check_labels(labels, classes, field)
    mean, std = _normalization_stats(ds_name, train_images)
    ds = Dataset(
        name=ds_name,
        train_images=np.ascontiguousarray(train_images, np.uint8),
        train_labels=np.asarray(train_labels, np.int32),
        test_images=np.ascontiguousarray(test_images, np.uint8),
        test_labels=np.asarray(test_labels, np.int32),
        num_classes=int(classes),
        mean=mean,
        std=std,
    )
    logging.info(
        "Loaded %s from %s: train %s, test %s, %d classes, mean %s, std %s",
        ds.name,
        source,
        ds.train_images.shape,
        ds.test_images.shape,
        ds.num_classes,
        ds.mean,
        ds.std,
    )
    return ds


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]):
    """Scales uint8 pixels to [0, 1] and standardizes each channel.

    ``out = (images / 255 - mean) / std``, mean and std broadcast over the last
    (channel) axis. Pure and jit-safe.

    Args:
      images: uint8 (or any real) array, shape (..., channels).
      mean: per-channel mean in [0, 1] units, length channels.
      std: per-channel standard deviation, length channels.

    Returns:
      float32 array with the shape of ``images``.
    """
    images = jnp.asarray(images)
    channels = images.shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need one value per channel ({channels}), got "
            f"mean={tuple(mean)} and std={tuple(std)}"
        )
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(
    rng: jax.Array,
    images: jax.Array,
    *,
    crop_padding: int = 0,
    flip: bool = False,
) -> jax.Array:
    """Random pad-and-crop and random horizontal flip, independently per image.

    Each image is zero-padded by ``crop_padding`` pixels on every side, a window
    of the original height and width is cut at a uniformly random offset in
    [0, 2 * crop_padding] along each axis, and, if ``flip``, the window is
    mirrored left-right with probability 1/2. Vectorized with ``vmap`` and
    ``lax.dynamic_slice``: pure, jit-safe, one compilation per input shape.

    Args:
      rng: a PRNG key.
      images: array of shape (batch, height, width, channels), any dtype; the
        dtype is kept.
      crop_padding: padding in pixels (static, >= 0); 0 disables cropping.
      flip: whether to flip horizontally at random (static).

    Returns:
      An array with the shape and dtype of ``images``; ``images`` itself when
      ``crop_padding == 0`` and not ``flip``.
    """
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (batch, height, width, channels), got shape "
            f"{images.shape}"
        )
    if int(crop_padding) != crop_padding or crop_padding < 0:
        raise ValueError(
            f"crop_padding must be a non-negative integer, got {crop_padding!r}"
        )
    if crop_padding == 0 and not flip:
        return images
    offsets, flips = _sample_augment_params(
        rng, images.shape[0], int(crop_padding), bool(flip)
    )
    return _apply_augment(images, offsets, flips, int(crop_padding))


def _sample_augment_params(
    rng: jax.Array, batch: int, crop_padding: int, flip: bool
) -> tuple[jax.Array, jax.Array]:
    """Draws per-image crop offsets (batch, 2) int32 and flip flags (batch,)."""
    crop_key, flip_key = jax.random.split(rng)
    offsets = jax.random.randint(
        crop_key, (batch, 2), 0, 2 * crop_padding + 1, dtype=jnp.int32
    )
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    else:
        flips = jnp.zeros((batch,), bool)
    return offsets, flips


def _apply_augment(
    images: jax.Array, offsets: jax.Array, flips: jax.Array, crop_padding: int
) -> jax.Array:
    """Crops each padded image at ``offsets[i] = (row, col)``, then flips it.

    Args:
      images: (batch, height, width, channels).
      offsets: int (batch, 2), each in [0, 2 * crop_padding].
      flips: bool (batch,), True mirrors the width axis.
      crop_padding: zero padding added on each side before cropping (static).

    Returns:
      An array with the shape and dtype of ``images``.
    """
    _, height, width, channels = images.shape
    pad = crop_padding
    if pad:
        images = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image, offset, flip):
        if pad:
            start = (offset[0], offset[1], jnp.zeros((), offset.dtype))
            image = lax.dynamic_slice(image, start, (height, width, channels))
        return jnp.where(flip, image[:, ::-1, :], image)

    return jax.vmap(one)(images, offsets, flips)


def epoch_batches(rng: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """The example indices of one epoch, shuffled and cut into full batches.

    Args:
      rng: a PRNG key; the same key gives the same order.
      num_examples: N, the number of training examples.
      batch_size: B, 1 <= B <= N.

    Returns:
      int32 array of shape (N // B, B): ``jax.random.permutation(rng, N)`` with
      the last N mod B indices dropped, so every batch has the same shape.
    """
    if int(num_examples) != num_examples or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples}")
    if int(batch_size) != batch_size or not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"batch_size must be an integer in [1, num_examples={num_examples}], "
            f"got {batch_size!r}"
        )
    return _permuted_batches(rng, int(num_examples), int(batch_size))


def sharded_epoch_batches(
    rng: jax.Array, shard_size: int, num_shards: int, batch_size: int
) -> np.ndarray:
    """One epoch's batches when the training set is split over devices.

    Device d holds ``shard_size`` rows; it shuffles them with its own key
    ``fold_in(rng, d)`` and cuts them into batches of B / D (D = num_shards).
    Column block d of the result (columns d B/D .. (d+1) B/D - 1) holds device
    d's local row indices, so a global batch takes B/D examples from every
    device (see ``make_train_chunk(sharded_data=True)``). Every process
    computes the same array.

    Args:
      rng: a PRNG key; the same key gives the same order.
      shard_size: rows per device, >= B / D.
      num_shards: D, the number of devices along the data axis.
      batch_size: B, the global batch size, a multiple of D.

    Returns:
      int32 NumPy array of shape (S, B), S = shard_size // (B / D).
    """
    if int(num_shards) != num_shards or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards}")
    if int(batch_size) != batch_size or batch_size < 1 or batch_size % num_shards:
        raise ValueError(
            f"batch_size must be a positive multiple of the number of devices "
            f"({num_shards}) when the data is sharded, got {batch_size!r}"
        )
    per_shard = batch_size // num_shards
    if int(shard_size) != shard_size or shard_size < per_shard:
        raise ValueError(
            f"shard_size must be an integer >= batch_size / devices = {per_shard}, "
            f"got {shard_size!r}"
        )
    cols = [
        np.asarray(
            _permuted_batches(jax.random.fold_in(rng, d), int(shard_size), per_shard)
        )
        for d in range(num_shards)
    ]
    return np.concatenate(cols, axis=1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _permuted_batches(rng: jax.Array, num_examples: int, batch_size: int):
    """One compiled program per (num_examples, batch_size)."""
    steps = num_examples // batch_size
    order = jax.random.permutation(rng, num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def eval_subset(ds: Dataset, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed subset of the test split, e.g. for per-epoch nHSIC evaluation.

    The subset depends only on (the test split, ``size``, ``seed``): every call
    returns the same examples, in test-set order.

    Args:
      ds: the dataset.
      size: number of examples (>= 1). If it is at least the test-set size, the
        whole test set is returned.
      seed: seed of the NumPy generator that picks the examples.

    Returns:
      (images uint8 (size, H, W, C), labels int32 (size,)).
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    total = ds.test_labels.shape[0]
    if size >= total:
        return ds.test_images, ds.test_labels
    picked = np.random.default_rng(seed).choice(total, size=int(size), replace=False)
    picked = np.sort(picked)
    return ds.test_images[picked], ds.test_labels[picked]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (the MNIST format), gzipped or not.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a byte with the number of
    dimensions, each dimension as a big-endian uint32, then the values in
    big-endian row-major order. Gzip is detected from the content.

    Args:
      path: the file.

    Returns:
      The array, in native byte order, with the stored shape.

    Raises:
      ValueError: the content is not a well-formed IDX file.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"path={os.fspath(path)!r} is not an IDX file: magic bytes "
            f"{raw[:4].hex()} (expected 0000 then a type code in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)} and the number of dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"path={os.fspath(path)!r} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"path={os.fspath(path)!r} holds {len(raw)} bytes but its header "
            f"(type {dtype}, shape {shape}) implies {expected}"
        )
    values = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _check_labels(labels: np.ndarray, num_classes: int, field: str) -> None:
    """Raises ValueError unless every label lies in [0, num_classes)."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{field} must lie in [0, num_classes={num_classes}), found values in "
            f"[{labels.min()}, {labels.max()}]"
        )


def shard_rows(num_examples: int, index: int, count: int) -> slice:
    """Rows of shard ``index`` of ``count`` equal contiguous shards of N rows."""
    size = num_examples // count
    if size < 1:
        raise ValueError(
            f"train_shard count={count} exceeds the {num_examples} training examples"
        )
    return slice(index * size, (index + 1) * size)


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """(channels, 256) int64 counts of each uint8 pixel value per channel."""
    return np.stack(
        [
            np.bincount(images[..., c].ravel(), minlength=256)
            for c in range(images.shape[-1])
        ]
    ).astype(np.int64)


def stats_from_histogram(
    counts: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units from (channels, 256) counts.

    A channel with zero spread gets std 1.
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for row in np.asarray(counts):
        p = row / row.sum()
        mean = float(p @ levels)
        std = float(np.sqrt(max(p @ (levels - mean) ** 2, 0.0)))
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


def has_known_stats(name: str, channels: int) -> bool:
    """Whether ``name`` uses fixed constants of :data:`KNOWN_STATS`."""
    base = name.split(":")[0].split("/")[0]
    return base in KNOWN_STATS and len(KNOWN_STATS[base][0]) == channels


def _normalization_stats(
    name: str, train_images: np.ndarray
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Known constants for ``name``, else the exact training-pixel statistics.

    The computed statistics come from a 256-bin histogram per channel, so they
    are exact and need no float copy of the images.
    """
    if has_known_stats(name, train_images.shape[-1]):
        return KNOWN_STATS[name.split(":")[0].split("/")[0]]
    return stats_from_histogram(pixel_histogram(train_images))


def _resolve_num_classes(found: int, num_classes: int | None, name: str) -> int:
    if num_classes is not None and num_classes != found:
        raise ValueError(
            f"num_classes={num_classes} does not match dataset {name!r}, which has "
            f"{found} classes; leave num_classes unset"
        )
    return found


def _load_digits(name: str, num_classes: int | None):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    train, test = _stratified_split(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    classes = _resolve_num_classes(10, num_classes, name)
    arrays = (images[train], labels[train], images[test], labels[test])
    return name, arrays, classes


def _stratified_split(
    labels: np.ndarray, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices (sorted) with class proportions kept.

    Each class gives ``floor(n_c * test_size / n)`` test examples; the leftover
    test slots go to the classes with the largest fractional parts (ties to the
    smaller class id). Within a class the examples are drawn at random.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * test_size / labels.size
    per_class = np.floor(quota).astype(np.int64)
    leftover = test_size - int(per_class.sum())
    per_class[np.argsort(-(quota - per_class), kind="stable")[:leftover]] += 1
    test = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[:k]
            for c, k in zip(classes, per_class, strict=True)
        ]
    )
    is_test = np.zeros(labels.size, bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _load_idx(name: str, data_dir: str | os.PathLike | None, num_classes: int | None):
    how = (
        "Prepare it with `apt-get install dataset-fashion-mnist` (Fashion-MNIST "
        "in /usr/share/datasets/fashion-mnist) or download the 4 IDX files "
        f"{sorted(IDX_FILES.values())} (each may be .gz) into one folder."
    )
    if data_dir is None or not os.path.isdir(data_dir):
        raise DataUnavailableError(
            f"data_dir={None if data_dir is None else os.fspath(data_dir)!r} is not "
            f"a folder of IDX files. {how}"
        )
    paths, missing = {}, []
    for field, base in IDX_FILES.items():
        for candidate in (base, base + ".gz"):
            path = os.path.join(data_dir, candidate)
            if os.path.isfile(path):
                paths[field] = path
                break
        else:
            missing.append(base)
    if missing:
        raise DataUnavailableError(
            f"data_dir={os.fspath(data_dir)!r} lacks {missing} (nor .gz). {how}"
        )
    arrays = []
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"])
        labels = read_idx(paths[f"{split}_labels"])
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"{paths[f'{split}_images']!r} must hold uint8 images of shape "
                f"(N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(
                f"{paths[f'{split}_labels']!r} must hold integer labels of shape "
                f"(N,), got {labels.dtype} {labels.shape}"
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{split} split of data_dir={os.fspath(data_dir)!r} has "
                f"{images.shape[0]} images but {labels.shape[0]} labels"
            )
        if images.ndim == 3:
            images = images[..., None]
        arrays += [images, labels.astype(np.int32)]
    if num_classes is None:
        num_classes = int(max(arrays[1].max(initial=0), arrays[3].max(initial=0))) + 1
    return name, tuple(arrays), num_classes


def _load_tfds(
    name: str,
    data_dir: str | os.PathLike | None,
    num_classes: int | None,
    download: bool,
    train_shard: tuple[int, int] | None = None,
):
    if not name:
        raise ValueError(
            "name must be a TFDS dataset name (e.g. 'mnist', 'cifar10') when "
            "source='tfds', got ''"
        )
    import tensorflow_datasets as tfds

    data_dir = None if data_dir is None else os.fspath(os.path.expanduser(data_dir))
    where = "TFDS's default data_dir" if data_dir is None else f"data_dir={data_dir!r}"
    how = (
        f"Prepare it on a machine with internet (and TensorFlow) with `tfds build "
        f"{name} --data_dir=DIR --file_format=array_record`, then copy DIR/{name} "
        f"into {where}; or pass download=True where TFDS can download."
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(f"name={name!r} is not a known TFDS dataset: {err}") from err
    try:
        train_source, test_source = tfds.data_source(
            name, split=["train", "test"], data_dir=data_dir, download=download
        )
    except (NotImplementedError, ValueError, OSError, KeyError) as err:
        raise DataUnavailableError(
            f"TFDS dataset {name!r} (splits 'train' and 'test', array_record) is "
            f"not prepared in {where} and download={download}. {how} (TFDS said: "
            f"{type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from err
    info = builder.info
    keys = info.supervised_keys
    if not (
        isinstance(keys, tuple)
        and len(keys) == 2
        and all(isinstance(k, str) for k in keys)
    ):
        keys = ("image", "label")
    image_key, label_key = keys
    label_feature = info.features[label_key]
    found = getattr(label_feature, "num_classes", None)
    if found is None:
        raise ValueError(
            f"TFDS dataset {name!r} has no class-label feature {label_key!r}; "
            "only image-classification datasets are supported"
        )
    classes = _resolve_num_classes(int(found), num_classes, name)
    arrays = []
    for split, source in (("train", train_source), ("test", test_source)):
        rows = range(len(source))
        if split == "train" and train_shard is not None:
            rows = rows[shard_rows(len(source), *train_shard)]
        images, labels = _read_tfds_source(
            source, image_key, label_key, f"{name}:{split}", rows
        )
        arrays += [images, labels]
    return name, tuple(arrays), classes


def _read_tfds_source(
    source: Any, image_key: str, label_key: str, what: str, rows: range
) -> tuple[np.ndarray, np.ndarray]:
    """Reads the examples ``rows`` of a TFDS data source into (images, labels)."""
    images, labels = [], []
    # One example at a time: about as fast as batched reads (image decoding
    # dominates, ~0.3 ms per 28x28 image), and it also works on mocked sources.
    for index in rows:
        example = source[index]
        images.append(np.asarray(example[image_key]))
        labels.append(int(example[label_key]))
    shapes = {im.shape for im in images}
    if len(shapes) > 1 or (images and images[0].dtype != np.uint8):
        raise ValueError(
            f"{what}: images must all be uint8 with one shape (resize them first), "
            f"got shapes {sorted(shapes)[:5]} and dtype {images[0].dtype}"
        )
    stacked = np.stack(images) if images else np.zeros((0, 1, 1, 1), np.uint8)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return stacked, np.asarray(labels, np.int32)


def _make_synthetic(
    shape: Sequence[int], size: Sequence[int], num_classes: int | None, seed: int
):
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"synthetic_shape must be (height, width, channels) of positive "
            f"integers, got {shape}"
        )
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"synthetic_size must be (train, test) positive counts, got {tuple(size)}"
        )
    classes = 10 if num_classes is None else int(num_classes)
    pixels = int(np.prod(shape))
    if not 2 <= classes <= pixels:
        raise ValueError(
            f"num_classes must be in [2, {pixels}] (the pixels of synthetic_shape="
            f"{shape}) for synthetic data, got {num_classes}"
        )
    rng = np.random.default_rng(seed)
    # Class k owns a fixed random group of pixels; the label is the brightest
    # group (a linear argmax), so the task is learnable but not trivial.
    group = np.empty(pixels, np.int64)
    group[rng.permutation(pixels)] = np.arange(pixels) % classes
    one_hot = np.eye(classes)[group] / np.bincount(group, minlength=classes)
    arrays = []
    for count in size:
        images = rng.integers(0, 256, (int(count), *shape), dtype=np.uint8)
        scores = images.reshape(int(count), pixels).astype(np.float64) @ one_hot
        arrays += [images, np.argmax(scores, axis=1).astype(np.int32)]
    return tuple(arrays), classes
