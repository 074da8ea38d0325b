"""A plain PyTorch twin of hsicib's block networks and train step (benchmark only).

Synopsis
--------
:class:`TorchBlockNet` rebuilds a ``hsicib.models.BlockNet`` from its block
specs (any objects with the attributes of ``hsicib.models.BlockSpec``): the
same blocks (``conv``, ``dense``, ``basic``), the same local heads and linear
probes on adaptively average-pooled features (at most 2048 values, Nøkland &
Eidnes 2019), the same final classifier. :meth:`TorchBlockNet.load_flax` copies
a Flax parameter tree into it, so both frameworks start from identical weights
and can be checked against each other.

:class:`TorchTrainStep` is the PyTorch form of ``hsicib.training``'s step:

=============  ==================================  =============================
mode           where ``.detach()`` cuts             what is in the optimizer
=============  ==================================  =============================
``e2e``        before every probe                   blocks + probes + classifier
                                                    (final CE); heads unused
``layerwise``  after every block, before probes     every block + head (its CE),
                                                    probes, classifier
``sequential`` as layerwise                         block k + head k, probes,
                                                    classifier (``requires_grad``
                                                    False elsewhere)
=============  ==================================  =============================

The loss is ``final CE + sum(probe CE) + sum(local CE)``, one Adam step over
the trainable parameters, as in JAX. NCHW throughout; weights loaded from
Flax are permuted wherever a layer reads a flattened map (Flax flattens
H, W, C; PyTorch C, H, W).

This module imports neither JAX nor hsicib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("e2e", "layerwise", "sequential")
_BN_MOMENTUM = 0.1  # Flax's 0.9


def head_pool_shape(height: int, width: int, channels: int, max_features: int):
    """The grid of the adaptive pooling before a head (hsicib's rule).

    The kernel doubles, alternately along the height and the width, until
    ``ceil(H / k_h) * ceil(W / k_w) * C <= max_features`` or the grid is 1 x 1.

    Returns:
      ``(H', W')``.
    """
    kh = kw = 1
    out_h, out_w = height, width
    while out_h * out_w * channels > max_features and (out_h > 1 or out_w > 1):
        if out_h > 1:
            kh *= 2
            out_h = math.ceil(height / kh)
        if out_h * out_w * channels > max_features and out_w > 1:
            kw *= 2
            out_w = math.ceil(width / kw)
    return out_h, out_w


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Conv(nn.Module):
    """Conv2d with XLA's 'SAME' / 'VALID' / explicit padding."""

    def __init__(self, cin, cout, kernel, stride, padding, in_hw, bias):
        super().__init__()
        if padding == "SAME":
            ph = _same_pad(in_hw[0], kernel, stride)
            pw = _same_pad(in_hw[1], kernel, stride)
        elif padding == "VALID":
            ph = pw = (0, 0)
        else:
            ph = pw = (int(padding), int(padding))
        self.symmetric = ph[0] == ph[1] and pw[0] == pw[1]
        self.pad = (pw[0], pw[1], ph[0], ph[1])
        self.conv = nn.Conv2d(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=(ph[0], pw[0]) if self.symmetric else 0,
            bias=bias,
        )
        self.out_hw = tuple(
            (s + p[0] + p[1] - kernel) // stride + 1
            for s, p in zip(in_hw, (ph, pw), strict=True)
        )

    def forward(self, x):
        if not self.symmetric:
            x = F.pad(x, self.pad)
        return self.conv(x)


def _pool(x):
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


def _pooled_hw(hw):
    return tuple(-(-s // 2) for s in hw)


class ConvBlock(nn.Module):
    """[pool] -> Conv -> [BatchNorm] -> ReLU -> [pool]."""

    def __init__(self, spec, in_shape, batch_norm):
        super().__init__()
        cin, h, w = in_shape
        self.pool_input, self.pool_output = spec.pool_input, spec.pool_output
        hw = _pooled_hw((h, w)) if spec.pool_input else (h, w)
        padding = spec.padding
        if padding == "VALID_IF_FITS":
            padding = "VALID" if min(hw) >= spec.kernel else "SAME"
        self.conv = _Conv(
            cin, spec.features, spec.kernel, spec.stride, padding, hw, not batch_norm
        )
        hw = self.conv.out_hw
        self.bn = (
            nn.BatchNorm2d(spec.features, momentum=_BN_MOMENTUM) if batch_norm else None
        )
        hw = _pooled_hw(hw) if spec.pool_output else hw
        self.out_shape = (spec.features, *hw)

    def forward(self, x):
        if self.pool_input:
            x = _pool(x)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        x = F.relu(x)
        return _pool(x) if self.pool_output else x


class DenseBlock(nn.Module):
    """[pool a map] -> flatten (C, H, W) -> Linear -> [BatchNorm] -> ReLU."""

    def __init__(self, spec, in_shape, batch_norm):
        super().__init__()
        self.pool_input = spec.pool_input and len(in_shape) == 3
        if self.pool_input:
            in_shape = (in_shape[0], *_pooled_hw(in_shape[1:]))
        self.in_map = tuple(in_shape) if len(in_shape) == 3 else None
        self.dense = nn.Linear(
            int(np.prod(in_shape)), spec.features, bias=not batch_norm
        )
        self.bn = (
            nn.BatchNorm1d(spec.features, momentum=_BN_MOMENTUM) if batch_norm else None
        )
        self.out_shape = (spec.features,)

    def forward(self, x):
        if self.pool_input:
            x = _pool(x)
        x = self.dense(x.flatten(1))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x)


class BasicBlock(nn.Module):
    """ResNet BasicBlock: relu(bn(conv(relu(bn(conv_s(x))))) + shortcut(x))."""

    def __init__(self, spec, in_shape, batch_norm):
        super().__init__()
        cin, h, w = in_shape
        f, s = spec.features, spec.stride
        bias = not batch_norm

        def bn():
            return (
                nn.BatchNorm2d(f, momentum=_BN_MOMENTUM)
                if batch_norm
                else nn.Identity()
            )

        self.conv1 = _Conv(cin, f, 3, s, 1, (h, w), bias)
        self.bn1 = bn()
        self.conv2 = _Conv(f, f, 3, 1, 1, self.conv1.out_hw, bias)
        self.bn2 = bn()
        self.project = s != 1 or cin != f
        if self.project:
            self.proj_conv = _Conv(cin, f, 1, s, 0, (h, w), bias)
            self.proj_bn = bn()
        self.out_shape = (f, *self.conv2.out_hw)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        short = self.proj_bn(self.proj_conv(x)) if self.project else x
        return F.relu(y + short)


_BLOCKS = {"conv": ConvBlock, "dense": DenseBlock, "basic": BasicBlock}


class PooledLinear(nn.Module):
    """A linear head or probe on the adaptively pooled block output."""

    def __init__(self, in_shape, num_classes, max_features):
        super().__init__()
        if len(in_shape) == 3:
            c, h, w = in_shape
            self.grid = head_pool_shape(h, w, c, max_features)
            if self.grid == (h, w):
                self.grid = None
            self.in_map = (c, *(self.grid or (h, w)))
        else:
            self.grid, self.in_map = None, None
        features = int(np.prod(self.in_map or in_shape))
        self.out = nn.Linear(features, num_classes)

    def forward(self, x):
        if self.grid is not None:
            x = F.adaptive_avg_pool2d(x, self.grid)
        return self.out(x.flatten(1))


class Classifier(nn.Module):
    """Global average pooling of a map, then Linear(num_classes)."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.out = nn.Linear(in_shape[0], num_classes)

    def forward(self, x):
        if x.dim() == 4:
            x = x.mean(dim=(2, 3))
        return self.out(x)


class TorchBlockNet(nn.Module):
    """Blocks, one linear head and one linear probe per block, a classifier.

    Args:
      specs: block specs (``kind`` in ``conv``, ``dense``, ``basic``;
        ``features``, ``kernel``, ``stride``, ``padding``, ``pool_input``,
        ``pool_output``), e.g. ``hsicib.models.block_specs("resnet18")``.
      image_shape: (height, width, channels) of the input.
      num_classes: number of classes.
      batch_norm: BatchNorm inside the blocks.
      max_head_features: the pooling bound of heads and probes.
    """

    def __init__(
        self,
        specs: Sequence[Any],
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        batch_norm: bool = True,
        max_head_features: int = 2048,
    ):
        super().__init__()
        height, width, channels = image_shape
        shape = (channels, height, width)
        blocks, heads, probes = [], [], []
        for spec in specs:
            if spec.kind not in _BLOCKS:
                raise ValueError(
                    f"spec.kind={spec.kind!r} has no PyTorch twin here; allowed: "
                    f"{tuple(_BLOCKS)}"
                )
            block = _BLOCKS[spec.kind](spec, shape, batch_norm)
            shape = block.out_shape
            blocks.append(block)
            heads.append(PooledLinear(shape, num_classes, max_head_features))
            probes.append(PooledLinear(shape, num_classes, max_head_features))
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)
        self.probes = nn.ModuleList(probes)
        self.classifier = Classifier(shape, num_classes)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def load_flax(
        self, params: Mapping[str, Any], batch_stats: Mapping[str, Any] | None = None
    ) -> None:
        """Copies a Flax BlockNet's parameters (and batch statistics) in place.

        Args:
          params: the ``params`` tree (``block_i``, ``head_i``, ``probe_i``,
            ``classifier``), arrays of any kind ``np.asarray`` accepts.
          batch_stats: the ``batch_stats`` tree, or None.
        """
        batch_stats = batch_stats or {}
        for i, block in enumerate(self.blocks):
            p, s = params[f"block_{i}"], batch_stats.get(f"block_{i}", {})
            if isinstance(block, ConvBlock):
                _copy_conv(block.conv, p["conv"])
                _copy_bn(block.bn, p.get("bn"), s.get("bn"))
            elif isinstance(block, DenseBlock):
                _copy_linear(block.dense, p["dense"], block.in_map)
                _copy_bn(block.bn, p.get("bn"), s.get("bn"))
            else:
                for name in ("conv1", "conv2") + (
                    ("proj_conv",) if block.project else ()
                ):
                    _copy_conv(getattr(block, name), p[name])
                for name in ("bn1", "bn2") + (("proj_bn",) if block.project else ()):
                    _copy_bn(getattr(block, name), p.get(name), s.get(name))
            _copy_linear(
                self.heads[i].out, params[f"head_{i}"]["out"], self.heads[i].in_map
            )
            _copy_linear(
                self.probes[i].out, params[f"probe_{i}"]["out"], self.probes[i].in_map
            )
        _copy_linear(self.classifier.out, params["classifier"]["out"], None)


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _copy_conv(conv: _Conv, p) -> None:
    conv.conv.weight.copy_(_t(p["kernel"]).permute(3, 2, 0, 1))
    if conv.conv.bias is not None:
        conv.conv.bias.copy_(_t(p["bias"]))


def _copy_linear(linear: nn.Linear, p, in_map) -> None:
    kernel = _t(p["kernel"])  # (in, out), inputs in Flax's (H, W, C) order
    if in_map is not None:
        c, h, w = in_map
        kernel = kernel.reshape(h, w, c, -1).permute(2, 0, 1, 3).reshape(c * h * w, -1)
    linear.weight.copy_(kernel.T)
    if linear.bias is not None:
        linear.bias.copy_(_t(p["bias"]))


def _copy_bn(bn, p, s) -> None:
    if p is None or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return
    bn.weight.copy_(_t(p["scale"]))
    bn.bias.copy_(_t(p["bias"]))
    if s is not None:
        bn.running_mean.copy_(_t(s["mean"]))
        bn.running_var.copy_(_t(s["var"]))


class TorchTrainStep:
    """One Adam train step of a mode, the PyTorch form of hsicib's step.

    Args:
      net: the network (its ``requires_grad`` flags are set here).
      mode: ``"e2e"``, ``"layerwise"`` or ``"sequential"``.
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation.
      learning_rate: Adam's step size (betas 0.9, 0.999, eps 1e-8 as optax).
      stage: the trained block in sequential mode.

    Calling ``step(images, labels)`` with uint8 images (batch, H, W, C) and
    int64 labels (batch,) runs forward, backward and the Adam update and returns
    the metrics ``loss``, ``final_ce``, ``final_acc`` and ``grad_norm`` (0-d
    tensors).
    """

    def __init__(
        self,
        net: TorchBlockNet,
        mode: str,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        learning_rate: float = 5e-4,
        stage: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not known; allowed: {MODES}")
        num_blocks = net.num_blocks
        if mode == "sequential" and not 0 <= stage < num_blocks:
            raise ValueError(f"stage={stage!r} must be in [0, {num_blocks})")
        self.net, self.mode = net, mode
        e2e = mode == "e2e"
        self.cut = not e2e
        self.local = not e2e

        def trains_block(i):
            return mode != "sequential" or i == stage

        groups = [(net.probes, True), (net.classifier, True)]
        groups += [(b, trains_block(i)) for i, b in enumerate(net.blocks)]
        groups += [(h, not e2e and trains_block(i)) for i, h in enumerate(net.heads)]
        for module, on in groups:
            module.requires_grad_(on)
        # Frozen blocks still normalize with batch statistics but keep their
        # running averages, as hsicib's step does.
        for i, block in enumerate(net.blocks):
            for m in block.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = _BN_MOMENTUM if trains_block(i) else 0.0
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=learning_rate, eps=1e-8)
        channels = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
        net.train()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalized float32 NCHW."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return ((x - self.mean) / self.std).contiguous()

    def forward_loss(self, images: torch.Tensor, labels: torch.Tensor):
        """Forward pass and the total loss; returns ``(loss, final_ce, logits)``."""
        net = self.net
        h = self.prepare(images)
        probe_ce, local_ce = [], []
        for i, block in enumerate(net.blocks):
            out = block(h)
            probe_ce.append(F.cross_entropy(net.probes[i](out.detach()), labels))
            if self.local:
                local_ce.append(F.cross_entropy(net.heads[i](out), labels))
            h = out.detach() if self.cut else out
        logits = net.classifier(h)
        final_ce = F.cross_entropy(logits, labels)
        loss = final_ce + torch.stack(probe_ce).sum()
        if local_ce:
            loss = loss + torch.stack(local_ce).sum()
        return loss, final_ce, logits

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        loss, final_ce, logits = self.forward_loss(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in self.params])
        )
        self.optimizer.step()
        acc = (logits.argmax(-1) == labels).float().mean()
        return {
            "loss": loss.detach(),
            "final_ce": final_ce.detach(),
            "final_acc": acc,
            "grad_norm": grad_norm,
        }

    def resident_bytes(self, *tensors: torch.Tensor) -> int:
        """Bytes held between steps: parameters, buffers, Adam state, ``tensors``."""
        seen = {}
        state = [t for s in self.optimizer.state.values() for t in s.values()]
        for t in [*self.net.parameters(), *self.net.buffers(), *state, *tensors]:
            if isinstance(t, torch.Tensor):
                seen[t.data_ptr()] = t.numel() * t.element_size()
        return sum(seen.values())
