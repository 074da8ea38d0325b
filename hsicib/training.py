"""Gradient routing, optimizers and the one pure train step for every mode.

Synopsis
--------
All training modes share one architecture, one initialization, one data order and
one schedule. They differ only in

(a) where ``stop_gradient`` cuts the forward pass (:class:`Routing`), and
(b) which parameters the optimizer lets move (a static boolean tree,
    :func:`trainable_mask`).

=============  ================================  ==================================
mode           stop_gradient                      what moves
=============  ================================  ==================================
``e2e``        before every auxiliary head        backbone + classifier (final CE);
                                                  probes on detached features
``layerwise``  after every block, before the      each block + its head by the
               classifier and before the heads    head's local loss; classifier on
               of non-trained heads               detached features
``modules:K``  between K contiguous groups        each group by the local loss of
                                                  the head on its last block
``sequential`` as layerwise                       stage k: block k + head k only
=============  ================================  ==================================

``modules:1`` is ``e2e`` and ``modules:L`` (L blocks) is ``layerwise``, by
construction: :func:`make_routing` derives both from the same group rule. For
K > 1 every group, the last included, is trained by the local loss of the head
on its last block and the final classifier learns on detached features (the
paper's layer-wise recipe); for K = 1 the single group is trained by the final
classifier's cross-entropy and every head is a probe.

Every block also has a linear *probe* that always sees detached features and
always trains with cross-entropy: its accuracy is the block's linear
separability, in every mode, at no cost to the routing.

The train step ``step(state, images, labels) -> (state, metrics)`` is pure
(:func:`make_train_step`); :func:`make_train_chunk` runs it over a chunk of
batches (one jitted call per step, or one ``lax.scan``) so that the host
synchronizes once per chunk, not once per step.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hsicib import data as data_lib
from hsicib import losses

Array = jax.Array
PyTree = Any

MODE_NAMES = ("e2e", "layerwise", "modules:K", "sequential")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("multistep", "cosine", "constant")


# --------------------------------------------------------------------------- #
# Modes and routing
# --------------------------------------------------------------------------- #


def parse_mode(mode: str, num_blocks: int) -> tuple[str, int]:
    """Parses a mode name into ``(kind, K)``.

    Args:
      mode: ``"e2e"``, ``"layerwise"``, ``"sequential"`` or ``"modules:K"``.
      num_blocks: number of blocks L of the network.

    Returns:
      ``(kind, K)`` where kind is ``"modules"`` or ``"sequential"`` and K is the
      number of gradient-isolated groups (``e2e`` -> 1, ``layerwise`` -> L).

    Raises:
      ValueError: unknown mode, or K outside [1, L].
    """
    if mode == "e2e":
        return "modules", 1
    if mode == "layerwise":
        return "modules", num_blocks
    if mode == "sequential":
        return "sequential", num_blocks
    match = re.fullmatch(r"modules:(\d+)", mode)
    if match is None:
        raise ValueError(
            f"mode={mode!r} is not a known training mode; allowed: e2e, layerwise, "
            "sequential, modules:K with 1 <= K <= number of blocks"
        )
    k = int(match.group(1))
    if not 1 <= k <= num_blocks:
        raise ValueError(
            f"mode={mode!r}: K={k} must be between 1 and the number of blocks "
            f"({num_blocks})"
        )
    return "modules", k


def block_groups(num_blocks: int, k: int) -> tuple[tuple[int, ...], ...]:
    """Splits blocks ``0..L-1`` into K contiguous groups, sizes differing by <= 1.

    Earlier groups get the extra block, as ``np.array_split`` does.
    """
    return tuple(tuple(int(i) for i in g) for g in np.array_split(range(num_blocks), k))


@dataclasses.dataclass(frozen=True)
class Routing:
    """Where gradients stop and which heads carry a local loss (all static).

    Attributes:
      cut_after: length L; True stops the gradient of block i's output before it
        feeds block i + 1 (for the last block: before the final classifier).
      detach_head: length L; True feeds head i with detached features.
      local: length L; True if head i's local loss trains block i's group.
      classifier_trains_backbone: whether the final cross-entropy reaches blocks.
    """

    cut_after: tuple[bool, ...]
    detach_head: tuple[bool, ...]
    local: tuple[bool, ...]

    @property
    def classifier_trains_backbone(self) -> bool:
        return not self.cut_after[-1]


def make_routing(mode: str, num_blocks: int) -> Routing:
    """The routing of a mode (see the module docstring for the table)."""
    _, k = parse_mode(mode, num_blocks)
    groups = block_groups(num_blocks, k)
    ends = {g[-1] for g in groups}
    if k == 1:
        return Routing(
            cut_after=(False,) * num_blocks,
            detach_head=(True,) * num_blocks,
            local=(False,) * num_blocks,
        )
    return Routing(
        cut_after=tuple(i in ends for i in range(num_blocks)),
        detach_head=tuple(i not in ends for i in range(num_blocks)),
        local=tuple(i in ends for i in range(num_blocks)),
    )


def _constant_tree(tree: PyTree, value: bool) -> PyTree:
    return jax.tree.map(lambda _: value, tree)


def trainable_mask(
    params: PyTree, mode: str, num_blocks: int, stage: int | None = None
) -> PyTree:
    """A static tree of Python booleans, True where the optimizer may move a leaf.

    Probes and the classifier always train (they learn on detached features or,
    in E2E, the classifier is the output layer). Blocks train unless a sequential
    stage freezes them; a head trains only when it carries a local loss.

    Args:
      params: the parameter tree with top-level keys ``block_i``, ``head_i``,
        ``probe_i`` and ``classifier``.
      mode: training mode.
      num_blocks: L.
      stage: the active block in sequential mode (required there, else ignored).

    Returns:
      A tree with the structure of ``params`` and Python ``bool`` leaves.
    """
    kind, _ = parse_mode(mode, num_blocks)
    routing = make_routing("layerwise" if kind == "sequential" else mode, num_blocks)
    if kind == "sequential" and (stage is None or not 0 <= stage < num_blocks):
        raise ValueError(
            f"stage={stage!r}: sequential mode needs a stage in [0, {num_blocks})"
        )

    def top_level(name: str) -> bool:
        if name == "classifier" or name.startswith("probe_"):
            return True
        index = int(name.rsplit("_", 1)[1])
        if kind == "sequential" and index != stage:
            return False
        if name.startswith("block_"):
            return True
        if name.startswith("head_"):
            return routing.local[index]
        raise ValueError(f"unexpected parameter group {name!r}")

    return {name: _constant_tree(sub, top_level(name)) for name, sub in params.items()}


# --------------------------------------------------------------------------- #
# Optimizer
# --------------------------------------------------------------------------- #


def make_schedule(
    *,
    name: str,
    learning_rate: float,
    steps_per_epoch: int,
    num_epochs: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.2,
    warmup_epochs: int = 0,
) -> optax.Schedule:
    """Learning-rate schedule over steps, configured in epochs.

    ``multistep``: lr x gamma at every milestone epoch (the paper's recipe:
    5e-4, x0.2 at 200, 300, 350, 375 of 400). ``cosine``: cosine decay to 0 over
    the run after an optional linear warm-up. ``constant``: lr.
    """
    if name not in SCHEDULES:
        raise ValueError(f"optim.schedule={name!r} is not known; allowed: {SCHEDULES}")
    if learning_rate <= 0:
        raise ValueError(f"optim.lr={learning_rate} must be > 0")
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name == "multistep":
        return optax.piecewise_constant_schedule(
            learning_rate,
            {int(m) * steps_per_epoch: gamma for m in milestones if 0 < m < num_epochs},
        )
    total = max(num_epochs * steps_per_epoch, 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_epochs else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup_epochs * steps_per_epoch,
        decay_steps=total,
    )


def freeze(
    tx: optax.GradientTransformation, mask: PyTree
) -> optax.GradientTransformation:
    """Wraps ``tx`` so that leaves whose ``mask`` entry is False never move.

    Frozen leaves get exactly zero gradients in and zero updates out, so their
    values stay bit-identical, and every part of the optimizer state that
    mirrors the parameter tree (Adam's moments, SGD's momentum) keeps its old
    value at frozen leaves. The state has the same structure whatever the mask,
    so one checkpoint template serves every sequential stage.

    Args:
      tx: the optimizer.
      mask: a tree with the structure of the parameters and Python ``bool``
        leaves (static: it is baked into the compiled step).
    """
    treedef = jax.tree.structure(mask)

    def select(new, old):
        return jax.tree.map(lambda keep, a, b: a if keep else b, mask, new, old)

    def keep_frozen_state(new_state, old_state):
        def is_param_tree(node):
            return jax.tree.structure(node) == treedef

        def pick(new, old):
            return select(new, old) if is_param_tree(new) else new

        return jax.tree.map(pick, new_state, old_state, is_leaf=is_param_tree)

    def init_fn(params):
        return tx.init(params)

    def update_fn(updates, state, params=None):
        zeros = jax.tree.map(jnp.zeros_like, updates)
        updates = select(updates, zeros)
        new_updates, new_state = tx.update(updates, state, params)
        new_updates = select(new_updates, jax.tree.map(jnp.zeros_like, new_updates))
        return new_updates, keep_frozen_state(new_state, state)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    *,
    name: str,
    schedule: optax.Schedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    mask: PyTree | None = None,
) -> optax.GradientTransformation:
    """Adam or SGD with coupled L2 weight decay; frozen leaves held still.

    ``weight_decay`` adds ``wd * params`` to the gradient (the PyTorch
    convention for both Adam and SGD, which the paper's recipe uses with
    wd = 0). Leaves whose ``mask`` entry is False are held by :func:`freeze`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r} is not known; allowed: {OPTIMIZERS}")
    if weight_decay < 0:
        raise ValueError(f"optim.weight_decay={weight_decay} must be >= 0")
    if name == "adam":
        base = optax.adam(schedule)
    else:
        base = optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov)
    tx = (
        optax.chain(optax.add_decayed_weights(weight_decay), base)
        if weight_decay
        else base
    )
    return tx if mask is None else freeze(tx, mask)


