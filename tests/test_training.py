"""Gradient routing: each mode cuts exactly where it says, and nowhere else."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hsicib import losses, models, training
from hsicib.models.blocks import make_block
from hsicib.models.heads import Classifier

NUM_CLASSES = 10
SHAPE = (8, 8, 1)


def _model(local_loss: str = "ce"):
    return models.build_model(
        "lenet5",
        num_classes=NUM_CLASSES,
        local_loss=local_loss,
        batch_norm=False,
        dropout=0.0,
    )


def _batch(n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=(n,)).astype(np.int32)
    return jnp.asarray(images), jnp.asarray(labels)


def _state(model, mode: str = "e2e", stage=None, seed: int = 0):
    schedule = training.make_schedule(
        name="constant", learning_rate=1e-2, steps_per_epoch=1, num_epochs=1
    )
    plain = training.make_optimizer(name="adam", schedule=schedule)
    state = training.init_state(model, jax.random.PRNGKey(seed), SHAPE, plain)
    mask = training.trainable_mask(state.params, mode, model.num_blocks, stage)
    tx = training.make_optimizer(name="adam", schedule=schedule, mask=mask)
    return state.replace(opt_state=tx.init(state.params)), tx, mask


def _cfg(**kw):
    return training.StepConfig(num_classes=NUM_CLASSES, mean=(0.5,), std=(0.25,), **kw)


def _step(model, mode, stage=None, **kw):
    state, tx, mask = _state(model, mode, stage)
    routing = training.make_routing(
        "layerwise" if mode == "sequential" else mode, model.num_blocks
    )
    step = jax.jit(training.make_train_step(model, routing, tx, _cfg(**kw), mask=mask))
    return state, step


# --------------------------------------------------------------------------- #
# Modes
# --------------------------------------------------------------------------- #


def test_parse_mode_and_errors():
    assert training.parse_mode("e2e", 4) == ("modules", 1)
    assert training.parse_mode("layerwise", 4) == ("modules", 4)
    assert training.parse_mode("modules:2", 4) == ("modules", 2)
    assert training.parse_mode("sequential", 4) == ("sequential", 4)
    with pytest.raises(ValueError, match=r"K=5 must be between 1 and the number"):
        training.parse_mode("modules:5", 4)
    with pytest.raises(ValueError, match="mode='greedy'"):
        training.parse_mode("greedy", 4)


def test_groups_are_contiguous_and_cover_all_blocks():
    for n in range(1, 10):
        for k in range(1, n + 1):
            groups = training.block_groups(n, k)
            assert len(groups) == k
            assert sum(groups, ()) == tuple(range(n))
            sizes = [len(g) for g in groups]
            assert max(sizes) - min(sizes) <= 1


def test_modules_1_is_e2e_and_modules_L_is_layerwise():
    for n in (1, 4, 9):
        assert training.make_routing("modules:1", n) == training.make_routing("e2e", n)
        assert training.make_routing(f"modules:{n}", n) == training.make_routing(
            "layerwise", n
        )
    e2e = training.make_routing("e2e", 4)
    assert not any(e2e.cut_after) and all(e2e.detach_head) and not any(e2e.local)
    lw = training.make_routing("layerwise", 4)
    assert all(lw.cut_after) and not any(lw.detach_head) and all(lw.local)
    m2 = training.make_routing("modules:2", 4)
    assert m2.cut_after == (False, True, False, True)
    assert m2.local == (False, True, False, True)


def test_sequential_mask_trains_one_block_and_its_head():
    model = _model()
    state, _, _ = _state(model)
    mask = training.trainable_mask(state.params, "sequential", model.num_blocks, 2)
    for name, sub in mask.items():
        leaves = jax.tree.leaves(sub)
        expect = name in ("block_2", "head_2", "classifier") or name.startswith(
            "probe_"
        )
        assert all(v is expect for v in leaves), name
    with pytest.raises(ValueError, match="stage"):
        training.trainable_mask(state.params, "sequential", model.num_blocks, None)


# --------------------------------------------------------------------------- #
# Gradients
# --------------------------------------------------------------------------- #


def _loss_terms(model, params, x, labels, routing):
    out = model.apply(
        {"params": params},
        x,
        train=False,
        cut_after=routing.cut_after,
        detach_head=routing.detach_head,
    )
    return out


def _block_grad_norms(grads, num_blocks):
    return np.array(
        [
            float(
                sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads[f"block_{j}"]))
            )
            for j in range(num_blocks)
        ]
    )


def test_layerwise_local_loss_reaches_only_its_block():
    model = _model()
    state, _, _ = _state(model)
    images, labels = _batch()
    x = (images.astype(jnp.float32) / 255.0 - 0.5) / 0.25
    routing = training.make_routing("layerwise", model.num_blocks)
    for k in range(model.num_blocks):

        def loss_k(params, k=k):
            out = _loss_terms(model, params, x, labels, routing)
            return losses.cross_entropy(out.head_out[k], labels)

        norms = _block_grad_norms(jax.grad(loss_k)(state.params), model.num_blocks)
        assert norms[k] > 0
        np.testing.assert_array_equal(np.delete(norms, k), 0.0)

    def final(params):
        out = _loss_terms(model, params, x, labels, routing)
        return losses.cross_entropy(out.logits, labels)

    np.testing.assert_array_equal(
        _block_grad_norms(jax.grad(final)(state.params), model.num_blocks), 0.0
    )


def test_e2e_backbone_gradients_equal_plain_backprop():
    """The train step's total loss (final CE + probe CEs) moves the backbone
    exactly as the final CE of the same network without heads would."""
    model = _model()
    state, _, _ = _state(model)
    images, labels = _batch()
    x = (images.astype(jnp.float32) / 255.0 - 0.5) / 0.25
    e2e = training.make_routing("e2e", model.num_blocks)

    def total(params):
        out = _loss_terms(model, params, x, labels, e2e)
        probes = sum(losses.cross_entropy(p, labels) for p in out.probe_logits)
        heads = sum(losses.cross_entropy(h, labels) for h in out.head_out)
        return losses.cross_entropy(out.logits, labels) + probes + heads

    def plain(params):
        # The same network with heads and probes removed, assembled by hand
        # from the block modules: blocks in sequence, then the classifier.
        h = x
        for j, spec in enumerate(model.blocks):
            block = make_block(spec, batch_norm=False, dropout=0.0, dtype=jnp.float32)
            h = block.apply({"params": params[f"block_{j}"]}, h, train=False)
        classifier = Classifier(NUM_CLASSES, jnp.float32)
        logits = classifier.apply({"params": params["classifier"]}, h)
        return losses.cross_entropy(logits, labels)

    g_total = jax.grad(total)(state.params)
    g_plain = jax.grad(plain)(state.params)
    for j in range(model.num_blocks):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
            g_total[f"block_{j}"],
            g_plain[f"block_{j}"],
        )


@pytest.mark.parametrize(
    ("alias", "mode"), [("modules:1", "e2e"), ("modules:4", "layerwise")]
)
def test_module_aliases_take_identical_steps(alias, mode):
    model = _model()
    images, labels = _batch()
    s1, step1 = _step(model, alias)
    s2, step2 = _step(model, mode)
    for _ in range(3):
        s1, m1 = step1(s1, images, labels)
        s2, m2 = step2(s2, images, labels)
    jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)
    np.testing.assert_array_equal(m1["loss"], m2["loss"])


def test_sequential_stage_leaves_frozen_parameters_bit_identical():
    model = _model()
    images, labels = _batch()
    state, step = _step(model, "sequential", stage=1)
    before = jax.device_get(state.params)
    for _ in range(3):
        state, _ = step(state, images, labels)
    after = jax.device_get(state.params)
    for name in before:
        same = all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True
            )
        )
        trainable = name in ("block_1", "head_1", "classifier") or name.startswith(
            "probe_"
        )
        assert same != trainable, name


def test_sequential_step_skips_the_backward_of_frozen_blocks():
    """The mask cuts frozen leaves from autodiff: fewer FLOPs, the same update."""
    model = _model()
    images, labels = _batch()
    state, tx, mask = _state(model, "sequential", 0)
    routing = training.make_routing("layerwise", model.num_blocks)
    masked = jax.jit(training.make_train_step(model, routing, tx, _cfg(), mask=mask))
    # mask=None: every gradient is computed and the masked optimizer drops the
    # frozen ones (what the step did before frozen leaves were cut).
    full = jax.jit(training.make_train_step(model, routing, tx, _cfg(), mask=None))

    def flops(fn):
        cost = fn.lower(state, images, labels).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    assert flops(masked) < 0.9 * flops(full)
    a, _ = masked(state, images, labels)
    b, _ = full(state, images, labels)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
        a.params,
        b.params,
    )


def test_same_seed_same_initial_parameters_in_every_mode():
    model = _model()
    ref, _, _ = _state(model, "e2e")
    for mode, stage in (("layerwise", None), ("modules:2", None), ("sequential", 0)):
        other, _, _ = _state(model, mode, stage)
        jax.tree.map(np.testing.assert_array_equal, ref.params, other.params)


def test_step_reports_finite_metrics_and_trains():
    model = _model()
    images, labels = _batch(64)
    for mode in ("e2e", "layerwise"):
        state, step = _step(model, mode)
        first = None
        for _ in range(30):
            state, m = step(state, images, labels)
            first = m["loss"] if first is None else first
        assert bool(m["grad_finite"]) and bool(np.all(m["block_finite"]))
        assert float(m["loss"]) < float(first)


def test_supcon_and_sim_steps_run():
    for loss in ("sim", "supcon"):
        model = _model(loss)
        images, labels = _batch()
        state, step = _step(model, "layerwise", local_loss=loss)
        state, m = step(state, images, labels)
        assert np.all(np.isfinite(np.asarray(m["local_loss"])))


def test_nhsic_regularizer_changes_the_step():
    model = _model()
    images, labels = _batch()
    s0, step0 = _step(model, "layerwise")
    s1, step1 = _step(model, "layerwise", nhsic_lambda=0.5)
    _, m0 = step0(s0, images, labels)
    _, m1 = step1(s1, images, labels)
    assert np.all(np.asarray(m1["local_loss"]) < np.asarray(m0["local_loss"]))


def test_train_chunk_compiles_once_and_matches_steps():
    model = _model()
    images, labels = _batch(64)
    state, step = _step(model, "layerwise")
    routing = training.make_routing("layerwise", model.num_blocks)
    tx = training.make_optimizer(
        name="adam",
        schedule=training.make_schedule(
            name="constant", learning_rate=1e-2, steps_per_epoch=1, num_epochs=1
        ),
        mask=training.trainable_mask(state.params, "layerwise", model.num_blocks),
    )
    traces = []
    raw = training.make_train_step(model, routing, tx, _cfg())

    def counted(s, x, y):
        traces.append(1)
        return raw(s, x, y)

    chunk = training.make_train_chunk(counted, donate=False)
    idx = jnp.arange(64, dtype=jnp.int32).reshape(4, 16)
    s_chunk, m = chunk(state, images, labels, idx)
    s_chunk, _ = chunk(s_chunk, images, labels, idx)
    assert len(traces) == 1
    assert m["loss"].shape == (4,)
    s_loop = state
    for _ in range(2):
        for row in np.asarray(idx):
            s_loop, _ = step(s_loop, images[row], labels[row])
    # XLA fuses the scanned and the single step differently; Adam's normalized
    # updates (at most lr = 1e-2 per step) turn last-bit gradient differences
    # into differences far below one step.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4),
        s_chunk.params,
        s_loop.params,
    )


# --------------------------------------------------------------------------- #
# Sequential stages with batch norm
# --------------------------------------------------------------------------- #


def _bn_sequential_step(stage: int, masked: bool = True):
    """A sequential stage's jitted step on a small MLP with BatchNorm."""
    model = models.build_model(
        "mlp", num_classes=NUM_CLASSES, batch_norm=True, width_mult=1 / 16
    )
    state, tx, mask = _state(model, "sequential", stage)
    routing = training.make_routing("layerwise", model.num_blocks)
    step = training.make_train_step(
        model, routing, tx, _cfg(), mask=mask if masked else None
    )
    return model, state, jax.jit(step)


