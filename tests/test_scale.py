"""Data parallelism on 8 (fake CPU) devices equals 1 device; bf16 trains.

The 8-device runs happen in a subprocess because the device count is fixed when
JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Same seed, data order and schedule; only train.num_devices differs. Float sums
# are reduced in another order across devices, so values agree to ~1e-5, not bits.
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import jax, jax.numpy as jnp, numpy as np
    from experiments import quickstart
    from hsicib import data as data_lib, experiment, infoplane, models, training

    assert jax.device_count() == 8, jax.devices()
    out = {}
    # Every mode: a few train steps with the batch sharded over 8 devices vs 1.
    ds = data_lib.load_dataset("digits", "digits")
    model = models.build_model("lenet5", num_classes=10, batch_norm=True)
    images, labels = jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels)
    idx = jnp.arange(4 * 64, dtype=jnp.int32).reshape(4, 64)
    sched = training.make_schedule(
        name="constant", learning_rate=1e-3, steps_per_epoch=1, num_epochs=1
    )
    state0 = training.init_state(
        model, jax.random.PRNGKey(0), ds.image_shape,
        training.make_optimizer(name="adam", schedule=sched),
    )
    cfg = training.StepConfig(
        num_classes=10, mean=ds.mean, std=ds.std, crop_padding=1, flip=True
    )
    for mode in ("e2e", "layerwise", "modules:2", "sequential"):
        stage = 1 if mode == "sequential" else None
        mask = training.trainable_mask(state0.params, mode, model.num_blocks, stage)
        tx = training.make_optimizer(name="adam", schedule=sched, mask=mask)
        routing = training.make_routing(
            "layerwise" if mode == "sequential" else mode, model.num_blocks
        )
        step = training.make_train_step(model, routing, tx, cfg, mask=mask)
        res = {}
        for n_dev in (1, 8):
            mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:n_dev]), ("data",))
            state = state0.replace(opt_state=tx.init(state0.params))
            chunk = training.make_train_chunk(step, donate=False, mesh=mesh)
            state, m = chunk(state, images, labels, idx)
            res[n_dev] = (jax.device_get(state.params), jax.device_get(m["loss"]))
        err = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(jax.tree.leaves(res[1][0]), jax.tree.leaves(res[8][0]))
        )
        out[mode] = {
            "param_max_abs_diff": err,
            "loss_1": res[1][1].tolist(),
            "loss_8": res[8][1].tolist(),
        }
    # data.layout="sharded": each device gathers its share of the batch from
    # its own rows; that equals the replicated gather of the same global rows.
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    spec = jax.sharding.PartitionSpec
    per_dev = images.shape[0] // 8
    local_idx = data_lib.sharded_epoch_batches(jax.random.PRNGKey(3), per_dev, 8, 64)
    local_idx = local_idx[:4]
    global_idx = local_idx + (np.arange(64) // 8) * per_dev
    rows = jax.device_put(
        (images[: 8 * per_dev], labels[: 8 * per_dev]),
        jax.sharding.NamedSharding(mesh, spec("data")),
    )
    for mode in ("e2e", "layerwise"):
        tx = training.make_optimizer(name="adam", schedule=sched)
        step = training.make_train_step(
            model, training.make_routing(mode, model.num_blocks), tx, cfg
        )
        state = state0.replace(opt_state=tx.init(state0.params))
        res = {}
        for sharded, idx in ((True, local_idx), (False, global_idx)):
            chunk = training.make_train_chunk(
                step, donate=False, mesh=mesh, sharded_data=sharded
            )
            s, m = chunk(state, *rows, jnp.asarray(idx))
            res[sharded] = (jax.device_get(s.params), jax.device_get(m["loss"]))
        out[f"sharded/{mode}"] = {
            "param_max_abs_diff": max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(
                    jax.tree.leaves(res[True][0]), jax.tree.leaves(res[False][0])
                )
            ),
            "loss_sharded": res[True][1].tolist(),
            "loss_replicated": res[False][1].tolist(),
        }
    c = quickstart.get_config()
    c.modes = ("e2e",)
    c.train.epochs = 2
    c.data.layout = "sharded"
    c.train.log_every_s = 1e9
    c.optim.milestones = ()
    c.hsic.eval_size = 200
    summary = experiment.run(c, Path(sys.argv[1]) / "sharded")["e2e"]
    out["run/sharded"] = {
        k: summary[k] for k in ("final_test_acc", "data_layout", "num_devices", "steps")
    }
    # The runner end to end, information plane included, on 1 and 8 devices.
    for n_dev in (1, 8):
        c = quickstart.get_config()
        c.modes = ("layerwise",)
        c.train.epochs = 1
        c.train.num_devices = n_dev
        c.train.log_every_s = 1e9
        c.optim.milestones = ()
        c.hsic.eval_size = 200
        workdir = Path(sys.argv[1]) / f"run_{n_dev}"
        experiment.run(c, workdir)
        rows = experiment.read_jsonl(workdir / "metrics.jsonl")
        out[f"run/{n_dev}"] = {
            "test_acc": [r["test_acc"] for r in rows],
            "probe_acc": [r["probe_acc"] for r in rows],
            "infoplane": [
                float(r["value"])
                for r in infoplane.read_infoplane(workdir / "infoplane.csv")
            ],
        }
    print("RESULT " + json.dumps(out))
    """
)


