r"""LeNet5 on the real Fashion-MNIST from IDX files (offline), E2E vs layer-wise.

  sudo apt-get install -y dataset-fashion-mnist
  python -m experiments.run --config=experiments/lenet5_fashion.py --workdir=runs/lenet5_fashion

Data: the Debian package dataset-fashion-mnist installs the four IDX files in
/usr/share/datasets/fashion-mnist (override with --config.data.data_dir).
Hardware: a 2-core CPU, about 15 s per epoch per mode; 20 epochs per mode.
"""

from experiments import common


def get_config(arg=None):
    c = common.base_config()
    c.modes = ("e2e", "layerwise")
    c.data.source = "idx"
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.flip = True
    c.model.name = "lenet5"
    c.model.batch_norm = False
    c.train.epochs = 20
    c.optim.lr = 1e-3
    c.optim.milestones = (12, 16)
    c.hsic.every = 2
    c.checkpoint.every_epochs = 2
    return common.finish(c, arg)
