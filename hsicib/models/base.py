"""BlockNet: a network as an ordered tuple of blocks, each with a head and a probe.

One forward pass computes everything every training mode needs; the modes
differ only in two static tuples of booleans:

* ``cut_after[i]``: ``stop_gradient`` on block i's output before it feeds
  block i + 1 (for the last block: before the final classifier);
* ``detach_head[i]``: block i's local head reads ``stop_gradient`` of the
  block output.

E2E training is ``cut_after = (False,) * L`` with ``detach_head = (True,) * L``
(the heads become probes-that-learn); simultaneous layer-wise training is
``cut_after = (True,) * L`` with ``detach_head = (False,) * L``.

Variables (top-level names; the optax masks and the batch-statistics freezing
of ``hsicib.training`` rely on them): ``params`` has ``block_0 ..
block_{L-1}``, ``head_0 .. head_{L-1}``, ``probe_0 .. probe_{L-1}`` and
``classifier``; ``batch_stats`` (when ``batch_norm``) has ``block_0 ..
block_{L-1}`` (heads, probes and classifier have no BatchNorm). Dropout draws
from the rng collection ``"dropout"``. Every head, probe and the classifier is
created on every call, so one seed gives one set of initial parameters in every
mode.
"""

from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hsicib.models.blocks import BlockSpec, make_block
from hsicib.models.heads import (
    HEAD_OUTPUTS,
    HEAD_TYPES,
    Classifier,
    LinearProbe,
    LocalHead,
)

Array = jax.Array
Dtype = Any


@flax.struct.dataclass
class NetOutput:
    """Everything one BlockNet forward pass returns (a pytree).

    Attributes:
      features: T_l, each block's output as computed (before any
        stop_gradient): (batch, H, W, C) for convolution blocks, (batch, D)
        for dense blocks.
      inputs: each block's input: x for block 0, then the tensor actually fed
        to block i (the previous output, after stop_gradient when
        ``cut_after[i - 1]``), before any pooling the block does itself.
      head_out: each local head's output, float32: logits (batch,
        num_classes) for ``"ce"``; an *unnormalized* embedding (batch,
        proj_dim) for ``"supcon"``; similarity features (batch, C) or (batch,
        D) for ``"sim"``.
      probe_logits: each block's linear probe on stop_gradient of its pooled
        output, float32 (batch, num_classes); never a path to the blocks.
      logits: the final classifier on the last block's output (after
        ``cut_after[-1]``), float32 (batch, num_classes).
    """

    features: tuple[Array, ...]
    inputs: tuple[Array, ...]
    head_out: tuple[Array, ...]
    probe_logits: tuple[Array, ...]
    logits: Array


def check_flags(name: str, flags: Sequence[bool], num_blocks: int) -> tuple[bool, ...]:
    """Validates a per-block tuple of static booleans.

    Args:
      name: the argument name, for the error message.
      flags: one Python (or NumPy) boolean per block.
      num_blocks: the expected length.

    Returns:
      The flags as a tuple of Python bools.
    """
    try:
        flags = tuple(flags)
    except TypeError:
        raise ValueError(
            f"{name} must be a tuple of {num_blocks} Python bools, got {flags!r}"
        ) from None
    if len(flags) != num_blocks:
        raise ValueError(
            f"{name} must have one bool per block ({num_blocks}), got {len(flags)}: "
            f"{flags!r}"
        )
    if any(isinstance(f, jax.Array) for f in flags):
        raise ValueError(
            f"{name} must be static Python bools (a jit static argument), got JAX "
            "arrays"
        )
    return tuple(bool(f) for f in flags)


def _stop_if(flag: bool, x: Array) -> Array:
    return jax.lax.stop_gradient(x) if flag else x


