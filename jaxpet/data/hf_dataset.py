"""Task splits read from a Hugging Face dataset (`task.hf_dataset`): a hub name or a local
folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.

Config (a mapping; every key but `path` optional)::

    hf_dataset:
      path: data/agnews_hf        # a save_to_disk folder, or a hub name (needs a network)
      name: null                  # the hub dataset's configuration (e.g. "rte" of super_glue)
      splits: {train: train, dev: test, test: test, unlabeled: train}   # jaxpet <- dataset
      columns: {text_a: title, text_b: description, label: label, guid: null}

`splits` maps jaxpet's splits to the dataset's; an unmapped split reads the first dataset
split that exists among: the stem of the file the task reads for it (agnews' dev reads
test.csv: "test"), its own name, "validation" (dev), "train" (unlabeled). A folder written by
`Dataset.save_to_disk` is one split named "train".

`columns` maps the Example fields to the dataset's columns. Defaults: text_a "text_a";
text_b, label and guid the columns of those names when present (guid falls back to an `idx`
column, giving "<split>-<idx>" as the SuperGLUE readers do, else "<split>-<row>"); null
switches a field off. Labels become the task's label strings: a string is a label name; an
integer is a class index into the task's labels, unless the column is a `ClassLabel` whose
names are all task labels (then its names are used); null or -1 means unlabeled, allowed in
the test and unlabeled splits only. Texts are taken as stored (the CSV readers' backslash
clean-up belongs to PET's CSV dumps). Tasks whose examples need more than two texts and a
label (copa, wic, wsc, multirc, record) cannot read a dataset.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

from jaxpet.data.example import Example
from jaxpet.data.tasks import SPLITS, TaskSpec, register_task

KEYS = ("path", "name", "splits", "columns")
COLUMNS = ("text_a", "text_b", "label", "guid")
# built-in tasks whose examples carry fields beyond text_a / text_b / label (meta)
NEEDS_MORE_FIELDS = ("copa", "wic", "wsc", "multirc", "record")
# dataset splits tried, after the task file's stem and the split's own name
_FALLBACK_SPLITS = {"dev": ("validation",), "unlabeled": ("train",)}
_LABELED_SPLITS = ("train", "dev")


class HfDatasetError(ValueError):
    """A `task.hf_dataset` setting jaxpet cannot use; the message names the key."""


def _fail(key: str, message: str) -> HfDatasetError:
    return HfDatasetError(f"config key 'task.hf_dataset.{key}': {message}")


def check_config(cfg: Any) -> dict[str, Any]:
    """The validated `task.hf_dataset` mapping (path, name, splits, columns filled in)."""
    if not isinstance(cfg, Mapping):
        raise HfDatasetError(f"config key 'task.hf_dataset' must be a mapping {{path: ..., "
                             f"columns: ...}}, got {cfg!r}")
    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise _fail(unknown[0], f"unknown key; allowed keys are {list(KEYS)}")
    path = cfg.get("path")
    if not isinstance(path, str) or not path:
        raise _fail("path", f"must be a save_to_disk folder or a hub dataset name, got {path!r}")
    name = cfg.get("name")
    if name is not None and not isinstance(name, str):
        raise _fail("name", f"must be a dataset configuration name, got {name!r}")
    splits = dict(cfg.get("splits") or {})
    for split, value in splits.items():
        if split not in SPLITS:
            raise _fail(f"splits.{split}", f"unknown split; jaxpet's splits are {list(SPLITS)}")
        if not isinstance(value, str) or not value:
            raise _fail(f"splits.{split}", f"must name a split of the dataset, got {value!r}")
    columns = dict(cfg.get("columns") or {})
    for key, value in columns.items():
        if key not in COLUMNS:
            raise _fail(f"columns.{key}", f"unknown field; the fields are {list(COLUMNS)}")
        if value is not None and (not isinstance(value, str) or not value):
            raise _fail(f"columns.{key}", f"must name a column (or be null), got {value!r}")
    if columns.get("text_a", "text_a") is None:
        raise _fail("columns.text_a", "cannot be null: every example needs a text")
    return {"path": path, "name": name, "splits": splits, "columns": columns}


def local_folder(cfg: Mapping[str, Any]) -> str | None:
    """The save_to_disk folder `cfg` reads, or None for a hub name."""
    path = os.path.expanduser(str(cfg.get("path") or ""))
    return path if path and os.path.isdir(path) else None


def load_splits(path: str, name: str | None = None, key: str = "task.hf_dataset"
                ) -> dict[str, Any]:
    """{split name: datasets.Dataset} of a save_to_disk folder (a Dataset folder is the one
    split "train") or a hub dataset; errors name the path and the config key (`key`.path)."""
    try:
        import datasets  # optional (jaxpet[datasets]), and slow to import
    except ImportError:
        raise HfDatasetError(f"config key '{key}' needs the datasets package: pip install "
                             "jaxpet[datasets]") from None
    folder = os.path.expanduser(path)
    if os.path.isdir(folder):
        if name is not None:
            raise HfDatasetError(f"config key '{key}.name' applies to hub datasets; {path} is "
                                 "a save_to_disk folder")
        try:
            loaded = datasets.load_from_disk(folder)
        except FileNotFoundError:
            raise HfDatasetError(f"{path}: not a folder written by Dataset.save_to_disk or "
                                 f"DatasetDict.save_to_disk (config key '{key}.path')") from None
    elif os.path.exists(folder) or path.startswith((os.sep, ".", "~")):
        what = "not a folder" if os.path.exists(folder) else "no such folder"
        raise HfDatasetError(f"{path}: {what} (config key '{key}.path': a save_to_disk "
                             "folder or a hub dataset name)")
    else:
        try:
            loaded = datasets.load_dataset(path, name)
        except Exception as error:  # offline, unknown name, bad config: one line for the user
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise HfDatasetError(f"{path}: not a local folder, and loading it from the Hugging "
                                 f"Face hub failed: {type(error).__name__}: {message} (config "
                                 f"key '{key}.path')") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _file_stem(spec: TaskSpec | None, split: str) -> list[str]:
    if spec is None or split not in spec.splits:
        return []
    stem = os.path.basename(spec.splits[split]).split(".")[0]
    return [stem] if stem else []


def dataset_split(cfg: Mapping[str, Any], spec: TaskSpec | None, split: str,
                  available: list[str]) -> str:
    """The dataset split that jaxpet's `split` reads; an error lists the splits there are."""
    if split in cfg["splits"]:
        chosen = cfg["splits"][split]
        if chosen not in available:
            raise HfDatasetError(f"{cfg['path']}: no split {chosen!r} (config key "
                                 f"'task.hf_dataset.splits.{split}'); the dataset has "
                                 f"{available}")
        return chosen
    candidates = list(dict.fromkeys([*_file_stem(spec, split), split,
                                     *_FALLBACK_SPLITS.get(split, ())]))
    for candidate in candidates:
        if candidate in available:
            return candidate
    raise HfDatasetError(f"{cfg['path']}: no split for jaxpet's '{split}' split (tried "
                         f"{candidates}); the dataset has {available}: map one with "
                         f"task.hf_dataset.splits.{split}")


