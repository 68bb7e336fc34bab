"""Loading a `method: text2text` config: the one `jaxpet.config.Config` schema, method checked."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from jaxpet.config import TEXT2TEXT_SECTIONS, Config, ConfigError, load_config


def load_text2text_config(source: str | os.PathLike | Mapping[str, Any] | Config,
                          overrides: list[str] = (),
                          output_dir: str | os.PathLike | None = None) -> Config:
    """A validated `Config` whose method is text2text, from a YAML path, a mapping or a `Config`
    (or any dataclass with the text2text sections: only those are read). Dotted `key=value`
    overrides and `output_dir` are applied last."""
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        if not hasattr(source, "text2text"):
            raise ConfigError(f"{type(source).__name__} has no 'text2text' section")
        source = {k: OmegaConf.structured(getattr(source, k))
                  if dataclasses.is_dataclass(getattr(source, k)) else getattr(source, k)
                  for k in TEXT2TEXT_SECTIONS if hasattr(source, k)}
    elif not isinstance(source, (str, os.PathLike, Mapping, DictConfig)):
        raise TypeError(f"cannot read a text2text config from {type(source).__name__}")
    overrides = list(overrides)
    if output_dir is not None:
        # a JSON string is a YAML scalar that keeps any character of the path
        overrides.append(f"output_dir={json.dumps(str(output_dir))}")
    config = load_config(source, overrides)
    if config.method != "text2text":
        name = str(source) if isinstance(source, (str, os.PathLike)) else "config"
        raise ConfigError(f"{name}: config key 'method' must be 'text2text' for a text-to-text "
                          f"run, got {config.method!r}")
    return config
