"""Local losses of layer-wise training and the optional nHSIC regularizer.

Pure, jit-safe functions of arrays; every loss is a float32 scalar mean over
the batch, whatever the input dtype.

* :func:`cross_entropy`: softmax cross-entropy on integer labels;
* :func:`similarity_matching`: the "sim" loss of Nøkland & Eidnes (2019);
* :func:`supcon`: supervised contrastive loss, Khosla et al. (2020);
* :func:`local_loss`: dispatch by name (``LOCAL_LOSSES``);
* :func:`nhsic_regularizer`: lambda * nHSIC(head output, reference), which
  the training subtracts from a local loss (Sakamoto & Sato 2024).

References:
  Nøkland & Eidnes, "Training Neural Networks with Local Error Signals", ICML
  2019. Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
"""

import jax
import jax.numpy as jnp
import optax

from hsicib import hsic

Array = jax.Array

LOCAL_LOSSES = ("ce", "sim", "supcon")

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_batch(name: str, x: Array, labels: Array) -> None:
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (batch,), got shape {labels.shape}")
    if x.ndim < 1 or x.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name} must have the labels' batch size {labels.shape[0]} on axis 0, "
            f"got shape {x.shape}"
        )


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy with integer labels.

    loss = mean_i [ logsumexp_c(z_ic) - z_{i, y_i} ].

    Args:
      logits: (batch, num_classes), any float dtype (computed in float32).
      labels: (batch,) integers in [0, num_classes).

    Returns:
      Scalar float32.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, num_classes), got {logits.shape}")
    _check_batch("logits", logits, labels)
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    )
    return jnp.mean(per_example)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of rows whose arg-max equals the label.

    Args:
      logits: (batch, num_classes).
      labels: (batch,) integers.

    Returns:
      Scalar float32 in [0, 1].
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, num_classes), got {logits.shape}")
    _check_batch("logits", logits, labels)
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def cosine_similarity_matrix(x: Array, *, center: bool = True) -> Array:
    """S(x): cosine similarities between the rows of x.

    Rows are flattened; with ``center`` each row first loses its own mean
    (x_i <- x_i - mean_k x_ik, as in Nøkland & Eidnes); then
    S_ij = <x_i, x_j> / (|x_i| |x_j|), clipped to [-1, 1]. A zero row (e.g. a
    constant row after centering) has zero similarity to everything, and a
    finite gradient: norms are computed as sqrt(max(|x_i|^2, 1e-16)).

    Args:
      x: (batch, ...) features.
      center: subtract each row's mean first.

    Returns:
      (batch, batch) float32.
    """
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    if center:
        x = x - jnp.mean(x, axis=1, keepdims=True)
    sq = jnp.sum(x * x, axis=1, keepdims=True)
    xn = x * jax.lax.rsqrt(jnp.maximum(sq, 1e-16))
    return jnp.clip(jnp.matmul(xn, xn.T, precision=_HIGHEST), -1.0, 1.0)


def similarity_matching(
    h: Array, labels: Array, num_classes: int, *, center: bool = True
) -> Array:
    """Similarity-matching loss ("sim") of Nøkland & Eidnes (2019).

    loss = mean_{i,j} (S(h)_ij - S(onehot(y))_ij)^2, with S from
    :func:`cosine_similarity_matrix` applied to both sides. With ``center``
    (the default, as in Nøkland & Eidnes' code) the target is 1 for a pair of
    the same class and -1 / (C - 1) otherwise (the cosine of two centered
    one-hot vectors of C classes); with ``center=False`` it is 1 and 0.

    Args:
      h: (batch, ...) similarity features (a "sim" head's output).
      labels: (batch,) integers in [0, num_classes).
      num_classes: C >= 2.
      center: subtract each row's mean before the cosine (both sides).

    Returns:
      Scalar float32.
    """
    _check_batch("h", h, labels)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    target = cosine_similarity_matrix(
        jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), center=center
    )
    sim = cosine_similarity_matrix(h, center=center)
    return jnp.mean(jnp.square(sim - target))


