"""Orbax checkpoints of a train state: asynchronous saves, latest-step resume, sharded restore.

A checkpoint holds the whole state pytree (step, params, opt_state). Restores go into the
shardings of a target state, so a run can resume on a different mesh. Orbax writes into a
temporary folder and renames it when complete, so a process killed mid-save leaves the
previous checkpoint as the latest one; the next Checkpointer on the folder has orbax delete
such unfinished folders. A save that fails in orbax's background threads (a full disk) is
raised in the caller's thread at the next save or wait, without the tracebacks of orbax's
threads and of its writes still in flight.

Multi-host: every process calls save and restore (they are collective) with the same folder
on storage that all hosts share (a common mount or a `gs://` URL); each process writes and
reads only the shards of its own devices, so a restore never gathers the state on one host.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp


def checkpoint_directory(directory: str | os.PathLike) -> str:
    """An absolute local path, or a URL (gs://, s3://, ...) passed through untouched to orbax."""
    text = os.fspath(directory)
    if "://" in text:
        return text
    # pathlib turns "gs://bucket/run" into "gs:/bucket/run"; give such a URL its "//" back.
    collapsed = re.match(r"^([a-z][a-z0-9+.-]+):/([^/].*)$", text)
    if collapsed:
        return f"{collapsed.group(1)}://{collapsed.group(2)}"
    return os.path.abspath(os.path.expanduser(text))


class _QuietThreadErrors(logging.Filter):
    """Drops orbax's ERROR records that carry a traceback: its background save threads log
    the error of a failed save (once per thread, hundreds of lines) before it is raised again
    in the caller's thread, where jaxpet reports it in one line. JAXPET_TRACEBACK=1 keeps
    them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("JAXPET_TRACEBACK"):
            return True
        return not (record.levelno >= logging.ERROR and record.exc_info
                    and f"{os.sep}orbax{os.sep}" in record.pathname)


class _QuietOrbaxTasks(logging.Filter):
    """Drops asyncio's "exception was never retrieved" records for orbax's write tasks: after a
    failed save the caller gets the first error, and the sibling writes of the same save,
    collected later, fail with the same error without anyone awaiting them. A task whose
    traceback never passes through orbax is still logged; JAXPET_TRACEBACK=1 keeps them all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("JAXPET_TRACEBACK") or not record.exc_info:
            return True
        if "exception was never retrieved" not in record.getMessage():
            return True
        frames = traceback.extract_tb(record.exc_info[2])
        return not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)


def _quiet_orbax_thread_errors() -> None:
    logger = logging.getLogger("absl")  # orbax logs through absl's logger
    if not any(isinstance(f, _QuietThreadErrors) for f in logger.filters):
        logger.addFilter(_QuietThreadErrors())
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _QuietOrbaxTasks) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_QuietOrbaxTasks())
    if not getattr(sys.unraisablehook, "_jaxpet_quiet", False):
        sys.unraisablehook = _quiet_closed_loop_callbacks(sys.unraisablehook)


def _quiet_closed_loop_callbacks(previous: Any) -> Any:
    """After a failed save, writes still in flight finish and call back into orbax's event
    loop, already closed: Python prints each "Event loop is closed" as an unraisable error's
    traceback. The save's own error reaches the caller; these say nothing more, so they are
    dropped (JAXPET_TRACEBACK=1 keeps them); every other unraisable error goes to `previous`."""

    def hook(unraisable: Any) -> None:
        if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value)
                == "Event loop is closed" and not os.environ.get("JAXPET_TRACEBACK")):
            return
        previous(unraisable)

    hook._jaxpet_quiet = True  # type: ignore[attr-defined]
    return hook


class Checkpointer:
    """Thin wrapper over ocp.CheckpointManager keeping the `max_to_keep` latest steps."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2, save_every: int = 0):
        self.directory = checkpoint_directory(directory)
        self.save_every = int(save_every)
        _quiet_orbax_thread_errors()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            enable_async_checkpointing=True,
            create=True,
            # a save killed mid-write leaves "STEP.orbax-checkpoint-tmp", never read as a
            # checkpoint; orbax deletes it here (the run's lock keeps other writers out)
            cleanup_tmp_directories=True,
        )
        unfinished = self._unfinished()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        if unfinished:
            print(f"removing {len(unfinished)} unfinished checkpoint folder(s) of an "
                  f"interrupted save in {self.directory}: {', '.join(unfinished)}")

    def _unfinished(self) -> list[str]:
        """Names of the unfinished save folders orbax will delete (process 0 reports them)."""
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return []
        return sorted(os.path.basename(str(path.get()))
                      for path in ocp.utils.tmp_checkpoints(self.directory))

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        """Starts an asynchronous save of `state` at `step` when forced or on a save_every step.

        Returns whether a save started. The device-to-host copy finishes before this returns,
        so the state may be donated right after.
        """
        step = int(step)
        if not force and not (self.save_every and step % self.save_every == 0):
            return False
        if step in self.manager.all_steps():
            return False
        return bool(self.manager.save(step, args=ocp.args.StandardSave(state), force=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, step: int | None, target_state: Any) -> Any:
        """The state saved at `step` (None: latest), placed like `target_state`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target_state
        )
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, target_state: Any, below: int | None = None) -> tuple[int | None, Any]:
        """(step, state) of the newest checkpoint (before step `below`, if given) that restores.

        A checkpoint that fails to restore (a truncated or missing file) is skipped with a
        warning naming its folder, and the next older one is tried; broken folders are kept for
        the user to inspect, never deleted. (None, target_state) when none restores.
        """
        for step in sorted(self.all_steps(), reverse=True):
            if below is not None and step >= below:
                continue
            try:
                return step, self.restore(step, target_state)
            except Exception as error:  # orbax and tensorstore raise many kinds
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                warnings.warn(
                    f"checkpoint {os.path.join(self.directory, str(step))} does not restore "
                    f"({type(error).__name__}: {first_line[:200]}); trying an older one. The "
                    "folder is kept; delete it once inspected.", stacklevel=2)
        return None, target_state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