def test_eight_devices_match_one_device(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    for mode in ("e2e", "layerwise", "modules:2", "sequential"):
        np.testing.assert_allclose(out[mode]["loss_1"], out[mode]["loss_8"], rtol=1e-5)
        # Adam moves a parameter by at most ~lr = 1e-3 per step; gradients that
        # differ in their last bits (all-reduce order) can change a near-zero
        # component's normalized update, so allow 1e-4 (2.5 % of 4 steps' reach).
        assert out[mode]["param_max_abs_diff"] < 1e-4, (mode, out[mode])
    for mode in ("e2e", "layerwise"):
        got = out[f"sharded/{mode}"]
        np.testing.assert_allclose(
            got["loss_sharded"], got["loss_replicated"], rtol=1e-6
        )
        assert got["param_max_abs_diff"] < 1e-6, (mode, got)
    sharded = out["run/sharded"]
    assert sharded["data_layout"] == "sharded" and sharded["num_devices"] == 8
    # 1,437 digits: 179 rows per device, 8 per device per batch of 64.
    assert sharded["steps"] == 2 * (179 // 8)
    assert sharded["final_test_acc"] > 0.5, sharded
    one, eight = out["run/1"], out["run/8"]
    np.testing.assert_allclose(
        one["infoplane"], eight["infoplane"], rtol=1e-4, atol=1e-5
    )
    # Accuracies count argmaxes: allow one flipped prediction in 360.
    np.testing.assert_allclose(one["test_acc"], eight["test_acc"], atol=1 / 360 + 1e-9)
    np.testing.assert_allclose(
        one["probe_acc"], eight["probe_acc"], atol=1 / 360 + 1e-9
    )


def test_bfloat16_training_beats_chance(tmp_path):
    from experiments import quickstart
    from hsicib import experiment

    c = quickstart.get_config()
    c.modes = ("e2e",)
    c.train.epochs = 5
    c.train.precision = "bfloat16"
    c.train.log_every_s = 1e9
    c.optim.milestones = ()
    c.hsic.every = 5
    c.hsic.eval_size = 200
    from hsicib import infoplane

    summary = experiment.run(c, tmp_path)["e2e"]
    assert summary["final_test_acc"] > 0.5
    # Activations were bf16; the kernel statistics are computed in float32.
    values = [
        float(r["value"]) for r in infoplane.read_infoplane(tmp_path / "infoplane.csv")
    ]
    assert values and np.all(np.isfinite(values))
