"""Smoke test of the training benchmark (quick mode) and of its PyTorch twin."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks import bench_train
from hsicib import models


def test_count_convs_reads_dim_labels():
    text = (
        "%a = f32[1] convolution(x, y), dim_labels=b01f_01io->b01f, metadata={}\n"
        "%b = f32[1] convolution(x, y), dim_labels=f01b_i01o->01bf\n"
    )
    assert bench_train.count_convs(text) == (1, 2)


def test_quick_rows():
    """Quick mode: runner, scan and jit timings, memory, FLOPs, the torch twin."""
    has_torch = importlib.util.find_spec("torch") is not None
    rows = bench_train.run(
        ("lenet5",), ("e2e", "sequential"), quick=True, use_torch=has_torch
    )
    e2e, seq = rows
    assert (e2e.mode, seq.mode) == ("e2e", "sequential")
    for r in rows:
        assert r.jax_jit_ms > 0 and r.jax_loop_ms > 0 and r.jax_scan_ms > 0
        assert r.jax_mem > 0 and r.jax_gflop > 0
        # LeNet5 has two convolution blocks: at least their forward passes.
        assert int(r.convs.split("/")[-1]) >= 2
        if has_torch:
            assert r.torch_ms > 0 and r.torch_mem > 0
            # Both frameworks start from one set of weights: the first losses agree.
            assert r.loss_gap < 1e-5
    # Sequential stage 0 trains block 0 only: frozen blocks have no backward.
    assert seq.jax_gflop < e2e.jax_gflop
    table = bench_train.format_table(rows)
    assert table.count("| lenet5 | sequential") == 2


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="model='vgg99'"):
        bench_train.bench_model("vgg99", use_torch=False)
    with pytest.raises(ValueError, match="mode='modules:2'"):
        bench_train.bench_model("lenet5", ("modules:2",), use_torch=False)


# --------------------------------------------------------------------------- #
# PyTorch side (skipped without torch)
# --------------------------------------------------------------------------- #


def _random_variables(model, shape, seed=0):
    """He-scaled random variables of the right structure, without compiling init."""
    import jax
    import jax.numpy as jnp

    flags = {"cut_after": (False,) * model.num_blocks}
    flags["detach_head"] = (True,) * model.num_blocks
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0), jnp.zeros((2, *shape)), train=False, **flags
        )
    )
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        x = rng.normal(size=s.shape).astype(np.float32)
        if len(s.shape) >= 2:
            return x * np.sqrt(2.0 / np.prod(s.shape[:-1]))
        if "var" in name:
            return 0.5 + np.abs(x)
        return 0.1 * x

    return jax.tree_util.tree_map_with_path(leaf, shapes), flags


@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_torch_twin_matches_flax_forward(name):
    """Same weights, same input: every head, probe and the classifier agree."""
    torch = pytest.importorskip("torch")
    import jax

    from benchmarks import torch_ref

    shape = (28, 28, 1) if name == "lenet5" else (32, 32, 3)
    model = models.build_model(name, num_classes=10, width_mult=0.125)
    variables, flags = _random_variables(model, shape)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype(np.float32)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False, **flags))(variables, x)

    net = torch_ref.TorchBlockNet(models.block_specs(name, width_mult=0.125), shape, 10)
    net.load_flax(variables["params"], variables["batch_stats"])
    net.eval()
    tol = {"rtol": 1e-4, "atol": 1e-4}
    with torch.no_grad():
        h = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        for i, block in enumerate(net.blocks):
            h = block(h)
            np.testing.assert_allclose(net.heads[i](h), out.head_out[i], **tol)
            np.testing.assert_allclose(net.probes[i](h), out.probe_logits[i], **tol)
        np.testing.assert_allclose(net.classifier(h), out.logits, **tol)


def test_torch_sequential_freezes_all_but_stage():
    """Sequential stage 1: only block 1, head 1, probes and classifier move."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_ref

    torch.manual_seed(0)
    specs = models.block_specs("lenet5", width_mult=0.5)
    net = torch_ref.TorchBlockNet(specs, (28, 28, 1), 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    step = torch_ref.TorchTrainStep(
        net, "sequential", mean=(0.5,), std=(0.25,), stage=1
    )
    images = torch.randint(0, 256, (16, 28, 28, 1), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    metrics = step(images, labels)
    assert torch.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    after = net.state_dict()
    trained = ("blocks.1.", "heads.1.", "probes.", "classifier.")
    for key, value in before.items():
        if key.endswith("num_batches_tracked"):
            continue
        moves = key.startswith(trained)
        assert bool((after[key] != value).any()) == moves, key


def test_torch_step_rejects_unknown_mode():
    pytest.importorskip("torch")
    from benchmarks import torch_ref

    net = torch_ref.TorchBlockNet(models.block_specs("lenet5"), (28, 28, 1), 10)
    with pytest.raises(ValueError, match="mode='modules:2'"):
        torch_ref.TorchTrainStep(net, "modules:2", mean=(0.5,), std=(0.25,))