# --------------------------------------------------------------------------- #
# State and step
# --------------------------------------------------------------------------- #


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: a pytree, checkpointed as is."""

    step: Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rng: Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable)."""

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    local_loss: str = "ce"
    crop_padding: int = 0
    flip: bool = False
    supcon_temperature: float = 0.1
    supcon_base_temperature: float = 0.07
    nhsic_lambda: float = 0.0
    nhsic_reference: str = "input"
    nhsic_sigma: float = 5.0
    compute_dtype: Any = jnp.float32


def init_state(
    model, rng: Array, image_shape: tuple[int, ...], tx: optax.GradientTransformation
) -> TrainState:
    """Initial state from ``rng``: identical parameters for every mode.

    The parameters are drawn with JAX's ``rbg`` generator (XLA's
    RngBitGenerator) seeded from ``rng``, inside one jitted ``model.init``:
    threefry-based initializers take XLA half a minute (LeNet5) to minutes
    (ResNet) to compile on a CPU, rbg a few seconds. The same ``rng`` gives the
    same parameters on the same backend. ``state.rng`` (augmentation, dropout)
    stays threefry, whose streams do not depend on how a batch is sharded.
    """
    init_rng, state_rng = jax.random.split(rng)
    init_key = jax.random.wrap_key_data(jnp.tile(init_rng, 2), impl="rbg")
    num_blocks = model.num_blocks

    @jax.jit
    def init(key):
        return model.init(
            {"params": key, "dropout": key},
            jnp.zeros((2, *image_shape), jnp.float32),
            train=False,
            cut_after=(False,) * num_blocks,
            detach_head=(True,) * num_blocks,
        )

    variables = init(init_key)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=state_rng,
    )


