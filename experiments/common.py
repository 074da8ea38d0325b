"""Helpers shared by the config files: the base config and the ``:quick`` switch."""

from __future__ import annotations

import ml_collections

from hsicib import config as config_lib


def finish(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the config-file argument: ``quick`` shrinks to a CPU smoke run."""
    if arg in (None, ""):
        return c
    if arg == "quick":
        return config_lib.shrink(c)
    raise ValueError(f"config argument {arg!r} is not known; allowed: quick")


base_config = config_lib.base_config