def _bn_stats_equal(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert leaves_a and len(leaves_a) == len(leaves_b)
    return all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))


def test_sequential_stage_keeps_frozen_blocks_batch_stats_bit_identical():
    stage = 1  # frozen blocks before and after the active one
    images, labels = _batch()
    model, state, step = _bn_sequential_step(stage)
    before = jax.device_get(state.batch_stats)
    assert set(before) == {f"block_{i}" for i in range(model.num_blocks)}
    for _ in range(2):
        state, _ = step(state, images, labels)
    after = jax.device_get(state.batch_stats)
    for i in range(model.num_blocks):
        name = f"block_{i}"
        same = _bn_stats_equal(before[name], after[name])
        if i == stage:
            # The active block's running statistics move: every mean and var.
            assert not same, name
            for x, y in zip(
                jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True
            ):
                assert np.all(x != y), name
        else:
            assert same, name
    # Control: the same forward pass without the mask updates every block's
    # statistics, so the bit-identity above is _freeze_batch_stats's doing.
    _, state, unmasked = _bn_sequential_step(stage, masked=False)
    free, _ = unmasked(state, images, labels)
    free = jax.device_get(free.batch_stats)
    for i in range(model.num_blocks):
        assert not _bn_stats_equal(before[f"block_{i}"], free[f"block_{i}"]), i