def _freeze_batch_stats(new: PyTree, old: PyTree, mask: PyTree | None) -> PyTree:
    """Keeps the running statistics of frozen blocks (sequential stages)."""
    if mask is None:
        return new
    out = {}
    for name, sub in new.items():
        group_mask = mask.get(name)
        keep_new = group_mask is None or any(jax.tree.leaves(group_mask))
        out[name] = sub if keep_new else old[name]
    return out


def make_train_step(
    model,
    routing: Routing,
    tx: optax.GradientTransformation,
    cfg: StepConfig,
    mask: PyTree | None = None,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, dict[str, Array]]]:
    """Builds the pure train step of one mode (not jitted; see the chunk runner).

    Args:
      model: a ``hsicib.models.BlockNet``.
      routing: from :func:`make_routing`.
      tx: the optimizer (already masked).
      cfg: static step settings.
      mask: the trainable mask: frozen leaves are cut from autodiff
        (``stop_gradient``, zero gradient, no backward pass) and frozen
        blocks keep their batch statistics.

    Returns:
      ``step(state, images, labels) -> (state, metrics)``: ``images`` uint8
      (B, H, W, C), ``labels`` int (B,). Metrics: ``loss`` (total), ``final_ce``,
      ``final_acc``, ``local_loss`` (L,) (NaN where a block has no local loss),
      ``probe_loss`` (L,), ``grad_norm``, ``grad_finite`` and ``block_finite``
      (L,), whether each block's loss and gradients are finite.
    """
    num_blocks = model.num_blocks
    two_views = cfg.local_loss == "supcon"

    def prepare(rng: Array, images: Array) -> Array:
        views = [images, images] if two_views else [images]
        keys = jax.random.split(rng, len(views))
        out = [
            data_lib.augment(k, v, crop_padding=cfg.crop_padding, flip=cfg.flip)
            for k, v in zip(keys, views, strict=True)
        ]
        x = jnp.concatenate(out, axis=0) if two_views else out[0]
        return data_lib.normalize(x, cfg.mean, cfg.std).astype(cfg.compute_dtype)

    def loss_fn(params, batch_stats, x, labels, dropout_rng):
        if mask is not None:
            # Frozen leaves get no gradient at all (not one computed and then
            # discarded by the optimizer), so XLA drops their backward pass:
            # a sequential stage costs about one block's backward, not all.
            params = jax.tree.map(
                lambda keep, p: p if keep else jax.lax.stop_gradient(p), mask, params
            )
        out, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            cut_after=routing.cut_after,
            detach_head=routing.detach_head,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        labels_all = jnp.tile(labels, 2) if two_views else labels
        final_ce = losses.cross_entropy(out.logits.astype(jnp.float32), labels_all)
        probe = jnp.stack(
            [
                losses.cross_entropy(p.astype(jnp.float32), labels_all)
                for p in out.probe_logits
            ]
        )
        local = []
        for i in range(num_blocks):
            if not routing.local[i]:
                local.append(jnp.full((), jnp.nan))
                continue
            head = out.head_out[i].astype(jnp.float32)
            value = (
                losses.local_loss(
                    cfg.local_loss,
                    head,
                    labels,
                    cfg.num_classes,
                    temperature=cfg.supcon_temperature,
                    base_temperature=cfg.supcon_base_temperature,
                )
                if cfg.local_loss == "supcon"
                else losses.local_loss(
                    cfg.local_loss, head, labels_all, cfg.num_classes
                )
            )
            if cfg.nhsic_lambda:
                ref = x if cfg.nhsic_reference == "input" else out.inputs[i]
                value = value - losses.nhsic_regularizer(
                    head,
                    ref.astype(jnp.float32),
                    lam=cfg.nhsic_lambda,
                    sigma=cfg.nhsic_sigma,
                )
            local.append(value)
        # NaN marks a block without a local loss in the metrics only; the sum
        # selects the real ones by the static routing, so a local loss that
        # goes NaN itself reaches the total (and the non-finite check).
        total = final_ce + jnp.sum(probe)
        for i in range(num_blocks):
            if routing.local[i]:
                total = total + local[i]
        local = jnp.stack(local)
        aux = {
            "batch_stats": updates.get("batch_stats", batch_stats),
            "final_ce": final_ce,
            "final_acc": losses.accuracy(out.logits, labels_all),
            "local_loss": local,
            "probe_loss": probe,
        }
        return total, aux

    def step(state: TrainState, images: Array, labels: Array):
        rng = jax.random.fold_in(state.rng, state.step)
        aug_rng, dropout_rng = jax.random.split(rng)
        x = prepare(aug_rng, images)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, labels, dropout_rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        batch_stats = _freeze_batch_stats(aux["batch_stats"], state.batch_stats, mask)
        block_grad_finite = jnp.stack(
            [
                jnp.all(
                    jnp.stack(
                        [
                            jnp.all(jnp.isfinite(g))
                            for g in jax.tree.leaves(grads[f"block_{i}"])
                        ]
                    )
                )
                for i in range(num_blocks)
            ]
        )
        has_local = np.asarray(routing.local, dtype=bool)  # static
        block_loss = jnp.where(has_local, aux["local_loss"], aux["probe_loss"])
        metrics = {
            "loss": loss,
            "final_ce": aux["final_ce"],
            "final_acc": aux["final_acc"],
            "local_loss": aux["local_loss"],
            "probe_loss": aux["probe_loss"],
            "grad_norm": optax.global_norm(grads),
            "block_finite": block_grad_finite & jnp.isfinite(block_loss),
            "grad_finite": jnp.isfinite(optax.global_norm(grads)) & jnp.isfinite(loss),
        }
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        return new_state, metrics

    return step


