"""Orbax checkpoints: round trip, retention, and recovery from damage."""

import gc
import logging
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hsicib.checkpoint import Checkpointer, CheckpointRestoreError


@flax.struct.dataclass
class State:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    rng: jax.Array
    epoch: int


_TX = optax.chain(
    optax.masked(
        optax.sgd(0.1, momentum=0.9), {"conv": {"w": True}, "fc": {"b": False}}
    ),
    optax.adam(1e-3),
)


def make_state(seed: int) -> State:
    """A state like a training run's: masked optax states, bf16, a PRNG key.

    Every leaf is random NumPy data put on the device (nothing to compile).
    """
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if np.issubdtype(leaf.dtype, np.integer):
            return jnp.asarray(
                rng.integers(0, 2**31 - 1, leaf.shape).astype(leaf.dtype)
            )
        return jnp.asarray(rng.standard_normal(leaf.shape).astype(leaf.dtype))

    params = {
        "conv": {"w": jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32)},
        "fc": {"b": jax.ShapeDtypeStruct((5,), jnp.bfloat16)},
    }
    opt_state = jax.eval_shape(_TX.init, params)
    return State(
        step=jnp.int32(10 * seed),
        params=jax.tree.map(fill, params),
        batch_stats={"bn": {"mean": fill(jax.ShapeDtypeStruct((4,), jnp.float32))}},
        opt_state=jax.tree.map(fill, opt_state),
        rng=jnp.asarray(rng.integers(0, 2**32, 2, dtype=np.uint32)),
        epoch=seed,
    )


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.fixture
def template():
    """Zeros of the right structure, shapes and dtypes; Python scalars kept."""
    return jax.tree.map(
        lambda x: (
            jnp.asarray(np.zeros(x.shape, x.dtype)) if isinstance(x, jax.Array) else 0
        ),
        make_state(0),
    )


def test_round_trip_is_bitwise(tmp_path, template):
    state = make_state(3)
    with Checkpointer(tmp_path / "ck") as ckpt:
        assert ckpt.latest_step() is None
        ckpt.save(30, state, metadata={"epoch": 3, "wall_time": 1.5})
        assert ckpt.latest_step() == 30
        restored, meta = ckpt.restore(template)
    assert meta == {"epoch": 3, "wall_time": 1.5}
    assert_bitwise_equal(restored, state)
    # Optax's namedtuple states come back as the same types.
    masked, adam = restored.opt_state
    assert type(masked) is type(state.opt_state[0])
    assert type(adam[0]) is optax.ScaleByAdamState

    # A new Checkpointer on the same directory sees the checkpoint.
    step, again, meta = Checkpointer(tmp_path / "ck").restore_or_none(template)
    assert step == 30 and meta["epoch"] == 3
    assert_bitwise_equal(again, state)


def test_restore_a_given_step_and_max_to_keep(tmp_path, template):
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for seed in (1, 2, 3):
        ckpt.save(seed, make_state(seed), metadata={"epoch": seed})
    assert ckpt.all_steps() == [2, 3]
    assert sorted(os.listdir(tmp_path)) == ["2", "3"]
    state, meta = ckpt.restore(template, step=2)
    assert meta == {"epoch": 2}
    assert_bitwise_equal(state, make_state(2))
    with pytest.raises(ValueError, match=r"step=1 .* saved steps are \[2, 3\]"):
        ckpt.restore(template, step=1)
    ckpt.close()


def test_existing_step_is_kept_unless_forced(tmp_path, template):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, make_state(1))
    ckpt.save(5, make_state(2))
    assert_bitwise_equal(ckpt.restore(template)[0], make_state(1))
    ckpt.save(5, make_state(2), force=True)
    assert_bitwise_equal(ckpt.restore(template)[0], make_state(2))
    assert ckpt.all_steps() == [5]
    ckpt.close()


def _truncate_data(step_dir):
    """Cuts every array data file of a checkpoint in half."""
    for root, _, files in os.walk(step_dir / "state"):
        if os.path.basename(root) == "d":
            for name in files:
                path = os.path.join(root, name)
                os.truncate(path, os.path.getsize(path) // 2)


def _delete_index(step_dir):
    os.remove(step_dir / "state" / "manifest.ocdbt")


# A failed orbax restore leaves async reads behind (un-awaited coroutines, a
# closed event loop); the damage tests collect them while these filters hold.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning"),
]


@pytest.mark.parametrize("damage", [_truncate_data, _delete_index])
def test_damaged_latest_falls_back_with_warning(tmp_path, template, caplog, damage):
    ckpt = Checkpointer(tmp_path)
    for seed in (1, 2, 3):
        ckpt.save(seed, make_state(seed), metadata={"epoch": seed})
    damage(tmp_path / "3")
    # A save that crashed before orbax finalized it leaves a temporary folder.
    os.makedirs(tmp_path / "4.orbax-checkpoint-tmp-1700000000" / "state")
    reopened = Checkpointer(tmp_path)
    assert reopened.latest_step() == 3

    with caplog.at_level(logging.WARNING):
        step, state, meta = reopened.restore_or_none(template)
    assert step == 2 and meta == {"epoch": 2}
    assert_bitwise_equal(state, make_state(2))
    assert any("step 3" in r.getMessage() for r in caplog.records)

    # The damaged folder is set aside, so training can write step 3 again.
    assert (tmp_path / "3.corrupt").is_dir()
    assert reopened.latest_step() == 2
    reopened.save(3, make_state(4), metadata={"epoch": 3})
    assert reopened.restore_or_none(template)[0] == 3
    reopened.close()
    ckpt.close()
    gc.collect()


def test_all_damaged_raises_and_keeps_files(tmp_path, template):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, make_state(1))
    _delete_index(tmp_path / "1")
    with pytest.raises(CheckpointRestoreError, match=r"\[1\]"):
        ckpt.restore_or_none(template)
    assert os.listdir(tmp_path) == ["1"]
    ckpt.close()
    gc.collect()


def test_empty_directory(tmp_path, template):
    ckpt = Checkpointer(tmp_path / "new")
    assert (tmp_path / "new").is_dir()
    assert ckpt.restore_or_none(template) is None
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        ckpt.restore(template)
    ckpt.close()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be"):
        Checkpointer(tmp_path, max_to_keep=0)
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(ValueError, match="metadata must be a JSON-serializable dict"):
        ckpt.save(1, make_state(1), metadata={"x": object()})
    with pytest.raises(ValueError, match="step must be"):
        ckpt.save(-1, make_state(1))
    assert ckpt.latest_step() is None
    ckpt.close()


def test_typed_prng_keys_round_trip(tmp_path):
    state = {"key": jax.random.key(42), "counter": jnp.int32(7)}
    template = {"key": jax.random.key(0), "counter": jnp.int32(0)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        restored, meta = ckpt.restore(template)
    assert meta == {}
    assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(state["key"])
    )
    assert int(restored["counter"]) == 7
