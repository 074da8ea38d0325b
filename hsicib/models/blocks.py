"""Blocks: the units of local training and of the information-plane analysis.

A network is an ordered tuple of :class:`BlockSpec`; :func:`make_block` turns
one spec into a Flax module ``block(x, train=...) -> output``. Four kinds:

* ``"conv"``: [2x2 max pool] -> Conv(k x k) -> [BatchNorm] -> ReLU ->
  [2x2 max pool] -> [Dropout] (LeNet5 and VGG layers, the ResNet stem);
* ``"dense"``: [2x2 max pool of a map] -> flatten -> Dense -> [BatchNorm] ->
  ReLU -> [Dropout] (MLP layers, LeNet5 / VGG hidden fully connected layers);
* ``"basic"``: the ResNet BasicBlock (two 3x3 convolutions, identity or
  projection shortcut), He et al. (2016);
* ``"bottleneck"``: the ResNet Bottleneck (1x1, 3x3, 1x1 with 4x expansion).

Dropout, when enabled, is the last operation of a block, so the block output
(the T_l of the information plane, the head input, the next block's input) is
one tensor. Max pooling uses 'SAME' padding, i.e. ceil mode: a 2x2 pool of an
odd or 1-pixel-wide map keeps the last row / column, so every network runs on
8x8 inputs as well as on 28x28 and 32x32.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

BLOCK_KINDS = ("conv", "dense", "basic", "bottleneck")
PADDINGS = ("SAME", "VALID", "VALID_IF_FITS")

# He initialization (fan-in, truncated normal) for ReLU layers.
_HE = nn.initializers.he_normal()
# PyTorch's BatchNorm momentum 0.1 is Flax's 0.9.
_BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Static description of one block.

    Attributes:
      kind: one of ``BLOCK_KINDS``.
      features: output channels / units; for ``"basic"`` and ``"bottleneck"``
        the stage width (a Bottleneck outputs ``4 * features`` channels).
      label: human-readable name for reports (``"conv1"``, ``"layer2.0"``).
      kernel: convolution kernel size (``"conv"`` only).
      stride: convolution stride (``"conv"``, ``"basic"``, ``"bottleneck"``).
      padding: ``"SAME"``, ``"VALID"``, or ``"VALID_IF_FITS"``: VALID when the
        input map is at least kernel x kernel, SAME otherwise (LeNet5's conv2,
        so that the classic layout holds on 28x28 and 8x8 inputs still run).
      pool_input: 2x2 max pool (ceil mode) applied to the block's input, the
        placement of Nøkland & Eidnes' VGG, whose local losses read the
        convolution output before the pool that follows it.
      pool_output: 2x2 max pool (ceil mode) after the activation (LeNet5).
    """

    kind: str
    features: int
    label: str
    kernel: int = 3
    stride: int = 1
    padding: str = "SAME"
    pool_input: bool = False
    pool_output: bool = False

    def __post_init__(self):
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"kind must be one of {BLOCK_KINDS}, got {self.kind!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.features < 1:
            raise ValueError(f"features must be >= 1, got {self.features}")