LOOPS = ("python", "scan")


def make_train_chunk(
    step_fn,
    *,
    donate: bool = True,
    mesh=None,
    sharded_data: bool = False,
    loop: str = "python",
):
    """Runs the step over a chunk of S batches.

    Returns ``chunk(state, images, labels, batch_idx) -> (state, metrics)`` where
    ``images`` (N, H, W, C) uint8 and ``labels`` (N,) are the whole training set
    on device and ``batch_idx`` (S, B) int32 the indices of S batches; metrics
    are stacked along a leading axis of length S. Nothing waits on the device
    inside a chunk: the caller syncs once per chunk when it reads the metrics.

    ``loop="python"`` (default) dispatches one jitted call per step (batch
    gather, augmentation and update in one program, state donated; the step
    index is a traced argument, so it compiles once); dispatch is asynchronous,
    so the host runs ahead of the device. ``loop="scan"`` jits one
    ``lax.scan`` over the S steps: fewer dispatches, but XLA:CPU runs
    convolutions inside a while loop markedly slower than in a flat program
    (``benchmarks/bench_train.py`` measures both), so it is only an option.

    With a ``mesh`` (one axis named ``"data"``), every batch is sharded over
    the devices along its first axis and the state stays replicated: XLA's
    SPMD partitioner turns the global-batch step into data parallelism
    (gradients and batch statistics are all-reduced), so the step computes the
    same function as on one device, up to the order of float reductions.

    With ``sharded_data=True`` (needs a ``mesh``) the training set itself is
    split: ``images`` and ``labels`` are global arrays sharded along their
    first axis over ``"data"`` (device d holds rows d N/D .. (d+1) N/D - 1),
    and ``batch_idx`` holds *local* row indices: columns d B/D .. (d+1) B/D - 1
    index device d's own rows (see :func:`hsicib.data.sharded_epoch_batches`).
    Each device gathers its part of the batch from its own memory
    (``shard_map``), so no example crosses devices or hosts; global row of
    column j is ``d N/D + batch_idx[:, j]``.
    """
    if sharded_data and mesh is None:
        raise ValueError("sharded_data=True needs a mesh with a 'data' axis")
    if loop not in LOOPS:
        raise ValueError(f"loop={loop!r} is not allowed; allowed: {', '.join(LOOPS)}")
    if mesh is None:
        constrain = lambda x: x
        jit_kw = {}
    else:
        from jax.sharding import NamedSharding, PartitionSpec

        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        replicated = NamedSharding(mesh, PartitionSpec())
        constrain = lambda x: jax.lax.with_sharding_constraint(x, batch_sharding)
        jit_kw = {"out_shardings": replicated}

    if sharded_data:
        spec = jax.sharding.PartitionSpec("data")
        local_gather = jax.shard_map(
            lambda im, lb, i: (im[i], lb[i]),
            mesh=mesh,
            in_specs=(spec, spec, spec),
            out_specs=(spec, spec),
        )
    else:
        local_gather = lambda im, lb, i: (constrain(im[i]), constrain(lb[i]))

    donate_kw = {"donate_argnums": (0,) if donate else ()}
    if loop == "scan":

        def scanned(state, images, labels, batch_idx):
            def body(carry, idx):
                return step_fn(carry, *local_gather(images, labels, idx))

            return jax.lax.scan(body, state, batch_idx)

        return jax.jit(scanned, **donate_kw, **jit_kw)

    @functools.partial(jax.jit, **donate_kw, **jit_kw)
    def one(state, images, labels, batch_idx, i):
        idx = jax.lax.dynamic_index_in_dim(batch_idx, i, keepdims=False)
        return step_fn(state, *local_gather(images, labels, idx))

    def chunk(state, images, labels, batch_idx):
        metrics = []
        for i in range(batch_idx.shape[0]):
            state, m = one(state, images, labels, batch_idx, np.int32(i))
            metrics.append(m)
        return state, jax.tree.map(lambda *ms: jnp.stack(ms), *metrics)

    chunk.step = one  # the compiled unit, e.g. for .lower(...).compile()
    return chunk