def _columns(cfg: Mapping[str, Any], present: list[str], where: str, split: str
             ) -> dict[str, str]:
    """Example field -> dataset column; a named column that is missing is an error."""
    chosen = {}
    for key in COLUMNS:
        if key in cfg["columns"]:
            column = cfg["columns"][key]
            if column is None:
                continue
            if column not in present and not (key == "label" and split not in _LABELED_SPLITS):
                raise HfDatasetError(f"{where}: no column {column!r} (config key "
                                     f"'task.hf_dataset.columns.{key}'); its columns are "
                                     f"{present}")
            if column in present:
                chosen[key] = column
        elif key == "text_a":
            if "text_a" not in present:
                raise HfDatasetError(f"{where}: no column 'text_a' (the default of config key "
                                     f"'task.hf_dataset.columns.text_a'); its columns are "
                                     f"{present}")
            chosen[key] = "text_a"
        elif key == "guid" and "guid" not in present and "idx" in present:
            chosen["idx"] = "idx"
        elif key in present:
            chosen[key] = key
    if "label" not in chosen and split in _LABELED_SPLITS:
        column = cfg["columns"].get("label", "label")
        raise HfDatasetError(f"{where}: the '{split}' split needs labels but there is no "
                             f"column {column!r} (config key 'task.hf_dataset.columns.label'); "
                             f"its columns are {present}")
    return chosen


def _label_mapper(feature: Any, labels: list[str], where: str, column: str, split: str):
    """value -> task label (or None); errors name the row and the column."""
    names = list(getattr(feature, "names", None) or [])
    by_name = bool(names) and all(n in labels for n in names)

    def convert(value: Any, row: int) -> str | None:
        at = f"{where}, row {row}, column {column!r}"
        if value is None or (isinstance(value, int) and not isinstance(value, bool)
                             and value == -1):
            if split in _LABELED_SPLITS:
                raise HfDatasetError(f"{at}: no label ({value!r}) in the '{split}' split")
            return None
        if isinstance(value, bool):
            value = str(value)
        if isinstance(value, int):
            if by_name and 0 <= value < len(names):
                return names[value]
            if not 0 <= value < len(labels):
                raise HfDatasetError(f"{at}: class index {value} is outside the task's "
                                     f"{len(labels)} labels {labels} (an integer label is a "
                                     f"class index 0..{len(labels) - 1}; store label names as "
                                     "strings)")
            return labels[value]
        if isinstance(value, str):
            if value not in labels:
                raise HfDatasetError(f"{at}: unknown label {value!r}; the task's labels are "
                                     f"{labels}")
            return value
        raise HfDatasetError(f"{at}: a label must be a label name or an integer class index, "
                             f"got {value!r}")

    return convert