# --------------------------------------------------------------------------- #
# Schedules
# --------------------------------------------------------------------------- #


def test_multistep_schedule_is_the_papers_recipe():
    """5e-4, x0.2 from epochs 200, 300, 350 and 375 on, of 400 (base config)."""
    from hsicib import config as config_lib

    c = config_lib.base_config()
    spe = 7
    schedule = training.make_schedule(
        name=c.optim.schedule,
        learning_rate=c.optim.lr,
        steps_per_epoch=spe,
        num_epochs=c.train.epochs,
        milestones=c.optim.milestones,
        gamma=c.optim.gamma,
    )
    assert (c.optim.lr, c.optim.gamma, c.train.epochs) == (5e-4, 0.2, 400)
    assert tuple(c.optim.milestones) == (200, 300, 350, 375)
    expected_after = [1e-4, 2e-5, 4e-6, 8e-7]
    lr_before = 5e-4
    for milestone, lr_after in zip(c.optim.milestones, expected_after, strict=True):
        first = milestone * spe  # the first step of epoch index `milestone`
        np.testing.assert_allclose(float(schedule(first - 1)), lr_before, rtol=1e-6)
        np.testing.assert_allclose(float(schedule(first)), lr_after, rtol=1e-6)
        lr_before = lr_after
    # Every step against the obvious rule: lr x gamma per milestone passed.
    steps = np.arange(c.train.epochs * spe + 5)
    epoch = steps // spe
    passed = sum((epoch >= m).astype(int) for m in c.optim.milestones)
    np.testing.assert_allclose(
        np.asarray(schedule(jnp.asarray(steps))), 5e-4 * 0.2**passed, rtol=1e-6
    )
    # Milestones outside (0, num_epochs) change nothing.
    same = training.make_schedule(
        name="multistep",
        learning_rate=1.0,
        steps_per_epoch=2,
        num_epochs=10,
        milestones=(0, 10, 12),
    )
    np.testing.assert_array_equal(np.asarray(same(jnp.arange(30))), 1.0)


