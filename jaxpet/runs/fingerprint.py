"""Fingerprints of run folders: what determines a run's results, and which of it changed.

A run folder stores `fingerprint.json`: the resolved config values that can change a result,
a hash of every data file, the model checkpoint's identity and the jaxpet version. A rerun into
the folder reuses its finished models and checkpoints only when the fingerprint is unchanged;
otherwise it stops before any work and names the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jaxpet
from jaxpet.atomic import remove_leftovers
from jaxpet.config import Config, ConfigError, to_dict
from jaxpet.data.hf_dataset import local_folder
from jaxpet.models.minilm import resolve_model_name
from jaxpet.runs.outputs import write_json

FINGERPRINT_FILE = "fingerprint.json"
# Files a run writes before any result; a folder holding only these holds nothing to reuse.
NO_RESULTS = frozenset({FINGERPRINT_FILE, "config.yaml", ".jaxpet.lock"})

# Keys that cannot change what a run computes, so changing them keeps its results valid:
EXCLUDED = {
    "output_dir": "where the run is; moving it changes nothing inside",
    "compilation_cache": "a cache of compiled programs, the programs are the same",
    "logging.": "what is printed and logged, not what is trained",
    "distributed.": "how processes find each other, not what they compute",
    "checkpoint.": "when states are saved; a resumed run ends as an uninterrupted one",
    # The next two split the same per-example computation over devices or batches: every
    # example's logits are computed by the same program, the grouping can change only float
    # rounding. Excluding them lets a killed run resume on another machine.
    "mesh.": "how arrays are split over devices",
    "eval.batch_size": "how many evaluation rows go through one forward pass",
    "model.remat": "recomputes activations in the backward pass: the same values",
    # Rerun on every run and written only to the top-level results.json, which each run
    # rewrites from scratch: they add or omit an evaluation or a stage, they change none.
    "eval.zero_shot": "adds the untrained patterns' scores, recomputed on every run",
    "no_distillation": "whether the distillation stage runs; its folder depends on the rest",
    "classifier.baseline": "whether the baseline stage runs; its folders depend on the rest",
    "petal.": "settings of `jaxpet petal`, which a training run does not read",
    # a rerun that wants a model an earlier run did not save stops and says so
    # (jaxpet.pipelines.model_saving.check_reused): the parameters are gone, nothing is silently
    # skipped
    "output.save_models": "which trained models are written to disk, not what they are",
    "evaluate.": "settings of method evaluate, which trains nothing",
}
# Data and model files larger than this are identified by size and their first and last MiB
# rather than a full hash (a 1 GB checkpoint would otherwise cost seconds on every run).
FULL_HASH_BYTES = 64 << 20
EDGE_BYTES = 1 << 20


def _excluded(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) or key.startswith(k + "_")
               for k in EXCLUDED)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and prefix.count(".") < 1:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def file_identity(path: Path) -> str:
    """sha256 of a file (up to FULL_HASH_BYTES), else its size and the hash of its ends."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return f"sha256:{digest.hexdigest()}"
        digest.update(f.read(EDGE_BYTES))
        f.seek(size - EDGE_BYTES)
        digest.update(f.read(EDGE_BYTES))
    return f"size:{size},ends-sha256:{digest.hexdigest()}"


def _files(folder: Path) -> Iterable[Path]:
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


def folder_identity(folder: str | os.PathLike, prefix: str) -> dict[str, str]:
    """{prefix/relative path: file_identity} of every (non-hidden) file under `folder`."""
    folder = Path(os.path.expanduser(os.fspath(folder)))
    if not folder.is_dir():
        return {prefix: "missing" if not folder.exists() else file_identity(folder)}
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": file_identity(p)
            for p in _files(folder)}


def model_identity(name: str, key: str = "model.name") -> dict[str, str]:
    """A local checkpoint folder by its files' identities; a hub name by the name alone."""
    path = resolve_model_name(name)
    if os.path.isdir(os.path.expanduser(path)):
        return folder_identity(path, f"{key}:files")
    return {}


