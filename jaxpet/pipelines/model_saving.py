"""Which trained models a run saves (config `output.save_models`), and their jaxpet.json cards.

A run writes each model it keeps with jaxpet.runs.saved_model.write_model: a PET member (every
scorer kind, every iPET generation) to `<member folder>/model/`, the distilled classifier to
`distilled/model/`, a supervised baseline to `sc-s{S}/model/`. `output.save_models` chooses
which: "all" of them, only the run's "final" model(s) (the distilled classifier; without
distillation the members of the last generation; the classifiers of method
sequence_classifier), or "none". A finished model reused on a rerun must already have the
folder its setting asks for: a rerun cannot write a model whose parameters are gone, so it stops
and says how to get one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxpet.config import Config, ConfigError, to_dict
from jaxpet.models import LoadedModel
from jaxpet.pipelines.setup import TaskData, verbalizer_file
from jaxpet.prompts import get_pvp
from jaxpet.runs import fingerprint
from jaxpet.runs.saved_model import ModelCard, is_saved_model, write_model

MODEL_FOLDER = "model"


def wants_model(config: Config, final: bool) -> bool:
    """Whether `output.save_models` keeps a model that is (or is not) one of the run's final
    models."""
    setting = config.output.save_models
    return setting == "all" or (setting == "final" and final)


def member_is_final(config: Config, generation_last: bool = True) -> bool:
    """A PET member is a final model when nothing is distilled from its ensemble, and (iPET)
    it belongs to the last generation."""
    return config.no_distillation and generation_last


def member_name(folder: Path) -> str:
    """`p0-s1`, or `g1/p0-s0` for a member of an iPET generation."""
    parent = folder.parent.name
    return f"{parent}/{folder.name}" if re.fullmatch(r"g\d+", parent) else folder.name


def check_reused(config: Config, folder: Path, final: bool) -> None:
    """A finished model folder reused on a rerun: stops when `output.save_models` asks for its
    model and the run that trained it did not save one."""
    if not wants_model(config, final) or is_saved_model(folder / MODEL_FOLDER):
        return
    raise ConfigError(
        f"{folder}: results.json exists but {folder / MODEL_FOLDER} was not saved (its run had "
        f"another output.save_models, or an older jaxpet trained it), and output.save_models="
        f"{config.output.save_models!r} asks for it. Rerun with --overwrite to train it again, "
        "or set output.save_models to 'none' (or 'final' if it is not a final model)")


def run_fingerprint(config: Config) -> dict[str, Any]:
    """The run's fingerprint as its folder stores it (written before any model trains), or
    computed when the folder has none."""
    stored = Path(config.output_dir) / fingerprint.FINGERPRINT_FILE
    if stored.is_file():
        return json.loads(stored.read_text(encoding="utf-8"))
    return fingerprint.run_fingerprint(config)


def backbone(lm: LoadedModel) -> str:
    """The model family of a loaded model (bert, roberta, xlm-roberta, albert, t5, mt5)."""
    return str(getattr(lm.config, "model_type", "t5"))


def host_params(params: Any) -> Any:
    """The parameters as host numpy arrays (gathered from every process when sharded)."""
    def to_host(leaf: Any) -> np.ndarray:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            # a collective: every process gathers the same leaves in the same (tree) order
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))

    return jax.tree.map(to_host, params)


def save(folder: Path, lm: LoadedModel, params: Any, card: ModelCard) -> Path | None:
    """Writes `lm` with `params` and `card` to `folder/model` (atomically), from process 0."""
    params = host_params(params)
    if jax.process_index() != 0:
        return None
    return write_model(folder / MODEL_FOLDER, dataclasses.replace(lm, params=params), card)


def pattern_card(config: Config, lm: LoadedModel, data: TaskData, pattern: Any,
                 folder: Path) -> ModelCard:
    """The card of a PET member: its scorer kind, pattern, verbalizer and the run config."""

    scorer = pattern.scorer
    pvp = get_pvp(data.name, pattern.pattern_id, verbalizer_file(config))
    verbalizer: dict[str, list[str]] = {}
    try:
        verbalizer = {label: list(pvp.verbalize(label)) for label in data.labels}
    except (KeyError, NotImplementedError, TypeError, ValueError):
        pass  # multi-token tasks whose answers are each example's choices: no label words
    return ModelCard(
        scorer=scorer.kind, task=data.name, labels=list(data.labels),
        max_seq_length=config.pet.max_seq_length, backbone=backbone(lm),
        pattern_id=pattern.pattern_id, verbalizer=verbalizer,
        decoding=scorer.decoding,
        member=member_name(folder), config=to_dict(config), fingerprint=run_fingerprint(config))


def save_member(config: Config, lm: LoadedModel, params: Any, data: TaskData, pattern: Any,
                folder: Path, final: bool) -> None:
    """Saves a trained PET member to `folder/model` when `output.save_models` keeps it."""
    if wants_model(config, final):
        save(folder, lm, params, pattern_card(config, lm, data, pattern, folder))


def with_label_names(lm: LoadedModel, labels: list[str]) -> Any:
    """`lm` whose Hugging Face config names the labels (id2label / label2id), so that a
    transformers pipeline answers with the task's label names."""
    id2label = {str(i): str(name) for i, name in enumerate(labels)}
    extra = {**lm.config.hf_extra, "id2label": id2label,
             "label2id": {name: i for i, name in enumerate(map(str, labels))}}
    return dataclasses.replace(lm, config=dataclasses.replace(lm.config, hf_extra=extra))


def save_classifier(config: Config, lm: LoadedModel, params: Any, labels: list[str], folder: Path,
                    final: bool) -> None:
    """Saves a trained sequence classifier (distilled or baseline) to `folder/model` when
    `output.save_models` keeps it, with its label names in config.json."""
    if not wants_model(config, final):
        return
    card = ModelCard(scorer="classifier", task=config.task.name, labels=list(labels),
                     max_seq_length=config.classifier.max_seq_length, backbone=backbone(lm),
                     member=member_name(folder), config=to_dict(config),
                     fingerprint=run_fingerprint(config))
    save(folder, with_label_names(lm, labels), params, card)