@pytest.mark.parametrize("warmup_epochs", [0, 2])
def test_cosine_schedule_matches_the_closed_form(warmup_epochs):
    lr, spe, epochs = 0.3, 5, 8
    schedule = training.make_schedule(
        name="cosine",
        learning_rate=lr,
        steps_per_epoch=spe,
        num_epochs=epochs,
        warmup_epochs=warmup_epochs,
    )
    total, warm = epochs * spe, warmup_epochs * spe
    for t in range(total + 3):
        if t < warm:
            expect = lr * t / warm  # linear warm-up from 0
        elif t <= total:
            expect = 0.5 * lr * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
        else:
            expect = 0.0
        np.testing.assert_allclose(float(schedule(t)), expect, rtol=1e-5, atol=1e-7)
    assert float(schedule(warm)) == pytest.approx(lr)
    assert float(schedule(total)) == pytest.approx(0.0, abs=1e-8)


def test_constant_schedule_and_bad_schedules():
    s = training.make_schedule(
        name="constant", learning_rate=0.05, steps_per_epoch=3, num_epochs=2
    )
    np.testing.assert_allclose(np.asarray(s(jnp.arange(20))), 0.05, rtol=1e-7)
    with pytest.raises(ValueError, match=re.escape("optim.schedule='step'")):
        training.make_schedule(
            name="step", learning_rate=0.1, steps_per_epoch=1, num_epochs=1
        )
    with pytest.raises(ValueError, match=re.escape("optim.lr=0")):
        training.make_schedule(
            name="constant", learning_rate=0, steps_per_epoch=1, num_epochs=1
        )


# --------------------------------------------------------------------------- #
# Optimizers against hand-written NumPy updates
# --------------------------------------------------------------------------- #


