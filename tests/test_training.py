"""Gradient routing: each mode cuts exactly where it says, and nowhere else."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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