def config_values(config: Config) -> dict[str, Any]:
    """The flat config values a run's results depend on: the sections its method reads, minus
    EXCLUDED, plus jaxpet's version."""
    values = {k: v for k, v in _flatten(to_dict(config)).items() if not _excluded(k)}
    values = json.loads(json.dumps(values, default=str))  # tuples -> lists, as stored
    values["jaxpet_version"] = jaxpet.__version__
    return values


def run_fingerprint(config: Config) -> dict[str, Any]:
    """The flat fingerprint of a run: config values (minus EXCLUDED), data and model files."""
    values = config_values(config)
    if config.task.data_dir or config.task.hf_dataset is None:
        values.update(folder_identity(config.task.data_dir, "task.data_dir:files"))
    if config.task.hf_dataset is not None:  # a save_to_disk folder: its files (a hub name: as is)

        folder = local_folder(config.task.hf_dataset)
        if folder is not None:
            values.update(folder_identity(folder, "task.hf_dataset.path:files"))
    values.update(model_identity(config.model.name))
    verbalizer = config.task.verbalizer
    if isinstance(verbalizer, str) and os.path.isfile(os.path.expanduser(verbalizer)):
        values["task.verbalizer:file"] = file_identity(Path(os.path.expanduser(verbalizer)))
    if config.classifier.model:
        values.update(model_identity(config.classifier.model, "classifier.model"))
    return values


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ (present in one fingerprint only included), sorted."""
    return sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))


def _describe(key: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    if ":files" in key:
        return key  # a changed file: its hashes say nothing to a reader
    missing = "(unset)"
    return f"{key} {stored.get(key, missing)!r} -> {current.get(key, missing)!r}"


def holds_results(folder: Path) -> bool:
    """Whether `folder` holds anything beyond what a run writes before its first result."""
    return folder.is_dir() and any(p.name not in NO_RESULTS for p in folder.iterdir())


def check_folder(folder: Path, fingerprint: Mapping[str, Any], what: str = "output_dir") -> None:
    """Raises ConfigError when `folder` holds results whose fingerprint is not `fingerprint`."""
    if not holds_results(folder):
        return
    way_out = (f"Use a new {what}, or rerun with --overwrite to delete the folder's old "
               "results.")
    path = folder / FINGERPRINT_FILE
    if not path.is_file():
        raise ConfigError(f"{what} {folder} holds results without a {FINGERPRINT_FILE} (not "
                          f"written by this jaxpet version, or not a jaxpet run), so they "
                          f"cannot be checked against this config. {way_out}")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable fingerprint ({e}). {way_out}") from None
    changed = differences(stored, fingerprint)
    if changed:
        shown = "; ".join(_describe(k, stored, fingerprint) for k in changed[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        raise ConfigError(f"{what} {folder} holds results of a different run: {len(changed)} "
                          f"key(s) differ: {shown}{more}. {way_out}")


def claim_folder(folder: Path, current: Mapping[str, Any], overwrite: bool,
                 main_process: bool) -> None:
    """What a run does first in its locked `folder`: with `overwrite`, deletes the old results;
    otherwise stops (ConfigError) when they come from another fingerprint, and removes what
    interrupted writes left behind. Only the main process deletes."""
    if overwrite:
        if main_process:
            clear_folder(folder)
        return
    check_folder(folder, current)
    if main_process:
        # the folder is locked: a temporary name in it is a dead write's, never read
        remove_leftovers(folder)


def write_fingerprint(folder: Path, fingerprint: Mapping[str, Any]) -> Path:
    return write_json(folder / FINGERPRINT_FILE, dict(fingerprint))


def clear_folder(folder: Path, what: str = "output_dir") -> None:
    """--overwrite: deletes everything in `folder` but its lock, refusing a folder that is not
    a jaxpet run (one without fingerprint.json or config.yaml), which might hold anything."""
    if not holds_results(folder):
        return
    if not any((folder / name).is_file() for name in (FINGERPRINT_FILE, "config.yaml")):
        raise ConfigError(f"--overwrite: {what} {folder} is not a jaxpet run folder (no "
                          f"{FINGERPRINT_FILE} or config.yaml); refusing to delete its files")
    for entry in folder.iterdir():
        if entry.name == ".jaxpet.lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    print(f"--overwrite: deleted the old results in {folder}")
