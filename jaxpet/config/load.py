"""Loading configs: YAML file <- dotted `key=value` overrides onto the dataclass defaults
through OmegaConf structured configs, so an unknown key or a value of the wrong type is an error
naming the key and the file; and writing the resolved config back as YAML."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from jaxpet.config.schema import Config, ConfigError, sections_read
from jaxpet.config.validate import validate


def _first_line(error: OmegaConfBaseException) -> str:
    return str(getattr(error, "msg", error)).splitlines()[0]


def merge_config(base: Any, other: Any, source: str) -> Any:
    """OmegaConf.merge whose errors name the unknown or mistyped key and `source`."""
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        if "not in" in _first_line(e):
            raise ConfigError(f"{source}: unknown config key '{key}'") from None
        raise ConfigError(f"{source}: bad value for '{key}': {_first_line(e)}") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """The YAML config file at `path` as an OmegaConf tree; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 text (byte {e.start})") from None
    if not isinstance(loaded, DictConfig):
        kind = type(loaded).__name__.removesuffix("Config").lower()
        raise ConfigError(f"{path}, line 1: the config must be a mapping of keys (method: ..., "
                          f"task: ...), not a {kind}")
    return loaded


def apply_overrides(merged: Any, overrides: list[str]) -> Any:
    """Merges dotted `key=value` overrides onto an OmegaConf tree; errors name the override."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {_first_line(e)}") from None
        merged = merge_config(merged, dot, f"override {item!r}")
    return merged


def check_sections(keys_by_source: Mapping[str, Iterable[str]], method: str) -> None:
    """ConfigError when a file or an override sets a section that `method` does not read (it
    would be ignored without a word, e.g. `pet.learning_rate` in a text2text config)."""
    read = sections_read(method)
    for source, keys in keys_by_source.items():
        for key in keys:
            if key not in read:
                raise ConfigError(f"{source}: config key '{key}' is not read by method "
                                  f"{method!r}, which reads {', '.join(read)}")


def fill_unread(merged: DictConfig, method: str) -> None:
    """Required keys of the sections `method` does not read get empty values: those sections
    keep their defaults and nothing reads them."""
    read = sections_read(method)
    for key in OmegaConf.missing_keys(merged):
        if key.split(".")[0] not in read:
            OmegaConf.update(merged, key, "")


def load_config(source: str | os.PathLike | Mapping[str, Any] | None = None,
                overrides: Sequence[str] = ()) -> Config:
    """Loads defaults <- YAML file (or a mapping) <- `key=value` overrides into a validated
    `Config`; `method` chooses the sections the file may set and a run reads."""
    merged = OmegaConf.structured(Config)
    keys_by_source: dict[str, list[str]] = {}
    name = "config"
    if source is not None:
        if isinstance(source, (str, os.PathLike)):
            name = str(source)
            tree = read_yaml(source)
        else:
            tree = source if isinstance(source, DictConfig) else OmegaConf.create(dict(source))
        merged = merge_config(merged, tree, name)
        keys_by_source[name] = [str(k) for k in tree]
    merged = apply_overrides(merged, list(overrides))
    for item in overrides:
        keys_by_source[f"override {item!r}"] = [item.split("=", 1)[0].split(".")[0]]
    check_sections(keys_by_source, merged.method)
    fill_unread(merged, merged.method)
    if merged.task.hf_dataset is not None and OmegaConf.is_missing(merged.task, "data_dir"):
        merged.task.data_dir = ""  # the splits come from task.hf_dataset, not from files
    if merged.text2text.max_steps == 0 and OmegaConf.is_missing(merged.text2text, "train_file"):
        merged.text2text.train_file = ""  # an evaluation-only run reads no training file
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        where = f" in {name}" if source is not None else ""
        raise ConfigError(f"missing required config key(s){where}: {', '.join(missing)}")
    config = OmegaConf.to_object(merged)
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """The sections the config's method reads, as plain nested dicts and lists."""
    read = sections_read(config.method)
    return {k: v for k, v in dataclasses.asdict(config).items() if k in read}


def to_yaml(config: Config) -> str:
    """The resolved config (the sections its method reads) as YAML; `load_config` reads it back
    to an equal `Config`."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(config)))
