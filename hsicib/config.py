"""The experiment configuration: defaults, the ``:quick`` shrink, validation.

Every experiment file in ``experiments/`` starts from :func:`base_config` and
changes a few fields. :func:`validate` checks a config once, before anything is
written, and raises :class:`ConfigError` (a ``ValueError``) whose message names
the field, the value and what is allowed.
"""

from __future__ import annotations

import ml_collections

from hsicib import data, hsic, losses, models, training

DATA_SOURCES = data.SOURCES
MODEL_NAMES = models.MODEL_NAMES
HEADS = models.HEAD_TYPES
LOCAL_LOSSES = losses.LOCAL_LOSSES
NHSIC_REFERENCES = ("input", "block_input")
BANDWIDTHS = hsic.BANDWIDTHS
DISTANCES = hsic.DISTANCES
SOLVERS = hsic.SOLVERS
PRECISIONS = ("float32", "bfloat16")
DATA_LAYOUTS = ("replicated", "sharded")


class ConfigError(ValueError):
    """A config field holds a value that is not allowed."""


def base_config() -> ml_collections.ConfigDict:
    """Defaults: the paper's local-learning recipe (Nøkland & Eidnes 2019).

    Adam, lr 5e-4, no weight decay, batch 128, 400 epochs, lr x0.2 at epochs
    200, 300, 350, 375; horizontal flip only; linear heads on features pooled to
    at most 2048 dimensions; sequential stages of 50 epochs at constant lr.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    # One mode, or several for a comparison run into DIR/<mode>/ plus a report.
    c.modes = ("e2e", "layerwise")

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"
    c.data.name = "cifar10"
    c.data.data_dir = ""
    c.data.download = False
    c.data.crop_padding = 0
    c.data.flip = True
    c.data.synthetic_shape = (8, 8, 1)
    c.data.synthetic_size = (512, 256)
    c.data.num_classes = 0  # 0: from the data set.
    # "replicated": every device holds the whole training set (small data sets,
    # one host). "sharded": each device holds 1/D of it and each process loads
    # only its own rows (multi-host pods, data sets larger than one device).
    c.data.layout = "replicated"

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.head = "linear"
    c.model.head_hidden = 512
    c.model.proj_dim = 128
    c.model.dropout = 0.0
    c.model.batch_norm = True
    c.model.width_mult = 1.0
    c.model.max_head_features = 2048

    c.loss = ml_collections.ConfigDict()
    c.loss.local = "ce"
    c.loss.supcon_temperature = 0.1
    c.loss.supcon_base_temperature = 0.07
    c.loss.nhsic_lambda = 0.0
    c.loss.nhsic_reference = "input"
    c.loss.nhsic_sigma = 5.0

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.lr = 5e-4
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 0.0
    c.optim.schedule = "multistep"
    c.optim.milestones = (200, 300, 350, 375)
    c.optim.gamma = 0.2
    c.optim.warmup_epochs = 0

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 400
    c.train.batch_size = 128
    c.train.sequential_stage_epochs = 50
    c.train.sequential_schedule = "constant"
    c.train.steps_per_call = 50
    c.train.log_every_s = 10.0
    c.train.precision = "float32"
    c.train.eval_batch_size = 512
    c.train.num_devices = 0  # 0: every local device (data parallel).
    # "python": one jitted call per step (fastest on CPU); "scan": one lax.scan
    # per train.steps_per_call steps (fewer dispatches, for tiny steps).
    c.train.loop = "python"

    c.hsic = ml_collections.ConfigDict()
    c.hsic.enabled = True
    c.hsic.eval_size = 1000
    c.hsic.chunk_size = 100
    c.hsic.sigma = 5.0
    c.hsic.bandwidth = "per_dim"
    c.hsic.distance = "squared"
    c.hsic.eps = 1e-5
    c.hsic.solver = "cholesky"
    c.hsic.every = 10
    c.hsic.num_log = 8

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 10
    c.checkpoint.max_to_keep = 2
    return c


def shrink(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``:quick`` variant: a CPU smoke run of any config in about a minute.

    Keeps the model family and the modes, uses the bundled digits, a narrow
    network, 3 epochs (1 per sequential stage) and a 200-example evaluation set.
    """
    c.data.source = "digits"
    c.data.name = "digits"
    c.data.crop_padding = 0
    c.data.flip = False
    c.model.width_mult = min(c.model.width_mult, 0.125)
    c.train.epochs = 3
    c.train.batch_size = 64
    c.train.sequential_stage_epochs = 1
    c.optim.lr = 1e-3 if c.optim.name == "adam" else c.optim.lr
    c.optim.milestones = ()
    c.hsic.eval_size = 200
    c.hsic.chunk_size = 100
    c.hsic.every = 1
    c.checkpoint.every_epochs = 1
    return c


