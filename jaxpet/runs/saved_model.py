"""Saved models: a Hugging Face model folder plus `jaxpet.json`, what jaxpet needs to reuse it.

Every model a run trains (PET members of each scorer kind, iPET generations, the distilled
classifier) is written as one folder: the weights, config and tokenizer that transformers'
PyTorch classes load (`jaxpet.models.save_pretrained`), and `jaxpet.json` beside them with
what turns the bare model back into a PET model: the task, the pattern, the verbalizer, the
label names, the sequence length, the scorer kind and decoding strategy, and the resolved run
config (so a config-defined pattern is rebuilt exactly as in training). The folder is written
under a temporary name and renamed when complete, so it appears whole or not at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import jaxpet
from jaxpet.atomic import atomic_folder
from jaxpet.models.pretrained import write_model_files

CARD_FILE = "jaxpet.json"
CARD_FORMAT = 1
# How a model turns an example into label scores:
#   cloze: one mask, verbalizer logits; candidates: multi-token answers decoded mask by mask;
#   seq2seq: T5 scores each label's target text; classifier: a sequence classification head.
SCORERS = ("cloze", "candidates", "seq2seq", "classifier")
JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


class SavedModelError(ValueError):
    """A folder that is not a complete jaxpet model, with the file and key at fault."""


@dataclass(frozen=True)
class ModelCard:
    """The contents of `jaxpet.json`.

    `labels` are the label names in score order (column i of every score array is labels[i]);
    `verbalizer` maps each label name to its words (empty for the classifier); `pattern_id` is
    None for the classifier; `decoding` is the multi-mask strategy of a candidates scorer;
    `config` is the run's resolved config (jaxpet.config.to_dict) and `fingerprint` the run's
    fingerprint (jaxpet.runs.fingerprint.run_fingerprint) when the model came from a run.
    """

    scorer: str
    task: str
    labels: list[str]
    max_seq_length: int
    backbone: str
    pattern_id: int | None = None
    verbalizer: dict[str, list[str]] = field(default_factory=dict)
    decoding: str | None = None
    member: str | None = None
    config: dict[str, JsonValue] = field(default_factory=dict)
    fingerprint: dict[str, JsonValue] = field(default_factory=dict)
    jaxpet_version: str = ""
    format: int = CARD_FORMAT

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise SavedModelError(f"{CARD_FILE}: scorer {self.scorer!r} is not one of {SCORERS}")
        if not self.labels:
            raise SavedModelError(f"{CARD_FILE}: labels is empty")
        if self.scorer != "classifier" and self.pattern_id is None:
            raise SavedModelError(f"{CARD_FILE}: a {self.scorer} model needs pattern_id")


def card_to_json(card: ModelCard) -> str:
    return json.dumps(asdict(card), indent=2, sort_keys=True) + "\n"


def write_card(folder: str | os.PathLike, card: ModelCard) -> Path:
    """Writes `jaxpet.json` into an existing folder (one being filled by `write_model`)."""
    path = Path(folder) / CARD_FILE
    if not card.jaxpet_version:
        card = ModelCard(**{**asdict(card), "jaxpet_version": jaxpet.__version__})
    path.write_text(card_to_json(card))
    return path


def write_model(folder: str | os.PathLike, lm: object, card: ModelCard) -> Path:
    """Writes the model files of `lm` (a jaxpet.models.LoadedModel holding the trained params)
    and its card into `folder`, atomically; an existing folder of that name is replaced."""

    with atomic_folder(folder) as partial:
        write_model_files(lm, partial)
        write_card(partial, card)
    return Path(folder)


def read_card(folder: str | os.PathLike) -> ModelCard:
    """The card of a saved model folder; errors name the folder and the missing key."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise SavedModelError(
            f"{path}: not found; {Path(folder)} is not a model saved by jaxpet "
            "(a run saves one in each member folder's model/ and in distilled/model/)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SavedModelError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, Mapping):
        raise SavedModelError(f"{path}: expected a JSON object")
    known = {f.name for f in fields(ModelCard)}
    required = {"scorer", "task", "labels", "max_seq_length", "backbone"}
    missing = sorted(required - raw.keys())
    if missing:
        raise SavedModelError(f"{path}: missing key(s) {', '.join(missing)}")
    if raw.get("format", CARD_FORMAT) > CARD_FORMAT:
        raise SavedModelError(
            f"{path}: format {raw['format']} is newer than this jaxpet reads ({CARD_FORMAT}); "
            "upgrade jaxpet")
    try:
        return ModelCard(**{k: v for k, v in raw.items() if k in known})
    except SavedModelError as error:
        raise SavedModelError(f"{path}: {str(error).removeprefix(CARD_FILE + ': ')}") from None


def is_saved_model(folder: str | os.PathLike) -> bool:
    return (Path(folder) / CARD_FILE).is_file()
