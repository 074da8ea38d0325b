"""ResNet-18 on CIFAR-10 with the paper's recipe (shared by the ResNet configs)."""

from experiments import common


def resnet18_cifar10(mode: str):
    c = common.base_config()
    c.modes = (mode,)
    c.data.source = "tfds"
    c.data.name = "cifar10"
    c.data.flip = True
    c.model.name = "resnet18"
    c.train.epochs = 400
    c.train.batch_size = 128
    return c
