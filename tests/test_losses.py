"""Local losses against slow NumPy references; the nHSIC regularizer's gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsicib import hsic, losses, models

# Jitted once per shape: far cheaper on a CPU than op-by-op dispatch.
_supcon = jax.jit(losses.supcon, static_argnames=("temperature", "base_temperature"))
_sim = jax.jit(losses.similarity_matching, static_argnums=2, static_argnames="center")


def _np_cross_entropy(logits, labels):
    total = 0.0
    for z, y in zip(logits.astype(np.float64), labels, strict=True):
        m = z.max()
        total += m + np.log(np.sum(np.exp(z - m))) - z[y]
    return total / len(labels)


def _np_cosine(x, center):
    x = x.reshape(len(x), -1).astype(np.float64)
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            a, b = x[i], x[j]
            if center:
                a, b = a - a.mean(), b - b.mean()
            den = np.linalg.norm(a) * np.linalg.norm(b)
            out[i, j] = 0.0 if den == 0 else np.clip(a @ b / den, -1, 1)
    return out


def _np_similarity_matching(h, labels, num_classes, center):
    onehot = np.eye(num_classes)[labels]
    diff = _np_cosine(h, center) - _np_cosine(onehot, center)
    return np.mean(diff**2)


def _np_supcon(emb, labels, temperature, base_temperature):
    """Loop transcription of Khosla et al.'s formula, one anchor at a time."""
    emb = emb.astype(np.float64)
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    views = len(z) // len(labels)
    lab = np.concatenate([labels] * views)
    losses_ = []
    for a in range(len(z)):
        den = sum(np.exp(z[a] @ z[k] / temperature) for k in range(len(z)) if k != a)
        positives = [p for p in range(len(z)) if p != a and lab[p] == lab[a]]
        if not positives:
            losses_.append(0.0)
            continue
        s = sum(np.log(np.exp(z[a] @ z[p] / temperature) / den) for p in positives)
        losses_.append(-(temperature / base_temperature) * s / len(positives))
    return np.mean(losses_)


def test_local_losses_names_match_model_heads():
    assert losses.LOCAL_LOSSES == models.HEAD_OUTPUTS == ("ce", "sim", "supcon")


def test_cross_entropy_and_accuracy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, size=16)
    got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, _np_cross_entropy(logits, labels), rtol=1e-5)
    acc = losses.accuracy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(acc, np.mean(logits.argmax(1) == labels))
    bf16 = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels))
    assert bf16.dtype == jnp.float32


@pytest.mark.parametrize("center", [True, False])
def test_similarity_matching_matches_numpy(center):
    rng = np.random.default_rng(1)
    h = rng.normal(size=(12, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=12)
    got = _sim(jnp.asarray(h), jnp.asarray(labels), 4, center=center)
    want = _np_similarity_matching(h, labels, 4, center)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_similarity_matching_target_and_minimum():
    labels = jnp.array([0, 1, 2, 0, 3])
    target = losses.cosine_similarity_matrix(jax.nn.one_hot(labels, 4))
    same = np.asarray(labels)[:, None] == np.asarray(labels)[None, :]
    np.testing.assert_allclose(np.asarray(target)[same], 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(target)[~same], -1 / 3, rtol=1e-6)
    # Features equal to a scaled, shifted one-hot code reach loss 0.
    h = 3.0 * jax.nn.one_hot(labels, 4) + 0.5
    assert float(losses.similarity_matching(h, labels, 4)) < 1e-10
    wrong = 3.0 * jax.nn.one_hot(jnp.array([0, 0, 1, 1, 2]), 4) + 0.5
    assert float(losses.similarity_matching(wrong, labels, 4)) > 0.1


def test_similarity_matching_constant_rows_have_finite_gradient():
    h = jnp.ones((6, 4)).at[0].set(jnp.arange(4.0))
    labels = jnp.array([0, 1, 0, 1, 2, 2])
    grad = jax.jit(jax.grad(lambda h: losses.similarity_matching(h, labels, 3)))(h)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_matches_numpy_loop(views):
    rng = np.random.default_rng(2 + views)
    labels = rng.integers(0, 3, size=6)
    emb = rng.normal(size=(views * 6, 8)).astype(np.float32)
    got = _supcon(jnp.asarray(emb), jnp.asarray(labels))
    np.testing.assert_allclose(got, _np_supcon(emb, labels, 0.1, 0.07), rtol=1e-4)
    got = _supcon(
        jnp.asarray(emb), jnp.asarray(labels), temperature=0.5, base_temperature=0.5
    )
    np.testing.assert_allclose(got, _np_supcon(emb, labels, 0.5, 0.5), rtol=1e-5)


def test_supcon_normalizes_inside_and_jits():
    rng = np.random.default_rng(5)
    labels = jnp.asarray(rng.integers(0, 4, size=8))
    emb = jnp.asarray(rng.normal(size=(16, 5)).astype(np.float32))
    scale = jnp.asarray(rng.uniform(0.5, 4.0, size=(16, 1)).astype(np.float32))
    a = _supcon(emb, labels)
    np.testing.assert_allclose(_supcon(emb * scale, labels), a, rtol=1e-5)
    grad = jax.jit(jax.grad(losses.supcon))(emb, labels)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_supcon_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="emb"):
        losses.supcon(jnp.ones((7, 3)), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="temperature"):
        losses.supcon(jnp.ones((6, 3)), jnp.zeros(3, jnp.int32), temperature=0.0)


def test_local_loss_dispatch():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 5, size=8)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    two = np.concatenate([x, x[::-1]])
    run = jax.jit(
        losses.local_loss, static_argnums=(0, 3), static_argnames="temperature"
    )
    lab = jnp.asarray(labels)
    np.testing.assert_allclose(
        run("ce", jnp.asarray(x), lab, 5), _np_cross_entropy(x, labels), rtol=1e-5
    )
    np.testing.assert_allclose(
        run("sim", jnp.asarray(x), lab, 5),
        _np_similarity_matching(x, labels, 5, center=True),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        run("supcon", jnp.asarray(two), lab, 5, temperature=0.2),
        _np_supcon(two, labels, 0.2, 0.07),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match=r"local_loss.*'ce', 'sim', 'supcon'.*'mse'"):
        losses.local_loss("mse", jnp.asarray(x), lab, 5)


def test_losses_reject_batch_mismatch():
    with pytest.raises(ValueError, match="logits"):
        losses.cross_entropy(jnp.ones((4, 3)), jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match="h must"):
        losses.similarity_matching(jnp.ones((4, 3)), jnp.zeros(5, jnp.int32), 3)


def test_nhsic_regularizer_value_and_finite_gradients():
    rng = np.random.default_rng(7)
    head = jnp.asarray(rng.normal(size=(16, 10)).astype(np.float32))
    ref = jnp.asarray(rng.normal(size=(16, 4, 4, 1)).astype(np.float32))
    reg = lambda h, r: losses.nhsic_regularizer(h, r, lam=0.3, sigma=2.0)
    got = jax.jit(reg)(head, ref)
    want = 0.3 * jax.jit(lambda h, r: hsic.nhsic(h, r, sigma=2.0))(head, ref)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isfinite(got) and float(got) > 0
    grad = jax.jit(jax.grad(reg, (0, 1)))
    g_head, g_ref = grad(head, ref)
    assert np.all(np.isfinite(g_head)) and np.any(g_head != 0)
    assert np.all(np.isfinite(g_ref))
    # A constant head output (a dead layer) still has finite gradients.
    g_const, _ = grad(jnp.zeros_like(head), ref)
    assert np.all(np.isfinite(g_const))