def supcon(
    emb: Array,
    labels: Array,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
) -> Array:
    """Supervised contrastive loss (Khosla et al. 2020, "L_out", all anchors).

    The V views of a batch of B examples are stacked view-major, emb =
    [view_1; view_2; ...] of shape (V B, D); rows are L2-normalized here
    (z = e / max(|e|, 1e-12)). For anchor a with positives P(a) (the other
    rows of its class, other views of itself included) and A(a) all rows but a:

      l_a = -(temperature / base_temperature) / |P(a)|
            * sum_{p in P(a)} log( exp(z_a.z_p / T) / sum_{k in A(a)} exp(z_a.z_k / T) )

    and the loss is the mean of l_a over all V B anchors, as in the authors'
    reference implementation (an anchor without positives contributes 0).

    Args:
      emb: (V * batch, D) embeddings, any float dtype (float32 inside).
      labels: (batch,) integer labels of one view.
      temperature: T > 0.
      base_temperature: > 0; only rescales the loss.

    Returns:
      Scalar float32.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (batch,), got shape {labels.shape}")
    batch = labels.shape[0]
    if emb.ndim != 2 or batch == 0 or emb.shape[0] % batch:
        raise ValueError(
            f"emb must be (views * batch, D) with batch = {batch} (the labels' "
            f"length), got shape {emb.shape}"
        )
    if not (temperature > 0 and base_temperature > 0):
        raise ValueError(
            "temperature and base_temperature must be > 0, got "
            f"{temperature!r} and {base_temperature!r}"
        )
    z = emb.astype(jnp.float32)
    z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=1, keepdims=True), 1e-24))
    n = z.shape[0]
    lab = jnp.tile(labels, n // batch)
    logits = jnp.matmul(z, z.T, precision=_HIGHEST) / temperature
    others = ~jnp.eye(n, dtype=bool)
    log_denom = jax.nn.logsumexp(logits, axis=1, b=others, keepdims=True)
    log_prob = logits - log_denom
    positive = (lab[:, None] == lab[None, :]) & others
    num_pos = jnp.sum(positive, axis=1)
    mean_log_prob = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(
        num_pos, 1
    )
    return -(temperature / base_temperature) * jnp.mean(mean_log_prob)


def local_loss(
    kind: str, head_out: Array, labels: Array, num_classes: int, **kw
) -> Array:
    """One block's local loss, by name.

    Args:
      kind: ``"ce"`` (:func:`cross_entropy` of head logits), ``"sim"``
        (:func:`similarity_matching`) or ``"supcon"`` (:func:`supcon`; then
        ``head_out`` stacks the views, (V * batch, D), and ``labels`` is one
        view's (batch,)).
      head_out: the head's output.
      labels: (batch,) integers.
      num_classes: C.
      **kw: passed to the chosen loss (``temperature``, ``base_temperature``
        for supcon; ``center`` for sim).

    Returns:
      Scalar float32.
    """
    if kind == "ce":
        return cross_entropy(head_out, labels, **kw)
    if kind == "sim":
        return similarity_matching(head_out, labels, num_classes, **kw)
    if kind == "supcon":
        return supcon(head_out, labels, **kw)
    raise ValueError(f"local_loss must be one of {LOCAL_LOSSES}, got {kind!r}")


def nhsic_regularizer(
    head_out: Array,
    reference: Array,
    *,
    lam: float,
    sigma: float = 5.0,
    eps: float = 1e-5,
) -> Array:
    """lambda * nHSIC(head output; reference), to subtract from a local loss.

    nHSIC is the NOCCO statistic tr(R_Z R_X), R = G (G + eps n I)^-1 on
    centered Gaussian Grams exp(-D / (2 sigma^2 d)) (:func:`hsicib.hsic.nhsic`).
    Subtracting it rewards a head output that keeps information about the
    model input or the block input (Sakamoto & Sato 2024).

    Args:
      head_out: (n, ...) head output.
      reference: (n, ...) model input or block input.
      lam: the weight lambda.
      sigma: Gaussian kernel width.
      eps: NOCCO regularization.

    Returns:
      Scalar float32, differentiable in both arrays.
    """
    return lam * hsic.nhsic(head_out, reference, sigma=sigma, eps=eps)