def max_pool_ceil(x: Array) -> Array:
    """2x2 max pool, stride 2, ceil mode: (B, H, W, C) -> (B, ceil(H/2), ...)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


def _resolve_padding(padding: str, x: Array, kernel: int) -> str:
    if padding != "VALID_IF_FITS":
        return padding
    fits = x.shape[1] >= kernel and x.shape[2] >= kernel
    return "VALID" if fits else "SAME"


def _norm(x: Array, enabled: bool, train: bool, dtype: Dtype, name: str) -> Array:
    """BatchNorm (batch statistics in train mode, running ones otherwise) or identity.

    Called inside a compact method, so the BatchNorm belongs to the caller.
    """
    if not enabled:
        return x
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=_BN_MOMENTUM,
        epsilon=1e-5,
        dtype=dtype,
        name=name,
    )(x)


def _dropout(x: Array, rate: float, train: bool) -> Array:
    if rate <= 0.0:
        return x
    return nn.Dropout(rate, deterministic=not train)(x)


class ConvBlock(nn.Module):
    """[pool] -> Conv -> [BatchNorm] -> ReLU -> [pool] -> [Dropout]."""

    spec: BlockSpec
    batch_norm: bool = True
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        s = self.spec
        if x.ndim != 4:
            raise ValueError(
                f"block {s.label!r} needs NHWC input (4 dimensions), got {x.shape}"
            )
        if s.pool_input:
            x = max_pool_ceil(x)
        x = nn.Conv(
            s.features,
            (s.kernel, s.kernel),
            strides=(s.stride, s.stride),
            padding=_resolve_padding(s.padding, x, s.kernel),
            use_bias=not self.batch_norm,
            kernel_init=_HE,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = nn.relu(_norm(x, self.batch_norm, train, self.dtype, "bn"))
        if s.pool_output:
            x = max_pool_ceil(x)
        return _dropout(x, self.dropout, train)


class DenseBlock(nn.Module):
    """[pool a map] -> flatten -> Dense -> [BatchNorm] -> ReLU -> [Dropout]."""

    spec: BlockSpec
    batch_norm: bool = True
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        s = self.spec
        if s.pool_input and x.ndim == 4:
            x = max_pool_ceil(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(
            s.features,
            use_bias=not self.batch_norm,
            kernel_init=_HE,
            dtype=self.dtype,
            name="dense",
        )(x)
        x = nn.relu(_norm(x, self.batch_norm, train, self.dtype, "bn"))
        return _dropout(x, self.dropout, train)


class _ResidualBase(nn.Module):
    spec: BlockSpec
    batch_norm: bool = True
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    def _conv(self, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=((kernel // 2, kernel // 2),) * 2,
            use_bias=not self.batch_norm,
            kernel_init=_HE,
            dtype=self.dtype,
            name=name,
        )

    def _bn(self, x: Array, train: bool, name: str) -> Array:
        return _norm(x, self.batch_norm, train, self.dtype, name)

    def _shortcut(self, x: Array, out_features: int, train: bool) -> Array:
        stride = self.spec.stride
        if stride == 1 and x.shape[-1] == out_features:
            return x
        x = self._conv(out_features, 1, stride, "proj_conv")(x)
        return self._bn(x, train, "proj_bn")

    def _finish(self, y: Array, x: Array, train: bool) -> Array:
        y = nn.relu(y + self._shortcut(x, y.shape[-1], train))
        return _dropout(y, self.dropout, train)


class BasicBlock(_ResidualBase):
    """ResNet BasicBlock: relu(bn(conv3x3(relu(bn(conv3x3 s(x))))) + short(x))."""

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        f, s = self.spec.features, self.spec.stride
        y = nn.relu(self._bn(self._conv(f, 3, s, "conv1")(x), train, "bn1"))
        y = self._bn(self._conv(f, 3, 1, "conv2")(y), train, "bn2")
        return self._finish(y, x, train)


class Bottleneck(_ResidualBase):
    """ResNet Bottleneck: 1x1 (f) -> 3x3 (f, stride) -> 1x1 (4f), plus shortcut."""

    expansion: int = 4

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        f, s = self.spec.features, self.spec.stride
        y = nn.relu(self._bn(self._conv(f, 1, 1, "conv1")(x), train, "bn1"))
        y = nn.relu(self._bn(self._conv(f, 3, s, "conv2")(y), train, "bn2"))
        y = self._conv(self.expansion * f, 1, 1, "conv3")(y)
        y = self._bn(y, train, "bn3")
        return self._finish(y, x, train)


_BLOCK_CLASSES = {
    "conv": ConvBlock,
    "dense": DenseBlock,
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def make_block(
    spec: BlockSpec,
    *,
    batch_norm: bool = True,
    dropout: float = 0.0,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Module:
    """The Flax module of one block, called as ``block(x, train=bool)``.

    Args:
      spec: what the block is.
      batch_norm: BatchNorm after every convolution / dense layer (then those
        layers have no bias).
      dropout: dropout rate on the block output (train mode only; rng
        collection ``"dropout"``).
      dtype: compute dtype (parameters stay float32).
      name: module name (``"block_i"`` inside a BlockNet).

    Returns:
      An unbound Flax module. Its parameters and batch statistics are exactly
      the ``block_i`` subtrees of the BlockNet that uses the same spec, so it
      can recompute one block from a trained network's variables.
    """
    cls = _BLOCK_CLASSES[spec.kind]
    return cls(spec, batch_norm=batch_norm, dropout=dropout, dtype=dtype, name=name)
