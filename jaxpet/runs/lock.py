"""An exclusive lock on a run's output folder, so that two runs never write into one folder.

`RunLock(folder)` holds an advisory `fcntl.flock` on `folder/.jaxpet.lock`, which also records
the holder's process id, host and start time for the error message. The kernel releases the
lock when its process dies (even by SIGKILL), so a lock file left by a dead process is stale:
the next run takes it over with a warning. Only process 0 of a multi-process run locks.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import jax

from jaxpet.config import ConfigError

LOCK_FILE = ".jaxpet.lock"


class RunLock:
    """Context manager: takes the folder's lock or raises ConfigError naming its holder."""

    def __init__(self, folder: str | os.PathLike, enabled: bool | None = None) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.enabled = enabled
        self._file: Any = None

    def acquire(self) -> None:
        if self.enabled is None:
            self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise ConfigError(
                    f"output_dir {self.path.parent} is in use by {holder} (lock {self.path}); "
                    "wait for that run to end or use another output_dir") from None
            # a holder that released the lock may have deleted the file meanwhile: then this
            # lock is on a file nobody else sees, so lock the new one instead
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            warnings.warn(f"{self.path}: stale lock of {previous}, which no longer runs; "
                          "taking it over", stacklevel=2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is None:
            return
        # delete before unlocking: a waiting run then finds no stale record of this one
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
