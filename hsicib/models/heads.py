"""Auxiliary heads, linear probes, the final classifier and their pooling.

Every block of a :class:`~hsicib.models.base.BlockNet` owns three readers:

* a *local head* that turns the block output into what its local loss needs
  (class logits for ``"ce"``, an embedding for ``"supcon"``, similarity
  features for ``"sim"``);
* a *linear probe* on the detached output, which measures linear separability
  in every training mode;
* and, after the last block only, the final classifier.

Heads and probes read the block output after adaptive average pooling that
brings a ``(H, W, C)`` map down to at most ``max_features`` values, the recipe
of Nøkland & Eidnes (2019), "Training Neural Networks with Local Error
Signals" (ICML), which Sakamoto & Sato reuse.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

#: Allowed values of ``local_loss`` (the kind of head output).
HEAD_OUTPUTS = ("ce", "sim", "supcon")
#: Allowed values of ``head`` (the head architecture).
HEAD_TYPES = ("linear", "mlp")


def head_pool_shape(height: int, width: int, channels: int, max_features: int):
    """Output grid of the adaptive average pooling in front of a head.

    The pooling kernel doubles, alternately along the height and the width,
    until ``H' * W' * C <= max_features``, with ``H' = ceil(H / k_h)`` and
    ``W' = ceil(W / k_w)``; this is the smallest such pooling in the order of
    Nøkland & Eidnes (2019). If even a 1 x 1 grid has more than
    ``max_features`` values (``C > max_features``) the grid is 1 x 1.

    Args:
      height: feature-map height H.
      width: feature-map width W.
      channels: number of channels C.
      max_features: the bound on ``H' * W' * C``.

    Returns:
      ``(H', W')``, Python ints.
    """
    kh = kw = 1
    out_h, out_w = height, width
    while out_h * out_w * channels > max_features and (out_h > 1 or out_w > 1):
        if out_h > 1:
            kh *= 2
            out_h = math.ceil(height / kh)
        if out_h * out_w * channels > max_features and out_w > 1:
            kw *= 2
            out_w = math.ceil(width / kw)
    return out_h, out_w


def _pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) averaging matrix of 1-D adaptive average pooling.

    Output cell i averages inputs ``floor(i n / m) .. ceil((i + 1) n / m) - 1``
    (n = size_in, m = size_out), the convention of PyTorch's AdaptiveAvgPool.
    """
    mat = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


def adaptive_avg_pool(x: Array, out_hw: tuple[int, int]) -> Array:
    """Adaptive average pooling of an NHWC map to a fixed grid.

    Args:
      x: array (batch, height, width, channels).
      out_hw: the output grid ``(H', W')``; each must be between 1 and the
        input size.

    Returns:
      Array (batch, H', W', channels): each output cell is the mean of its
      input window (windows as in :func:`_pool_matrix`), computed as two small
      matrix products.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (4 dimensions), got shape {x.shape}")
    _, height, width, _ = x.shape
    out_h, out_w = out_hw
    if not (1 <= out_h <= height and 1 <= out_w <= width):
        raise ValueError(
            f"out_hw must lie between (1, 1) and {(height, width)}, got {out_hw}"
        )
    if (out_h, out_w) == (height, width):
        return x
    ph = jnp.asarray(_pool_matrix(height, out_h), x.dtype)
    pw = jnp.asarray(_pool_matrix(width, out_w), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", ph, x, pw)


def pool_for_head(h: Array, max_features: int) -> Array:
    """Flattened head input: pooled maps, fully connected features as they are.

    Args:
      h: block output, (batch, height, width, channels) or (batch, features).
      max_features: bound on the flattened size of a pooled map (2048 in the
        Nøkland & Eidnes recipe); fully connected features are never pooled.

    Returns:
      Array (batch, D) with ``D <= max_features`` for maps (unless the channel
      count alone exceeds it; then D = channels after global pooling).
    """
    if h.ndim == 4:
        _, height, width, channels = h.shape
        grid = head_pool_shape(height, width, channels, max_features)
        h = adaptive_avg_pool(h, grid)
    return h.reshape(h.shape[0], -1)


class LocalHead(nn.Module):
    """The auxiliary head of one block: maps its output to its local-loss input.

    * ``local_loss="ce"``: pooled features -> logits (batch, num_classes).
    * ``local_loss="supcon"``: pooled features -> embedding (batch, proj_dim),
      *not* L2-normalized (``hsicib.losses.supcon`` normalizes).
    * ``head="linear"`` is one Dense layer; ``head="mlp"`` is
      Dense(head_hidden) + ReLU + Dense.
    * ``local_loss="sim"`` (similarity matching, Nøkland & Eidnes 2019): for a
      map, a 3x3 convolution with as many output channels as inputs (no bias;
      a per-channel bias cannot change a spatial standard deviation), then the
      per-channel spatial standard deviation ``sqrt(var + 1e-8)`` -> (batch,
      C) (the small constant keeps the gradient finite on a constant channel);
      a 1 x 1 map is flattened instead. For fully connected features, a Dense
      projection of the same width (no bias) -> (batch, D). ``head`` and the
      pooling do not apply to this head, whose form the recipe fixes.

    Outputs are float32 whatever the compute dtype.
    """

    local_loss: str
    head: str
    num_classes: int
    head_hidden: int = 512
    proj_dim: int = 128
    max_features: int = 2048
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        if self.local_loss == "sim":
            return self._similarity_features(h).astype(jnp.float32)
        out_dim = self.num_classes if self.local_loss == "ce" else self.proj_dim
        z = pool_for_head(h, self.max_features)
        if self.head == "mlp":
            z = nn.relu(nn.Dense(self.head_hidden, dtype=self.dtype, name="hidden")(z))
        z = nn.Dense(out_dim, dtype=self.dtype, name="out")(z)
        return z.astype(jnp.float32)

    def _similarity_features(self, h: Array) -> Array:
        if h.ndim == 4:
            channels = h.shape[-1]
            z = nn.Conv(
                channels,
                (3, 3),
                padding="SAME",
                use_bias=False,
                dtype=self.dtype,
                name="proj",
            )(h)
            if h.shape[1] * h.shape[2] == 1:
                return z.reshape(z.shape[0], -1)
            z = z.astype(jnp.float32)
            return jnp.sqrt(jnp.var(z, axis=(1, 2)) + 1e-8)
        z = h.reshape(h.shape[0], -1)
        return nn.Dense(z.shape[-1], use_bias=False, dtype=self.dtype, name="proj")(z)


class LinearProbe(nn.Module):
    """Dense(num_classes) on the pooled block output (the caller detaches it)."""

    num_classes: int
    max_features: int = 2048
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        z = pool_for_head(h, self.max_features)
        z = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(z)
        return z.astype(jnp.float32)


class Classifier(nn.Module):
    """Final classifier: global average pooling of a map, then Dense(num_classes).

    Fully connected inputs (batch, D) go straight to the Dense layer. Global
    pooling (rather than flattening) keeps the classifier small on any input
    size; every network here except the ResNets ends with a fully connected
    block, so only the ResNets pool.
    """

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        if h.ndim == 4:
            h = jnp.mean(h, axis=(1, 2))
        h = h.reshape(h.shape[0], -1)
        z = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(h)
        return z.astype(jnp.float32)
