"""Atomic writes: a file or a model folder appears complete under its name, or not at all."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# The names atomic_write and atomic_folder fill before the rename: ".NAME." + tempfile's 8
# random characters + the suffix. Only a kill or a power loss mid-write leaves one behind.
TMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial"
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part: 8 of a-z, 0-9 and _
LEFTOVER_FILE = re.compile(rf"\..+\.{_RANDOM}{re.escape(TMP_SUFFIX)}")
LEFTOVER_FOLDER = re.compile(rf"\..+\.{_RANDOM}{re.escape(PARTIAL_SUFFIX)}")


def umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write_fn: Callable[[IO], object], binary: bool) -> Path:
    """Writes `path` through `write_fn(file)` into a temporary file of the same folder, synced
    and renamed into place: the file appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX,
                                        dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask)
        os.chmod(tmp_name, 0o666 & ~umask())
        with os.fdopen(handle, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling folder to fill; on success it replaces `path` (an older
    folder of that name is removed first), on any error it is deleted. A full disk or a kill
    mid-export so never leaves a folder with a config and no weights under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX,
                                        dir=path.parent))
    try:
        # mkdtemp creates the folder 0700; give it the mode mkdir would (0777 less the umask)
        os.chmod(partial, 0o777 & ~umask())
        yield partial
        # Some writers (safetensors) create their files 0600 whatever the umask: give every
        # file the mode open() would, as atomic_write does.
        for root, _, names in os.walk(partial):
            for name in names:
                os.chmod(os.path.join(root, name), 0o666 & ~umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Deletes what interrupted atomic writes left anywhere under `folder`: files named like
    atomic_write's temporary files and folders named like atomic_folder's, nothing else
    (symbolic links are neither followed nor removed). Says so in one line when it removes
    any, and returns the removed paths.

    Only call it while no other process writes into `folder` (the run's lock is held): a
    running write's temporary name looks the same as a dead one's."""
    removed: list[Path] = []
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if LEFTOVER_FILE.fullmatch(name) and not path.is_symlink():
                path.unlink()
                removed.append(path)
        for name in list(dirs):
            path = Path(root) / name
            if LEFTOVER_FOLDER.fullmatch(name) and not path.is_symlink():
                shutil.rmtree(path)
                removed.append(path)
                dirs.remove(name)  # gone: nothing to walk into
    removed.sort()
    if removed:
        names = [os.path.relpath(path, folder) for path in removed]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        print(f"removed {len(removed)} unfinished temporary file(s)/folder(s) of an interrupted "
              f"write in {folder}: {shown}")
    return removed
