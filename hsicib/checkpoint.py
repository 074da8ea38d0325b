"""Orbax checkpoints of a training state, with restore-or-initialize.

Synopsis::

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=3)
    found = ckpt.restore_or_none(template=state)
    if found is not None:
        step, state, metadata = found
    ...
    ckpt.save(step, state, metadata={"epoch": epoch, "wall_time": t})
    ckpt.close()

A thin wrapper around ``orbax.checkpoint.CheckpointManager``. Each checkpoint
is a folder ``<directory>/<step>`` holding two items: ``state`` (any pytree of
arrays and scalars: parameters, optax state, batch statistics, PRNG keys,
counters; saved with ``StandardSave``) and ``metadata`` (a small JSON dict).

Atomicity: orbax writes a checkpoint into a temporary folder and renames it to
``<step>`` only once every file is written, and :meth:`Checkpointer.save`
blocks until then; the latest step is the largest finalized folder, so a crash
mid-save leaves the previous checkpoint as the latest one (the temporary
folder is ignored). A finalized checkpoint can still be damaged later (a disk
fault, a truncated copy): :meth:`Checkpointer.restore_or_none` then warns,
moves it aside to ``<step>.corrupt`` and falls back to the previous one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

_STATE = "state"
_METADATA = "metadata"


class CheckpointRestoreError(RuntimeError):
    """No checkpoint in the directory could be restored."""


class Checkpointer:
    """Saves and restores one training state per step in one directory.

    All JAX processes must make the same calls (orbax coordinates them).

    Args:
      directory: folder of the checkpoints; created if missing.
      max_to_keep: how many of the newest checkpoints to keep (>= 1); older
        ones are deleted after each save.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
        if int(max_to_keep) != max_to_keep or max_to_keep < 1:
            raise ValueError(
                f"max_to_keep must be an integer >= 1, got {max_to_keep!r}"
            )
        self._directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(max_to_keep), create=True
        )
        self._manager = ocp.CheckpointManager(self._directory, options=options)

    @property
    def directory(self) -> str:
        """The absolute path of the checkpoint folder."""
        return self._directory

    def all_steps(self) -> list[int]:
        """The steps of the finalized checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finalized step, or None when there is none."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        *,
        metadata: dict | None = None,
        force: bool = False,
    ) -> None:
        """Writes ``state`` and ``metadata`` as checkpoint ``step``; blocks until done.

        Args:
          step: the training step (>= 0), the checkpoint's name.
          state: a pytree of arrays and scalars.
          metadata: a small JSON-serializable dict (e.g. epoch, wall time).
          force: replace an existing checkpoint at ``step`` and save even when
            ``step`` is not after the latest one. Without it such a save is
            skipped with a warning.
        """
        if int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        step = int(step)
        metadata = {} if metadata is None else metadata
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"metadata must be a JSON-serializable dict, got {metadata!r}: {err}"
            ) from err
        if step in self._manager.all_steps():
            if not force:
                logging.warning(
                    "Checkpoint step %d already exists in %s; not saving it again "
                    "(pass force=True to replace it).",
                    step,
                    self._directory,
                )
                return
            self._manager.delete(step)
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(state),
                _METADATA: ocp.args.JsonSave(metadata),
            }
        )
        saved = self._manager.save(step, args=args, force=force)
        self._manager.wait_until_finished()
        if saved:
            logging.info("Saved checkpoint step %d in %s", step, self._directory)
        else:
            logging.warning(
                "Checkpoint step %d not saved: %s already holds step %s (pass "
                "force=True to save anyway).",
                step,
                self._directory,
                self._manager.latest_step(),
            )

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Reads checkpoint ``step`` (default: the latest) into ``template``'s form.

        Args:
          template: a pytree with the structure, shapes and dtypes to restore
            into (e.g. a freshly initialized state, or one of
            ``jax.ShapeDtypeStruct``); arrays come back with its shardings.
          step: which checkpoint; None for the latest.

        Returns:
          (state, metadata).

        Raises:
          FileNotFoundError: the directory holds no checkpoint.
          ValueError: ``step`` is not one of the saved steps.
          Exception: whatever orbax raises on a damaged checkpoint or a template
            that does not match it.
        """
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"No checkpoint in directory {self._directory}")
            step = steps[-1]
        elif step not in steps:
            raise ValueError(
                f"step={step!r} has no checkpoint in {self._directory}; saved steps "
                f"are {steps}"
            )
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardRestore(template),
                _METADATA: ocp.args.JsonRestore(),
            }
        )
        restored = self._manager.restore(step, args=args)
        metadata = restored[_METADATA]
        return restored[_STATE], {} if metadata is None else dict(metadata)

    def restore_or_none(self, template: Any) -> tuple[int, Any, dict] | None:
        """The newest checkpoint that restores cleanly, or None if there is none.

        Tries the finalized checkpoints from newest to oldest, each once. One
        that fails to restore (missing or truncated files, a damaged index) is
        reported with a warning; once an older one restores, every failed newer
        one is renamed to ``<step>.corrupt`` so that training can save those
        steps again. Unfinished temporary folders are never considered.

        Args:
          template: as in :meth:`restore`.

        Returns:
          (step, state, metadata), or None when the directory has no checkpoint.

        Raises:
          CheckpointRestoreError: checkpoints exist but none restores (nothing
            is renamed then: a template that does not match the checkpoints
            fails the same way).
        """
        failed: list[int] = []
        last_error: Exception | None = None
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, metadata = self.restore(template, step)
            except Exception as err:  # Damage surfaces as many exception types.
                logging.warning(
                    "Checkpoint step %d in %s cannot be restored (%s: %s); trying an "
                    "older one.",
                    step,
                    self._directory,
                    type(err).__name__,
                    str(err).splitlines()[0][:300] if str(err) else "",
                )
                failed.append(step)
                last_error = err
                continue
            if failed:
                self._set_aside(failed)
            logging.info("Restored checkpoint step %d from %s", step, self._directory)
            return step, state, metadata
        if failed:
            raise CheckpointRestoreError(
                f"None of the checkpoints {sorted(failed)} in {self._directory} could "
                "be restored into the given template. If the template matches what "
                "was saved, they are damaged: move the directory away to start "
                f"afresh. Last error: {type(last_error).__name__}: {last_error}"
            ) from last_error
        return None

    def close(self) -> None:
        """Waits for pending work and releases orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _set_aside(self, steps: list[int]) -> None:
        """Renames the damaged step folders to ``<step>.corrupt[-k]``."""
        if jax.process_index() == 0:
            for step in steps:
                source = os.path.join(self._directory, str(step))
                target, k = source + ".corrupt", 1
                while os.path.exists(target):
                    target, k = f"{source}.corrupt-{k}", k + 1
                os.rename(source, target)
                logging.warning("Moved damaged checkpoint %s to %s", source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("hsicib_checkpoint_set_aside")
        self._manager.reload()
