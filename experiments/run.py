r"""Trains a config's modes into a workdir (and writes the comparison report).

  python -m experiments.run --config=experiments/quickstart.py --workdir=runs/quick
  python -m experiments.run --config=experiments/lw_resnet.py:quick --workdir=/tmp/x
  python -m experiments.run --config=experiments/lenet5_mnist.py \
      --config.train.epochs=20 --config.modes=e2e --workdir=runs/lenet

Rerunning the same command resumes from the workdir's last checkpoint. Bad input
(an unknown field value, a missing data folder, a workdir of another config)
prints one line and exits with status 2, leaving no files behind.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hsicib import experiment

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (optionally FILE.py:ARG).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the run's outputs.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Discard a run of a different config found in --workdir."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first (multi-host TPU VM pods: run the "
    "same command on every worker).",
)
flags.mark_flags_as_required(["config", "workdir"])


class _DropOrbaxInfo(logging.logging.Filter):
    """Keeps orbax's per-save INFO chatter out of the run's log."""

    def filter(self, record) -> bool:
        return (
            record.levelno >= logging.logging.WARNING or "orbax" not in record.pathname
        )


def _parse_flags(argv: list[str]) -> list[str]:
    """Parses flags; a bad flag or config file is one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # flags.Error, and config-file load errors.
        message = str(e).strip().splitlines()
        print(f"error: {' '.join(line.strip() for line in message)}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    logging.get_absl_handler().addFilter(_DropOrbaxInfo())
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if _DISTRIBUTED.value:
        import jax

        jax.distributed.initialize()
    try:
        experiment.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
    except (ValueError, experiment.RunError) as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
