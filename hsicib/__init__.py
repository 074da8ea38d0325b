"""hsicib: end-to-end vs layer-wise training, seen through normalized HSIC.

Subpackages and modules:

* ``hsicib.hsic``: standalone kernel-dependence statistics (Gram matrices, HSIC,
  normalized HSIC, CKA), all layers in one compiled call.
* ``hsicib.models``: block-structured Flax networks with auxiliary heads.
* ``hsicib.losses``: local losses and the nHSIC regularizer.
* ``hsicib.training``: one pure train step; gradient routing for every mode.
* ``hsicib.infoplane``: per-layer nHSIC tracking and linear separability.
* ``hsicib.data``: datasets as device arrays; augmentation inside jit.
* ``hsicib.checkpoint``: orbax checkpoints, restore-or-initialize.
"""

__version__ = "0.1.0"