def make_eval_fn(
    model,
    *,
    mean,
    std,
    batch_size: int = 500,
    compute_dtype=jnp.float32,
    mesh=None,
):
    """Jitted test accuracy of the classifier and every probe on a whole split.

    Returns ``eval_fn(variables, images, labels) -> (acc, probe_acc (L,))``; the
    split is padded to a multiple of ``batch_size`` and scanned, the padding
    masked out. With a ``mesh``, each evaluation batch is sharded over ``"data"``
    (``batch_size`` must then be a multiple of the device count).
    """
    num_blocks = model.num_blocks
    if mesh is None:
        constrain = lambda x: x
    else:
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = NamedSharding(mesh, PartitionSpec("data"))
        constrain = lambda x: jax.lax.with_sharding_constraint(x, sharding)

    @jax.jit
    def eval_fn(variables, images, labels):
        n = images.shape[0]
        bs = batch_size
        pad = (-n) % bs
        images_p = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
        labels_p = jnp.pad(labels, (0, pad))
        valid = jnp.arange(n + pad) < n
        shape = (-1, bs)

        def body(carry, batch):
            x, y, v = (constrain(b) for b in batch)
            out = model.apply(
                variables,
                data_lib.normalize(x, mean, std).astype(compute_dtype),
                train=False,
                cut_after=(False,) * num_blocks,
                detach_head=(True,) * num_blocks,
            )
            hit = (jnp.argmax(out.logits, -1) == y) & v
            probe_hit = jnp.stack(
                [(jnp.argmax(p, -1) == y) & v for p in out.probe_logits]
            )
            return (carry[0] + hit.sum(), carry[1] + probe_hit.sum(-1)), None

        (correct, probe_correct), _ = jax.lax.scan(
            body,
            (jnp.zeros((), jnp.int32), jnp.zeros((num_blocks,), jnp.int32)),
            (
                images_p.reshape(*shape, *images.shape[1:]),
                labels_p.reshape(shape),
                valid.reshape(shape),
            ),
        )
        return correct / n, probe_correct / n

    return eval_fn