def read_split(cfg: Mapping[str, Any], spec: TaskSpec | None, labels: list[str], split: str,
               splits: Mapping[str, Any] | None = None) -> tuple[str, list[Example]]:
    """(where, examples) of jaxpet's `split`; `where` names the dataset and its split.
    `splits` ({name: datasets.Dataset}) is the dataset when already loaded."""
    if splits is None:
        splits = load_splits(cfg["path"], cfg["name"])
    chosen = dataset_split(cfg, spec, split, sorted(splits))
    dataset = splits[chosen]
    where = f"{cfg['path']} [split {chosen!r}]"
    columns = _columns(cfg, list(dataset.column_names), where, split)
    values = dataset.select_columns(list(dict.fromkeys(columns.values()))).to_dict()
    label_of = None
    if "label" in columns:
        label_of = _label_mapper(dataset.features[columns["label"]], labels, where,
                                 columns["label"], split)
    examples = []
    for row in range(len(dataset)):
        texts = {}
        for key in ("text_a", "text_b"):
            if key not in columns:
                continue
            text = values[columns[key]][row]
            if not isinstance(text, str) and not (key == "text_b" and text is None):
                raise HfDatasetError(f"{where}, row {row}, column {columns[key]!r}: should be "
                                     f"text, got {text!r}")
            texts[key] = text
        label = label_of(values[columns["label"]][row], row) if label_of else None
        meta = {}
        if "guid" in columns:
            guid = str(values[columns["guid"]][row])
        elif "idx" in columns:
            meta["idx"] = values["idx"][row]
            guid = f"{split}-{meta['idx']}"
        else:
            guid = f"{split}-{row}"
        examples.append(Example(guid=guid, text_a=texts["text_a"], text_b=texts.get("text_b"),
                                label=label, meta=meta))
    return where, examples


def hf_task(cfg: Any, name: str, labels: list[str] | None = None,
            base: TaskSpec | None = None) -> TaskSpec:
    """A TaskSpec of task `name` whose splits come from the dataset `cfg` (task.hf_dataset).

    `base` is the built-in (or registered) task it replaces the files of: its labels, and its
    file names to choose the dataset's splits; a config-defined task gives `labels` instead.
    """
    valid = check_config(cfg)
    if base is not None and base.name in NEEDS_MORE_FIELDS:
        raise HfDatasetError(f"config key 'task.hf_dataset': task {base.name!r} needs fields "
                             "beyond text_a, text_b and label in its examples; read it from "
                             "its files (task.data_dir)")
    labels = [str(label) for label in (labels if labels is not None else base.labels)]
    source = f"hf:{valid['path']}" + (f"/{valid['name']}" if valid["name"] else "")
    dataset = functools.cache(lambda: load_splits(valid["path"], valid["name"]))  # once a spec

    def load_split(split: str) -> tuple[str, list[Example]]:
        return read_split(valid, base, labels, split, dataset())

    return TaskSpec(name=name, labels=labels, splits={s: source for s in SPLITS},
                    reader=lambda path, split: [], description=base.description if base else "",
                    load_split=load_split)


def with_dataset(spec: TaskSpec, cfg: Any) -> TaskSpec:
    """`spec` reading its splits from the dataset `cfg` (task.hf_dataset; None: `spec`)."""
    if cfg is None or spec.load_split is not None:  # a config-defined task reads it already
        return spec
    return hf_task(cfg, spec.name, base=spec)


def register_hf_task(name: str, definition: Mapping[str, Any], cfg: Any) -> TaskSpec:
    """Registers the config-defined task `name` (task.definition: its `labels`; the file keys
    are not used) reading its splits from the dataset `cfg` (task.hf_dataset)."""
    labels = definition.get("labels") if isinstance(definition, Mapping) else None
    if isinstance(labels, str) or not labels or not all(
            isinstance(label, str | int) and not isinstance(label, bool) for label in labels):
        raise HfDatasetError("config key 'task.definition.labels' must be a non-empty list of "
                             f"label strings (task.hf_dataset is set), got {labels!r}")
    spec = hf_task(cfg, name, [str(label) for label in labels])
    return register_task(name, spec.reader, spec.labels, spec.splits, overwrite=True,
                         description=str(definition.get("description") or ""),
                         load_split=spec.load_split)


__all__ = ["HfDatasetError", "check_config", "hf_task", "load_splits", "local_folder", "read_split",
           "register_hf_task", "with_dataset"]