def _constant_lr(lr: float):
    return training.make_schedule(
        name="constant", learning_rate=lr, steps_per_epoch=1, num_epochs=1
    )


def _tiny_tree(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "block_0": {
            "kernel": rng.normal(size=(3, 2)).astype(np.float32),
            "bias": rng.normal(size=(2,)).astype(np.float32),
        },
        "classifier": {"kernel": rng.normal(size=(2, 4)).astype(np.float32)},
    }


def _grads(num_steps: int, seed: int = 1):
    return [_tiny_tree(seed + t) for t in range(num_steps)]


def _run_optax(tx, params, grads):
    """Applies ``tx`` to the given gradients; returns params after each step."""
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    out = []
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
        out.append(jax.device_get(params))
    return out, state


def _numpy_sgd(params, grads, lrs, *, momentum, nesterov, weight_decay):
    """PyTorch's SGD: g += wd p; buf = m buf + g; step = g + m buf (Nesterov)."""
    p = {k: {n: v.astype(np.float64) for n, v in d.items()} for k, d in params.items()}
    buf = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in p.items()}
    out = []
    for g_tree, lr in zip(grads, lrs, strict=True):
        for k in p:
            for n in p[k]:
                g = g_tree[k][n].astype(np.float64) + weight_decay * p[k][n]
                if momentum:
                    buf[k][n] = momentum * buf[k][n] + g
                    d = g + momentum * buf[k][n] if nesterov else buf[k][n]
                else:
                    d = g
                p[k][n] = p[k][n] - lr * d
        out.append({k: dict(d) for k, d in p.items()})
    return out


def _numpy_adam(params, grads, lr, *, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
    """Adam with coupled L2 (PyTorch's torch.optim.Adam(weight_decay=wd))."""
    p = {k: {n: v.astype(np.float64) for n, v in d.items()} for k, d in params.items()}
    m = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in p.items()}
    v = {k: {n: np.zeros_like(x) for n, x in d.items()} for k, d in p.items()}
    out = []
    for t, g_tree in enumerate(grads, start=1):
        for k in p:
            for n in p[k]:
                g = g_tree[k][n].astype(np.float64) + weight_decay * p[k][n]
                m[k][n] = b1 * m[k][n] + (1 - b1) * g
                v[k][n] = b2 * v[k][n] + (1 - b2) * g * g
                m_hat = m[k][n] / (1 - b1**t)
                v_hat = v[k][n] / (1 - b2**t)
                p[k][n] = p[k][n] - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append({k: dict(d) for k, d in p.items()})
    return out


def _assert_trees_close(got, want, rtol=2e-6, atol=1e-7):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), got, want
    )


@pytest.mark.parametrize(
    ("momentum", "nesterov", "weight_decay"),
    [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.8, True, 0.05)],
)
def test_sgd_matches_a_numpy_update(momentum, nesterov, weight_decay):
    # lr 0.1 for two epochs of one step, then x0.5: the schedule reaches SGD.
    schedule = training.make_schedule(
        name="multistep",
        learning_rate=0.1,
        steps_per_epoch=1,
        num_epochs=5,
        milestones=(2,),
        gamma=0.5,
    )
    tx = training.make_optimizer(
        name="sgd",
        schedule=schedule,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )
    params, grads = _tiny_tree(), _grads(3)
    got, _ = _run_optax(tx, params, grads)
    want = _numpy_sgd(
        params,
        grads,
        [0.1, 0.1, 0.05],
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )
    for a, b in zip(got, want, strict=True):
        _assert_trees_close(a, b)


def test_nesterov_and_momentum_differ_from_plain_sgd():
    """Guards the references above: the three variants are not the same update."""
    schedule = _constant_lr(0.1)
    params, grads = _tiny_tree(), _grads(3)
    finals = []
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True)):
        tx = training.make_optimizer(
            name="sgd", schedule=schedule, momentum=momentum, nesterov=nesterov
        )
        got, _ = _run_optax(tx, params, grads)
        finals.append(np.concatenate([x.ravel() for x in jax.tree.leaves(got[-1])]))
    for i in range(3):
        for j in range(i):
            assert np.max(np.abs(finals[i] - finals[j])) > 1e-3


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_a_numpy_update(weight_decay):
    tx = training.make_optimizer(
        name="adam", schedule=_constant_lr(1e-2), weight_decay=weight_decay
    )
    params, grads = _tiny_tree(), _grads(3)
    got, _ = _run_optax(tx, params, grads)
    want = _numpy_adam(params, grads, 1e-2, weight_decay=weight_decay)
    for a, b in zip(got, want, strict=True):
        _assert_trees_close(a, b, rtol=1e-5, atol=1e-6)


