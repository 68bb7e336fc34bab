"""The saved models that answer for a run folder (its final model) or a model folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxpet.runs.saved_model import SavedModelError, is_saved_model

__all__ = ["final_model_folders", "member_folders", "member_weights"]


def final_model_folders(path: str | Path) -> tuple[str, list[Path]]:
    """(source, saved model folders) that answer for `path`: ("model", [path]) for a saved model
    folder (a member folder p0-s0 or distilled/ may be named without model/); for a run folder
    its final model: ("distilled", [distilled/model]) when saved, else ("ensemble", its saved
    members, see member_folders), else ("model", [its classifier]) of a sequence_classifier
    run. Errors name the path and what it lacks."""
    path = Path(path)
    if not is_saved_model(path) and is_saved_model(path / "model"):
        path = path / "model"
    if is_saved_model(path):
        return "model", [path]
    if is_saved_model(path / "distilled" / "model"):
        return "distilled", [path / "distilled" / "model"]
    folders = member_folders(path) if path.is_dir() else []
    classifiers = sorted(c for c in path.glob("sc-s*/model") if is_saved_model(c))
    if not folders and classifiers:  # method sequence_classifier: its classifier(s)
        if len(classifiers) > 1:
            raise SavedModelError(
                f"{path}: a sequence_classifier run with {len(classifiers)} classifiers, which "
                f"the run does not merge; name one: {', '.join(map(str, classifiers))}")
        return "model", [classifiers[0]]
    if not folders:
        what = "does not exist" if not path.exists() else (
            "is not a folder" if not path.is_dir() else "holds no jaxpet.json")
        raise SavedModelError(
            f"{path}: neither a saved model folder nor a run folder with saved models ({path} "
            f"{what}; a run saves p*-s*/model, g*/p*-s*/model and distilled/model)")
    return "ensemble", folders


def member_folders(run: Path) -> list[Path]:
    """The saved members of a run's final ensemble: `p*-s*/model`, or for iPET those of its
    last generation `g*/p*-s*/model`; sorted by member name, as jaxpet.pipelines.distill merges
    them."""
    def saved(folder: Path) -> list[Path]:
        return sorted((m / "model" for m in folder.glob("p*-s*") if is_saved_model(m / "model")),
                      key=lambda p: p.parent.name)

    members = saved(run)
    if members:
        return members
    generations = sorted((g for g in run.glob("g*") if g.name[1:].isdigit()),
                         key=lambda g: int(g.name[1:]))
    return saved(generations[-1]) if generations else []


def member_weights(folders: Sequence[Path], reduction: str) -> np.ndarray | None:
    """`wmean` weights: each member's labeled-set accuracy before training (its results.json,
    as jaxpet.pipelines.distill.merge_members takes them)."""
    if reduction != "wmean":
        return None
    weights = []
    for folder in folders:
        results = folder.parent / "results.json"
        try:
            weights.append(float(json.loads(results.read_text())["train_set_before_training"]))
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise SavedModelError(f"{results}: no train_set_before_training, the member's "
                                  f"weight in the run's wmean merge ({error})") from None
    return np.asarray(weights)
