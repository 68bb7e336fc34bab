"""The output folder of a run: atomic JSON/YAML/.npy/.jsonl writes and the training-metrics log.

Every file is written to a temporary name in the same folder and renamed into place, so a killed
run never leaves a half-written results file behind.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxpet.atomic import atomic_write
from jaxpet.config import ConfigError


def _to_builtin(value: Any) -> Any:
    """Converts numpy/jax scalars and arrays so that `json` can write them."""
    if isinstance(value, Mapping):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if hasattr(value, "tolist"):
        return _to_builtin(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically writes a text file."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically writes `data` as indented JSON."""
    return write_text(path, json.dumps(_to_builtin(data), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Atomically writes one JSON object per line."""
    lines = "".join(json.dumps(_to_builtin(r)) + "\n" for r in records)
    return write_text(path, lines)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically writes a numpy array in .npy format."""
    return atomic_write(path, lambda f: np.save(f, np.asarray(array)), binary=True)


def member_dir(output_dir: str | os.PathLike, pattern_id: int, repetition: int) -> Path:
    """Folder of one trained model: `p{P}-s{S}` (S = repetition index)."""
    return Path(output_dir) / f"p{pattern_id}-s{repetition}"


class MetricsWriter:
    """Appends one JSON line per logged step to `metrics.jsonl` (and optionally TensorBoard).

    `write(step, {"loss": ..., "lr": ..., "grad_norm": ..., "examples_per_s": ...})`. A line is
    flushed as soon as it is written, so the log survives a crash up to its last step.
    """

    def __init__(self, directory: str | os.PathLike, tensorboard: bool = False):
        import jax  # deferred: `jaxpet report` reads run folders without loading JAX

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self._file = None
        self._tb = None
        # Every process of a multi-process run holds the same global metrics; only process 0
        # logs them, so that a folder the processes share gets each step once.
        if jax.process_index() != 0:
            return
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # optional: jaxpet[tensorboard]
            except ImportError as e:
                raise RuntimeError(
                    "logging.tensorboard=true needs tensorboardX: pip install "
                    "jaxpet[tensorboard] (or pip install tensorboardX)"
                ) from e
            self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        record = {"step": int(step), **{k: _to_builtin(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, int(step))

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.write(step, metrics)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ThroughputLog:
    """Wraps a batch function and a MetricsWriter to add tokens/s (attended tokens) to the log.

    `write(step, ...)` covers the batches of steps < `step` not yet counted (a logged step is
    the number of steps done), over the time since the previous write.
    """

    def __init__(self, batch_fn: Any, writer: MetricsWriter):
        self.batch_fn, self.writer = batch_fn, writer
        self.tokens_by_step: dict[int, int] = {}
        self.since = time.perf_counter()

    def batch(self, step: int) -> dict[str, np.ndarray]:
        batch = self.batch_fn(step)
        self.tokens_by_step[step] = int(
            sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask")))
        return batch

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        now = time.perf_counter()
        done = [s for s in self.tokens_by_step if s < step]
        tokens = sum(self.tokens_by_step.pop(s) for s in done)
        metrics = {**metrics, "tokens_per_s": tokens / max(now - self.since, 1e-9)}
        self.since = now
        self.writer.write(step, metrics)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_output_dir(out: Path) -> None:
    """A one-line error for an output_dir that names a file (or has a file among its parents)."""
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"config key 'output_dir' ({out}): {folder} exists and is not a "
                              "folder")