def test_weight_decay_is_coupled_l2_added_to_the_gradient():
    """wd adds wd * params to the gradient: with zero gradients plain SGD shrinks
    every parameter by (1 - lr wd); Adam's decay goes through its normalization
    (coupled, unlike AdamW), so its first step is lr * sign(params)."""
    params = _tiny_tree()
    zeros = [jax.tree.map(np.zeros_like, params)] * 2
    lr, wd = 0.1, 0.5
    sgd = training.make_optimizer(
        name="sgd", schedule=_constant_lr(lr), momentum=0.0, weight_decay=wd
    )
    got, _ = _run_optax(sgd, params, zeros)
    for t, step_params in enumerate(got, start=1):
        _assert_trees_close(
            step_params, jax.tree.map(lambda p, t=t: p * (1 - lr * wd) ** t, params)
        )
    adam = training.make_optimizer(
        name="adam", schedule=_constant_lr(1e-3), weight_decay=wd
    )
    got, _ = _run_optax(adam, params, zeros[:1])
    _assert_trees_close(
        got[0], jax.tree.map(lambda p: p - 1e-3 * np.sign(p), params), rtol=1e-5
    )
    # Without weight decay, zero gradients move nothing.
    plain = training.make_optimizer(name="sgd", schedule=_constant_lr(lr))
    got, _ = _run_optax(plain, params, zeros)
    jax.tree.map(np.testing.assert_array_equal, got[-1], params)
    with pytest.raises(ValueError, match=re.escape("optim.weight_decay=-0.1")):
        training.make_optimizer(
            name="sgd", schedule=_constant_lr(lr), weight_decay=-0.1
        )
    with pytest.raises(ValueError, match=re.escape("optim.name='rmsprop'")):
        training.make_optimizer(name="rmsprop", schedule=_constant_lr(lr))


def _param_tree_nodes(opt_state, params):
    """Every node of the optimizer state shaped like the parameter tree."""
    treedef = jax.tree.structure(params)
    found = []

    def visit(node):
        if jax.tree.structure(node) == treedef:
            found.append(node)
        return node

    jax.tree.map(visit, opt_state, is_leaf=lambda n: jax.tree.structure(n) == treedef)
    return found


@pytest.mark.parametrize(
    ("name", "nesterov"), [("adam", False), ("sgd", False), ("sgd", True)]
)
def test_masked_leaf_gets_zero_updates_and_keeps_its_optimizer_state(name, nesterov):
    params = jax.tree.map(jnp.asarray, _tiny_tree())
    kw = {
        "name": name,
        "schedule": _constant_lr(0.05),
        "momentum": 0.9,
        "nesterov": nesterov,
        "weight_decay": 0.1,  # would move a frozen leaf even at zero gradient
    }
    plain = training.make_optimizer(**kw)
    # One unmasked step first, so that every moment / trace is non-zero.
    g0, g1 = _grads(2)
    _, state = plain.update(jax.tree.map(jnp.asarray, g0), plain.init(params), params)
    mask = {
        "block_0": {"kernel": False, "bias": True},
        "classifier": {"kernel": True},
    }
    masked = training.make_optimizer(**kw, mask=mask)
    assert jax.tree.structure(masked.init(params)) == jax.tree.structure(state)
    g1 = jax.tree.map(jnp.asarray, g1)
    updates, new_state = masked.update(g1, state, params)
    ref_updates, ref_state = plain.update(g1, state, params)
    frozen = ("block_0", "kernel")
    assert np.all(np.asarray(updates["block_0"]["kernel"]) == 0.0)
    new_params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(
        new_params["block_0"]["kernel"], params["block_0"]["kernel"]
    )
    # Trainable leaves take exactly the unmasked optimizer's update.
    for path in (("block_0", "bias"), ("classifier", "kernel")):
        np.testing.assert_array_equal(
            updates[path[0]][path[1]], ref_updates[path[0]][path[1]]
        )
        assert np.any(np.asarray(updates[path[0]][path[1]]) != 0.0)
    old_nodes = _param_tree_nodes(state, params)
    new_nodes = _param_tree_nodes(new_state, params)
    ref_nodes = _param_tree_nodes(ref_state, params)
    assert old_nodes and len(old_nodes) == len(new_nodes) == len(ref_nodes)
    for old, new, ref in zip(old_nodes, new_nodes, ref_nodes, strict=True):
        a, b = old[frozen[0]][frozen[1]], new[frozen[0]][frozen[1]]
        assert np.any(np.asarray(a) != 0.0)  # the state really held something
        np.testing.assert_array_equal(a, b)  # ... and kept it
        for path in (("block_0", "bias"), ("classifier", "kernel")):
            np.testing.assert_array_equal(new[path[0]][path[1]], ref[path[0]][path[1]])
            assert not np.array_equal(old[path[0]][path[1]], new[path[0]][path[1]])


