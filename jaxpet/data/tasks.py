"""Task registry (`TaskSpec`, `get_task`, `register_task`) and `load_examples`.

A task is a label list, the file each split reads (relative to a data folder), and a reader
`reader(path, split) -> list[Example]`. The built-in tasks are those of the original PET
(see `readers_text` and `readers_superglue`); `register_task` adds Python-defined tasks and
`jaxpet.data.custom.task_from_config` adds tasks described by a config dict.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from jaxpet.data import readers_superglue, readers_text
from jaxpet.data.example import Example
from jaxpet.data.files import DataFileError
from jaxpet.data.sampling import sample_examples

SPLITS = ("train", "dev", "test", "unlabeled")

Reader = Callable[[str, str], list[Example]]


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its labels, which file each split reads, and how to read one file.

    `splits` maps a split name ("train", "dev", "test", "unlabeled") to a file name relative
    to the data folder; `reader(path, split)` turns that file into examples. `data_dir`
    (optional) is used when `load_examples` is given no data folder.
    """

    name: str
    labels: list[str]
    splits: dict[str, str]
    reader: Reader = field(repr=False)
    data_dir: str | None = None
    description: str = ""
    # split -> (source named in messages, examples): a task read from elsewhere than files
    # (jaxpet.data.hf_dataset); load_examples then uses neither `reader` nor a data folder
    load_split: Callable[[str], tuple[str, list[Example]]] | None = field(default=None,
                                                                            repr=False)

    def files(self, split: str) -> str:
        """The file name the given split reads, or a `KeyError` listing the task's splits."""
        if split not in self.splits:
            raise KeyError(
                f"task '{self.name}' has no '{split}' split; it has "
                f"{_describe_splits(self.splits)}")
        return self.splits[split]


class UnknownTaskError(KeyError):
    """No task is registered under the requested name; the message lists the known tasks."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


_TASKS: dict[str, TaskSpec] = {}
_BUILTIN: set[str] = set()


def _describe_splits(splits: Mapping[str, str]) -> str:
    return ", ".join(f"{s} <- {f}" for s, f in splits.items())


def register_task(
    name: str,
    reader: Reader,
    labels: Sequence[str],
    files: Mapping[str, str],
    *,
    overwrite: bool = False,
    data_dir: str | None = None,
    description: str = "",
    load_split: Callable[[str], tuple[str, list[Example]]] | None = None,
) -> TaskSpec:
    """Register a task defined in Python and return its `TaskSpec`.

    `files` maps split names to file names (relative to the data folder); `reader(path, split)`
    must return `Example`s whose labels are strings from `labels` (or None). `load_split(split)
    -> (source, examples)`, when given, reads the splits instead (no files, no data folder).
    Registering a name twice raises unless `overwrite=True`; built-in tasks can never be
    replaced.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"task name must be a non-empty string, got {name!r}")
    if name in _BUILTIN or (name in _TASKS and not overwrite):
        kind = "a built-in task" if name in _BUILTIN else "already registered"
        raise ValueError(f"task '{name}' is {kind}; choose another name"
                         + ("" if name in _BUILTIN else " or pass overwrite=True"))
    labels = [str(lab) for lab in labels]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"task '{name}': labels must be a non-empty list without duplicates, "
                         f"got {labels}")
    unknown = [s for s in files if s not in SPLITS]
    if unknown or not files:
        raise ValueError(f"task '{name}': files must map splits from {list(SPLITS)} to file "
                         f"names, got {dict(files)}")
    spec = TaskSpec(name=name, labels=labels, splits=dict(files), reader=reader,
                    data_dir=data_dir, description=description, load_split=load_split)
    _TASKS[name] = spec
    return spec


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The `TaskSpec` registered under `name` (a `TaskSpec` is returned as is)."""
    if isinstance(name, TaskSpec):
        return name
    if name not in _TASKS:
        raise UnknownTaskError(
            f"unknown task '{name}'; known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def task_names() -> list[str]:
    """The names of all registered tasks, sorted."""
    return sorted(_TASKS)


def load_examples(
    task: str | TaskSpec,
    data_dir: str | os.PathLike | None,
    split: str,
    num_examples: int = -1,
    seed: int = 42,
    split_examples_evenly: bool = False,
) -> list[Example]:
    """Read one split of a task and optionally restrict it to a few-shot sample.

    `split` is one of "train", "dev", "test", "unlabeled". Every example of the "unlabeled"
    split has `label=None` (the original PET sets the first label instead); which file that
    split reads is part of the task (`get_task(name).splits`): the text tasks (yelp, agnews,
    yahoo, mnli, xstance) read their training file and drop its labels, the SuperGLUE tasks
    read `unlabeled.jsonl`.

    Sampling:
    * `num_examples=-1`: all examples, in file order.
    * `num_examples=0`: no examples. The original PET treats 0 as "all"; jaxpet does not.
    * `num_examples=N>0`: if N is smaller than the split, a copy of the examples is shuffled
      with `random.Random(seed).shuffle` and the first N are kept (the original PET's
      procedure, so samples match it); otherwise all examples are returned in file order.
    * `split_examples_evenly=True`: the first `eq_div(N, |labels|)[i]` examples of the i-th
      label in file order (the earlier labels take the remainder), result in file order;
      `seed` is unused. A label with too few examples yields a warning. Not allowed for the
      "unlabeled" split, whose examples carry no label.

    Errors name the file and line: a missing file (with the file names the task expects), a
    malformed row or JSON line, a missing field, an unknown label, a split with no examples.
    """
    spec = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int):
        raise TypeError(f"num_examples must be an int, got {num_examples!r}")
    if split_examples_evenly and split == "unlabeled":
        raise ValueError("split_examples_evenly cannot be used for the 'unlabeled' split: "
                         "its examples carry no label")
    try:
        file_name = spec.files(split)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if spec.load_split is not None:
        path, examples = spec.load_split(split)
    else:
        path = _split_file(spec, data_dir, split, file_name)
        examples = spec.reader(path, split)
    if not examples:
        raise DataFileError(path, f"the '{split}' split of task '{spec.name}' has no examples")
    for example in examples:
        if example.label is not None and example.label not in spec.labels:
            raise DataFileError(path, f"example {example.guid!r} has unknown label "
                                f"{example.label!r}; task '{spec.name}' has labels {spec.labels}")
    if split == "unlabeled":
        examples = [dataclasses.replace(e, label=None) if e.label is not None else e
                    for e in examples]
    return sample_examples(examples, spec.labels, num_examples, seed, split_examples_evenly,
                           source=f"{path} ({spec.name}, {split})")


def _split_file(spec: TaskSpec, data_dir: str | os.PathLike | None, split: str,
                file_name: str) -> str:
    """The path of the file `split` reads; errors name the folder and the task's files."""
    if data_dir is None:
        data_dir = spec.data_dir
        if data_dir is None:
            raise ValueError(f"task '{spec.name}': no data_dir given and the task has none")
    path = os.path.join(os.fspath(data_dir), file_name)
    if not os.path.isfile(path):
        folder = "" if os.path.isdir(data_dir) else f" (the folder {data_dir} does not exist)"
        raise FileNotFoundError(
            f"{path}: file not found{folder}; task '{spec.name}' reads its '{split}' split from "
            f"'{file_name}' (all files of this task: {_describe_splits(spec.splits)})")
    return path


def _register_builtins() -> None:
    for module in (readers_text, readers_superglue):
        for name, (reader, labels, files) in module.TASKS.items():
            register_task(name, reader, labels, files)
            _BUILTIN.add(name)


_register_builtins()
