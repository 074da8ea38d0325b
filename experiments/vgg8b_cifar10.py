r"""VGG8b (Nøkland & Eidnes 2019) on CIFAR-10, E2E vs layer-wise.

  python -m experiments.run --config=experiments/vgg8b_cifar10.py --workdir=runs/vgg8b

Recipe: Adam 5e-4, batch 128, 400 epochs, lr x0.2 at 200/300/350/375, flip,
dropout 0.2 (the local-loss recipe). Needs the prepared TFDS cifar10. Hardware: one
GPU; on a 2-core CPU use the :quick argument.
"""

from experiments import common


def get_config(arg=None):
    c = common.base_config()
    c.modes = ("e2e", "layerwise")
    c.data.source = "tfds"
    c.data.name = "cifar10"
    c.model.name = "vgg8b"
    c.model.dropout = 0.2
    return common.finish(c, arg)