# --------------------------------------------------------------------------- #
# Data order in the runner
# --------------------------------------------------------------------------- #


def _order_config(seed: int):
    from hsicib import config as config_lib

    c = config_lib.base_config()
    c.seed = seed
    c.data.source = "synthetic"
    c.data.name = "synthetic"
    c.data.synthetic_shape = (4, 4, 1)
    c.data.synthetic_size = (100, 20)  # 100 // 16 = 6 batches, 4 rows dropped
    c.data.flip = False
    c.model.name = "mlp"
    c.model.batch_norm = False
    c.model.width_mult = 1 / 32
    c.train.batch_size = 16
    c.train.steps_per_call = 4  # chunks of 4 and 2 steps per epoch
    c.train.sequential_stage_epochs = 1
    c.train.epochs = 3  # = 3 blocks x 1 stage epoch, so every mode runs 3 epochs
    c.train.eval_batch_size = 20
    c.train.log_every_s = 1e9
    c.optim.milestones = ()
    c.hsic.enabled = False
    c.hsic.every = 3
    c.checkpoint.every_epochs = 3
    return c


def _runner_batches(tmp_path, monkeypatch, mode: str, seed: int) -> np.ndarray:
    """The batch indices the runner hands the train chunks: (epochs, steps, B).

    The chunks only record their indices and return the state unchanged, with
    metrics of the real step's shapes (traced, not compiled): the data order is
    the runner's, whatever the step would compute.
    """
    from hsicib import experiment

    seen = []

    def recording(step_fn, **kw):
        def run(state, images, labels, batch_idx):
            idx = np.asarray(batch_idx)
            seen.append(idx)
            _, shapes = jax.eval_shape(step_fn, state, images[idx[0]], labels[idx[0]])
            fill = lambda s: (np.ones if s.dtype == bool else np.zeros)(
                (len(idx), *s.shape), s.dtype
            )
            return state, jax.tree.map(fill, shapes)

        return run

    monkeypatch.setattr(training, "make_train_chunk", recording)
    c = _order_config(seed)
    ds = experiment.load_data(c)
    run_dir = tmp_path / f"{experiment.mode_dir(mode)}_{seed}"
    summary = experiment.train_mode(c, mode, run_dir, ds)
    assert summary["epochs"] == 3 and summary["steps"] == 18, summary
    assert [len(i) for i in seen] == [4, 2] * 3
    return np.concatenate(seen).reshape(3, 6, 16)


def test_same_seed_gives_the_same_data_order_in_every_mode(tmp_path, monkeypatch):
    orders = {
        mode: _runner_batches(tmp_path, monkeypatch, mode, seed=0)
        for mode in ("e2e", "layerwise", "modules:2", "sequential")
    }
    ref = orders["e2e"]
    for mode, order in orders.items():
        np.testing.assert_array_equal(order, ref, err_msg=mode)
    for epoch in range(3):
        flat = ref[epoch].ravel()
        # A shuffle of 96 distinct examples of the 100.
        assert len(np.unique(flat)) == 96 and flat.min() >= 0 and flat.max() < 100
        assert not np.array_equal(flat, np.sort(flat))
    # Every epoch has its own order ...
    assert not np.array_equal(ref[0], ref[1])
    assert not np.array_equal(ref[1], ref[2])
    # ... and another seed another one.
    other = _runner_batches(tmp_path, monkeypatch, "e2e", seed=1)
    for epoch in range(3):
        assert not np.array_equal(other[epoch], ref[epoch]), epoch