def _allowed(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{field}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}"
        )


def _positive(field: str, value, *, strict: bool = True) -> None:
    if value < 0 or (strict and value == 0):
        raise ConfigError(f"{field}={value!r} must be {'> 0' if strict else '>= 0'}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks every field that can be checked without loading data.

    Raises:
      ConfigError: naming the first bad field, its value and what is allowed.
    """
    modes = (c.modes,) if isinstance(c.modes, str) else tuple(c.modes)
    if not modes:
        raise ConfigError(
            "modes=() is empty; give at least one of e2e, layerwise, sequential, "
            "modules:K"
        )
    if len(set(modes)) != len(modes):
        raise ConfigError(f"modes={modes!r} repeats a mode")
    for m in modes:
        if m not in ("e2e", "layerwise", "sequential") and not m.startswith("modules:"):
            raise ConfigError(
                f"modes: {m!r} is not a known mode; allowed: e2e, layerwise, "
                "sequential, modules:K"
            )
        if m.startswith("modules:") and not m[len("modules:") :].isdigit():
            raise ConfigError(f"modes: {m!r} needs an integer K, e.g. modules:2")
    _allowed("data.source", c.data.source, DATA_SOURCES)
    if c.data.source in ("tfds",) and not c.data.name:
        raise ConfigError(
            "data.name='' must name a TFDS data set, e.g. mnist or cifar10"
        )
    if c.data.source == "idx" and not c.data.data_dir:
        raise ConfigError(
            "data.data_dir='' must name a folder of IDX files for data.source='idx'"
        )
    _positive("data.crop_padding", c.data.crop_padding, strict=False)
    _allowed("data.layout", c.data.layout, DATA_LAYOUTS)
    _allowed("model.name", c.model.name, MODEL_NAMES)
    _allowed("model.head", c.model.head, HEADS)
    _positive("model.width_mult", c.model.width_mult)
    if not 0.0 <= c.model.dropout < 1.0:
        raise ConfigError(f"model.dropout={c.model.dropout!r} must be in [0, 1)")
    _positive("model.max_head_features", c.model.max_head_features)
    _allowed("loss.local", c.loss.local, LOCAL_LOSSES)
    _allowed("loss.nhsic_reference", c.loss.nhsic_reference, NHSIC_REFERENCES)
    _positive("loss.nhsic_lambda", c.loss.nhsic_lambda, strict=False)
    _positive("loss.nhsic_sigma", c.loss.nhsic_sigma)
    _positive("loss.supcon_temperature", c.loss.supcon_temperature)
    _positive("loss.supcon_base_temperature", c.loss.supcon_base_temperature)
    _allowed("optim.name", c.optim.name, training.OPTIMIZERS)
    _positive("optim.lr", c.optim.lr)
    _positive("optim.weight_decay", c.optim.weight_decay, strict=False)
    _positive("optim.momentum", c.optim.momentum, strict=False)
    _allowed("optim.schedule", c.optim.schedule, training.SCHEDULES)
    _allowed(
        "train.sequential_schedule", c.train.sequential_schedule, training.SCHEDULES
    )
    _positive("optim.gamma", c.optim.gamma)
    _positive("train.epochs", c.train.epochs)
    _positive("train.batch_size", c.train.batch_size)
    _positive("train.sequential_stage_epochs", c.train.sequential_stage_epochs)
    _positive("train.steps_per_call", c.train.steps_per_call)
    _positive("train.eval_batch_size", c.train.eval_batch_size)
    _positive("train.num_devices", c.train.num_devices, strict=False)
    _allowed("train.precision", c.train.precision, PRECISIONS)
    _allowed("train.loop", c.train.loop, training.LOOPS)
    _positive("hsic.eval_size", c.hsic.eval_size)
    _positive("hsic.chunk_size", c.hsic.chunk_size, strict=False)
    _positive("hsic.sigma", c.hsic.sigma)
    _positive("hsic.eps", c.hsic.eps)
    _positive("hsic.every", c.hsic.every)
    _allowed("hsic.bandwidth", c.hsic.bandwidth, BANDWIDTHS)
    _allowed("hsic.distance", c.hsic.distance, DISTANCES)
    _allowed("hsic.solver", c.hsic.solver, SOLVERS)
    _positive("checkpoint.every_epochs", c.checkpoint.every_epochs)
    _positive("checkpoint.max_to_keep", c.checkpoint.max_to_keep)
