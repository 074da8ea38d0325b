"""VGG networks: every convolution and every hidden dense layer is a block.

Layouts ("M" is a 2x2 max pool, numbers are 3x3 convolution widths):

* ``vgg8b`` (Nøkland & Eidnes 2019): 128, 256, M, 256, 512, M, 512, M, 512, M,
  fc1024 -> 7 blocks;
* ``vgg11b`` (Nøkland & Eidnes 2019): 128, 128, 128, M, 256, 256, 256, M, 512,
  512, 512, M, 512, M, fc1024 -> 11 blocks;
* ``vgg11`` (Simonyan & Zisserman 2015, configuration A): 64, M, 128, M, 256,
  256, M, 512, 512, M, 512, 512, M, fc1024 -> 9 blocks. One hidden dense layer
  of 1024 units (as in the local-learning code of Nøkland & Eidnes) replaces
  ImageNet VGG's two 4096-unit layers.

Each convolution block is Conv3x3 ('SAME') + [BatchNorm] + ReLU + [Dropout].
A pool belongs to the *next* block's input (``pool_input``), as in Nøkland &
Eidnes, whose local losses read a convolution's output before the pool that
follows it. Pools run in ceil mode, so 8x8 inputs shrink 8 -> 4 -> 2 -> 1 -> 1.
"""

from hsicib.models.blocks import BlockSpec
from hsicib.models.mlp import scale_width

VGG_LAYOUTS = {
    "vgg8b": (128, 256, "M", 256, 512, "M", 512, "M", 512, "M", "fc1024"),
    "vgg11b": (
        *(128, 128, 128, "M"),
        *(256, 256, 256, "M"),
        *(512, 512, 512, "M"),
        *(512, "M", "fc1024"),
    ),
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M", "fc1024"),
}


def vgg_blocks(name: str, width_mult: float = 1.0) -> tuple[BlockSpec, ...]:
    """Block specs of a VGG layout (every width times ``width_mult``).

    Args:
      name: a key of ``VGG_LAYOUTS``.
      width_mult: multiplies every convolution and dense width.

    Returns:
      The block specs, labelled ``conv1 .. convN, fc1 ..``.
    """
    if name not in VGG_LAYOUTS:
        raise ValueError(f"name must be one of {tuple(VGG_LAYOUTS)}, got {name!r}")
    specs, pool_pending, n_conv, n_fc = [], False, 0, 0
    for item in VGG_LAYOUTS[name]:
        if item == "M":
            pool_pending = True
            continue
        if isinstance(item, str):
            n_fc += 1
            width, kind, label = int(item[2:]), "dense", f"fc{n_fc}"
        else:
            n_conv += 1
            width, kind, label = item, "conv", f"conv{n_conv}"
        specs.append(
            BlockSpec(
                kind, scale_width(width, width_mult), label, pool_input=pool_pending
            )
        )
        pool_pending = False
    return tuple(specs)
