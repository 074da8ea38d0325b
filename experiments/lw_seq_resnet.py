r"""ResNet-18 on CIFAR-10, sequential training, the paper's recipe.

  python -m experiments.run --config=experiments/lw_seq_resnet.py --workdir=runs/lw_seq_resnet

Recipe (paper.md): Adam 5e-4, batch 128, 400 epochs, lr x0.2 at 200/300/350/375,
horizontal flip; sequential: 50 epochs per block at constant lr. Needs the prepared
TFDS cifar10 (--config.data.data_dir=...). Hardware: one GPU; the full recipe is
not timed here (see the README's accelerator table for images/s). On a 2-core CPU
use the :quick argument (about a minute).
"""

from experiments import _resnet, common


def get_config(arg=None):
    return common.finish(_resnet.resnet18_cifar10("sequential"), arg)
