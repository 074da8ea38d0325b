"""Multilayer perceptron: every hidden layer is a block.

The input (any shape after the batch axis) is flattened by the first block.
"""

from collections.abc import Sequence

from hsicib.models.blocks import BlockSpec

DEFAULT_HIDDEN = (256, 256, 256)


def scale_width(width: int, width_mult: float) -> int:
    """``max(1, round(width * width_mult))``: the width of a scaled layer."""
    return max(1, round(width * width_mult))


def mlp_blocks(
    hidden: Sequence[int] = DEFAULT_HIDDEN, width_mult: float = 1.0
) -> tuple[BlockSpec, ...]:
    """Blocks of an MLP: ``fc1 .. fcN``, Dense + [BatchNorm] + ReLU each.

    Args:
      hidden: hidden widths, one block each (at least one).
      width_mult: multiplies every width.

    Returns:
      The block specs.
    """
    hidden = tuple(hidden)
    if not hidden or any(int(w) < 1 for w in hidden):
        raise ValueError(
            f"hidden must be a non-empty tuple of widths >= 1, got {hidden}"
        )
    return tuple(
        BlockSpec("dense", scale_width(int(w), width_mult), f"fc{i + 1}")
        for i, w in enumerate(hidden)
    )
