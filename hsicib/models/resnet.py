"""ResNets in CIFAR form: the stem and every residual block is a block.

Stem: Conv3x3(64) + [BatchNorm] + ReLU, stride 1, no max pool. Four stages of
widths 64, 128, 256, 512 with strides 1, 2, 2, 2 (He et al. 2016):

* ``resnet18``: BasicBlock x (2, 2, 2, 2) -> 1 + 8 = 9 blocks;
* ``resnet34``: BasicBlock x (3, 4, 6, 3) -> 1 + 16 = 17 blocks;
* ``resnet50``: Bottleneck x (3, 4, 6, 3), 4x expansion -> 1 + 16 = 17 blocks.

Labels follow torchvision: ``stem``, ``layer1.0``, ``layer1.1``, ...
"""

from hsicib.models.blocks import BlockSpec
from hsicib.models.mlp import scale_width

RESNET_LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)


def resnet_blocks(name: str, width_mult: float = 1.0) -> tuple[BlockSpec, ...]:
    """Block specs of a CIFAR ResNet (every width times ``width_mult``).

    Args:
      name: a key of ``RESNET_LAYOUTS``.
      width_mult: multiplies the stem and stage widths.

    Returns:
      The block specs: the stem, then one per residual block.
    """
    if name not in RESNET_LAYOUTS:
        raise ValueError(f"name must be one of {tuple(RESNET_LAYOUTS)}, got {name!r}")
    kind, depths = RESNET_LAYOUTS[name]
    specs = [BlockSpec("conv", scale_width(64, width_mult), "stem")]
    for stage, (width, stride, depth) in enumerate(
        zip(_STAGE_WIDTHS, _STAGE_STRIDES, depths, strict=True)
    ):
        for j in range(depth):
            specs.append(
                BlockSpec(
                    kind,
                    scale_width(width, width_mult),
                    f"layer{stage + 1}.{j}",
                    stride=stride if j == 0 else 1,
                )
            )
    return tuple(specs)
