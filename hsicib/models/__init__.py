"""Block-structured Flax networks with a local head and a linear probe per block.

Usage::

    model = build_model("vgg8b", num_classes=10, dropout=0.2)
    variables = model.init(
        {"params": key}, x, train=False,
        cut_after=(False,) * model.num_blocks,
        detach_head=(True,) * model.num_blocks,
    )
    out, updates = model.apply(
        variables, x, train=True, cut_after=..., detach_head=...,
        mutable=["batch_stats"], rngs={"dropout": key},
    )

Modules:

* ``blocks``: :class:`BlockSpec` and the block modules (conv, dense, ResNet
  BasicBlock / Bottleneck);
* ``heads``: local heads, probes, the classifier, the adaptive pooling;
* ``base``: :class:`BlockNet` and :class:`NetOutput`;
* ``mlp``, ``lenet``, ``vgg``, ``resnet``: the block layouts.
"""

import numbers
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from hsicib.models.base import BlockNet, NetOutput, check_flags
from hsicib.models.blocks import BlockSpec, make_block
from hsicib.models.heads import (
    HEAD_OUTPUTS,
    HEAD_TYPES,
    adaptive_avg_pool,
    head_pool_shape,
    pool_for_head,
)
from hsicib.models.lenet import CLASSIC_PARAM_COUNT, lenet5_blocks
from hsicib.models.mlp import DEFAULT_HIDDEN, mlp_blocks
from hsicib.models.resnet import resnet_blocks
from hsicib.models.vgg import VGG_LAYOUTS, vgg_blocks

__all__ = [
    "CLASSIC_PARAM_COUNT",
    "HEAD_OUTPUTS",
    "HEAD_TYPES",
    "MODEL_NAMES",
    "BlockNet",
    "BlockSpec",
    "NetOutput",
    "adaptive_avg_pool",
    "block_specs",
    "build_model",
    "check_flags",
    "head_pool_shape",
    "make_block",
    "pool_for_head",
]

MODEL_NAMES = (
    "mlp",
    "lenet5",
    "vgg8b",
    "vgg11b",
    "vgg11",
    "resnet18",
    "resnet34",
    "resnet50",
)


def block_specs(
    name: str, *, width_mult: float = 1.0, mlp_hidden: Sequence[int] = DEFAULT_HIDDEN
) -> tuple[BlockSpec, ...]:
    """The block layout of a named model.

    Args:
      name: one of ``MODEL_NAMES``.
      width_mult: multiplies every channel count and hidden width.
      mlp_hidden: hidden widths of ``"mlp"`` (ignored by the others).

    Returns:
      The block specs, in order.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    if name == "mlp":
        return mlp_blocks(mlp_hidden, width_mult)
    if name == "lenet5":
        return lenet5_blocks(width_mult)
    if name in VGG_LAYOUTS:
        return vgg_blocks(name, width_mult)
    return resnet_blocks(name, width_mult)


def _positive_int(field: str, value: Any, minimum: int = 1) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(f"{field} must be an int >= {minimum}, got {value!r}")
    return int(value)


def build_model(
    name: str,
    *,
    num_classes: int,
    local_loss: str = "ce",
    head: str = "linear",
    head_hidden: int = 512,
    proj_dim: int = 128,
    dropout: float = 0.0,
    batch_norm: bool = True,
    max_head_features: int = 2048,
    width_mult: float = 1.0,
    dtype: Any = jnp.float32,
    mlp_hidden: Sequence[int] = DEFAULT_HIDDEN,
) -> BlockNet:
    """Builds a named block-structured network.

    Args:
      name: one of ``MODEL_NAMES``.
      num_classes: number of classes (>= 2).
      local_loss: ``"ce"``, ``"sim"`` or ``"supcon"``; decides what the local
        heads output (see :class:`~hsicib.models.heads.LocalHead`).
      head: ``"linear"`` or ``"mlp"``.
      head_hidden: hidden width of ``"mlp"`` heads.
      proj_dim: embedding size of ``"supcon"`` heads.
      dropout: dropout rate at the end of every block, in [0, 1).
      batch_norm: BatchNorm inside the blocks.
      max_head_features: heads and probes read maps average-pooled to at most
        this many values (2048 in Nøkland & Eidnes 2019).
      width_mult: multiplies every width (e.g. 0.25 for fast tests).
      dtype: compute dtype, e.g. ``jnp.bfloat16`` (parameters stay float32).
      mlp_hidden: hidden widths of ``"mlp"`` (before ``width_mult``).

    Returns:
      An unbound :class:`BlockNet`.
    """
    blocks = block_specs(name, width_mult=width_mult, mlp_hidden=mlp_hidden)
    num_classes = _positive_int("num_classes", num_classes, 2)
    head_hidden = _positive_int("head_hidden", head_hidden)
    proj_dim = _positive_int("proj_dim", proj_dim)
    max_head_features = _positive_int("max_head_features", max_head_features)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return BlockNet(
        arch=name,
        blocks=blocks,
        num_classes=num_classes,
        local_loss=local_loss,
        head=head,
        head_hidden=head_hidden,
        proj_dim=proj_dim,
        dropout=float(dropout),
        batch_norm=bool(batch_norm),
        max_head_features=max_head_features,
        dtype=dtype,
    )
