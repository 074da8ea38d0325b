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
    import jax
    from experiments import quickstart
    from hsicib import experiment, infoplane

    assert jax.device_count() == 8, jax.devices()
    out = {}
    for mode in ("e2e", "layerwise", "modules:2", "sequential"):
        for n_dev in (1, 8):
            c = quickstart.get_config()
            c.modes = (mode,)
            c.train.epochs = 2
            c.train.sequential_stage_epochs = 1
            c.train.num_devices = n_dev
            c.train.log_every_s = 1e9
            c.optim.milestones = ()
            c.hsic.every = 1
            c.hsic.eval_size = 200
            workdir = f"{sys.argv[1]}/{mode.replace(':', '_')}_{n_dev}"
            experiment.run(c, workdir)
            rows = experiment.read_jsonl(__import__("pathlib").Path(workdir) / "metrics.jsonl")
            ip = infoplane.read_infoplane(f"{workdir}/infoplane.csv")
            out[f"{mode}/{n_dev}"] = {
                "train_loss": [r["train_loss"] for r in rows[1:]],
                "test_acc": [r["test_acc"] for r in rows],
                "probe_acc": [r["probe_acc"] for r in rows],
                "infoplane": [float(r["value"]) for r in ip],
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
        one, eight = out[f"{mode}/1"], out[f"{mode}/8"]
        np.testing.assert_allclose(one["train_loss"], eight["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(
            one["infoplane"], eight["infoplane"], rtol=1e-3, atol=1e-4
        )
        # Accuracies count argmaxes: allow one flipped prediction in 360.
        np.testing.assert_allclose(
            one["test_acc"], eight["test_acc"], atol=1 / 360 + 1e-9
        )
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
