"""LeNet5 (LeCun et al. 1998) as four blocks: conv1, conv2, fc1, fc2.

* conv1: 6 channels, 5x5, 'SAME' padding (the classic network pads a 28x28
  MNIST digit to 32x32, which is the same thing), ReLU, 2x2 max pool;
* conv2: 16 channels, 5x5, 'VALID' when its input is at least 5x5 and 'SAME'
  otherwise (so 8x8 digits run: 8 -> 4 -> 4 -> 2), ReLU, 2x2 max pool;
* fc1: 120 units; fc2: 84 units; then the final classifier.

ReLU replaces the original scaled tanh, as in modern reproductions. On 1x28x28
inputs without BatchNorm the blocks plus a 10-way classifier hold exactly the
classic 61,706 parameters:
conv1 5*5*1*6 + 6 = 156, conv2 5*5*6*16 + 16 = 2,416, fc1 400*120 + 120 =
48,120, fc2 120*84 + 84 = 10,164, classifier 84*10 + 10 = 850.
On 3x32x32 the map before fc1 is 6x6x16 (576 inputs), not 5x5x16.
"""

from hsicib.models.blocks import BlockSpec
from hsicib.models.mlp import scale_width

#: Parameters of the classic LeNet5 (blocks + 10-way classifier, 28x28 input).
CLASSIC_PARAM_COUNT = 61_706


def lenet5_blocks(width_mult: float = 1.0) -> tuple[BlockSpec, ...]:
    """Block specs of LeNet5 (widths 6, 16, 120, 84 times ``width_mult``)."""
    w = lambda c: scale_width(c, width_mult)
    return (
        BlockSpec("conv", w(6), "conv1", kernel=5, padding="SAME", pool_output=True),
        BlockSpec(
            "conv", w(16), "conv2", kernel=5, padding="VALID_IF_FITS", pool_output=True
        ),
        BlockSpec("dense", w(120), "fc1"),
        BlockSpec("dense", w(84), "fc2"),
    )
