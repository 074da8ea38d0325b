r"""LeNet5 on MNIST (TFDS), E2E vs layer-wise, the paper's recipe.

  python -m experiments.run --config=experiments/lenet5_mnist.py --workdir=runs/lenet5_mnist

Needs the prepared TFDS mnist (``--config.data.data_dir=...``; this machine has no
internet: prepare it elsewhere with ``tfds build mnist``). Hardware: one GPU, about
1 hour per mode at 100 epochs; a 2-core CPU, about 25 s per epoch per mode.
"""

from experiments import common


def get_config(arg=None):
    c = common.base_config()
    c.modes = ("e2e", "layerwise")
    c.data.source = "tfds"
    c.data.name = "mnist"
    c.data.flip = False
    c.model.name = "lenet5"
    c.model.batch_norm = False
    c.train.epochs = 100
    c.optim.milestones = (50, 75, 88, 94)
    return common.finish(c, arg)