class BlockNet(nn.Module):
    """A block-structured classifier with a local head and a probe per block.

    Build one with :func:`hsicib.models.build_model`; ``num_blocks`` and
    ``block_names`` work on the unbound module.

    Attributes:
      arch: the model name (``"lenet5"``, ``"resnet18"``, ...), informative.
      blocks: the block specs, in order.
      num_classes: number of classes of the probes, the classifier and the
        ``"ce"`` heads.
      local_loss: ``"ce"``, ``"sim"`` or ``"supcon"``: what the heads output.
      head: ``"linear"`` or ``"mlp"``.
      head_hidden: hidden width of ``"mlp"`` heads.
      proj_dim: embedding size of ``"supcon"`` heads.
      dropout: dropout rate at the end of every block (train mode only).
      batch_norm: BatchNorm inside the blocks.
      max_head_features: heads and probes read feature maps average-pooled to
        at most this many values.
      dtype: compute dtype (parameters float32; head, probe and classifier
        outputs float32).
    """

    arch: str
    blocks: tuple[BlockSpec, ...]
    num_classes: int
    local_loss: str = "ce"
    head: str = "linear"
    head_hidden: int = 512
    proj_dim: int = 128
    dropout: float = 0.0
    batch_norm: bool = True
    max_head_features: int = 2048
    dtype: Dtype = jnp.float32

    def __post_init__(self):
        if not self.blocks:
            raise ValueError("blocks must hold at least one BlockSpec, got ()")
        if self.local_loss not in HEAD_OUTPUTS:
            raise ValueError(
                f"local_loss must be one of {HEAD_OUTPUTS}, got {self.local_loss!r}"
            )
        if self.head not in HEAD_TYPES:
            raise ValueError(f"head must be one of {HEAD_TYPES}, got {self.head!r}")
        super().__post_init__()

    @property
    def num_blocks(self) -> int:
        """Number of blocks L."""
        return len(self.blocks)

    @property
    def block_names(self) -> tuple[str, ...]:
        """Human-readable block labels, e.g. ``("conv1", "conv2", "fc1", "fc2")``."""
        return tuple(spec.label for spec in self.blocks)

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool,
        cut_after: Sequence[bool],
        detach_head: Sequence[bool],
    ) -> NetOutput:
        """Runs every block, head, probe and the classifier.

        Args:
          x: normalized images (batch, height, width, channels); an MLP also
            takes (batch, features).
          train: batch statistics and dropout when True (then pass
            ``mutable=["batch_stats"]`` and a ``"dropout"`` rng as needed).
          cut_after: static bools, one per block (see the module docstring).
          detach_head: static bools, one per block.

        Returns:
          A :class:`NetOutput`.
        """
        n = self.num_blocks
        cut_after = check_flags("cut_after", cut_after, n)
        detach_head = check_flags("detach_head", detach_head, n)
        if self.blocks[0].kind != "dense" and x.ndim != 4:
            raise ValueError(
                f"x must be images (batch, height, width, channels) for {self.arch}, "
                f"got shape {x.shape}"
            )
        if x.ndim < 2:
            raise ValueError(f"x must have a batch axis and features, got {x.shape}")
        h = jnp.asarray(x, self.dtype)
        features, inputs, head_out, probes = [], [], [], []
        for i, spec in enumerate(self.blocks):
            inputs.append(h)
            block = make_block(
                spec,
                batch_norm=self.batch_norm,
                dropout=self.dropout,
                dtype=self.dtype,
                name=f"block_{i}",
            )
            out = block(h, train=train)
            features.append(out)
            head_out.append(self._head(i)(_stop_if(detach_head[i], out)))
            probes.append(self._probe(i)(jax.lax.stop_gradient(out)))
            h = _stop_if(cut_after[i], out)
        logits = Classifier(self.num_classes, self.dtype, name="classifier")(h)
        return NetOutput(
            features=tuple(features),
            inputs=tuple(inputs),
            head_out=tuple(head_out),
            probe_logits=tuple(probes),
            logits=logits,
        )

    def _head(self, i: int) -> LocalHead:
        return LocalHead(
            local_loss=self.local_loss,
            head=self.head,
            num_classes=self.num_classes,
            head_hidden=self.head_hidden,
            proj_dim=self.proj_dim,
            max_features=self.max_head_features,
            dtype=self.dtype,
            name=f"head_{i}",
        )

    def _probe(self, i: int) -> LinearProbe:
        return LinearProbe(
            self.num_classes, self.max_head_features, self.dtype, name=f"probe_{i}"
        )
