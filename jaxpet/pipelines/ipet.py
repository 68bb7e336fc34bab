"""The iPET pipeline: generations of PET ensembles in `OUT/g{G}/`, each member of generation g+1
trained on the labeled set plus examples that the *other* members of generation g labeled.

Generation g (0-based) adds int(|T| d^(g+1) - |T|) examples per member (d = ipet.scale_factor)
in the labeled set's label ratio, drawn as jaxpet.pipelines.ipet_sets does; they get hard labels.
The sets are
saved in `g{G}/next-gen/p{P}-s{S}.json` (unlabeled indices and label ids) and reused on a
restart. After the last generation its merged scores are distilled, as in PET.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxpet.config import Config
from jaxpet.pipelines.distill import finish_ensemble, merge_members, run_classifier
from jaxpet.pipelines.ensemble import prepare_pet, train_ensemble, warmed_up_encoder
from jaxpet.pipelines.ipet_sets import (
    PseudoLabeledSet,
    examples_per_label,
    generate_train_sets,
    num_new_examples,
)
from jaxpet.pipelines.model_saving import member_is_final
from jaxpet.pipelines.setup import TaskData
from jaxpet.runs import outputs


def next_generation_sets(config: Config, data: TaskData, generation_dir: Path,
                         members: Mapping[str, Any], generation: int
                         ) -> dict[str, PseudoLabeledSet]:
    """The pseudo-labeled sets of the next generation, one per member (saved, or reused)."""
    folder = generation_dir / "next-gen"
    names = sorted(members)
    if all((folder / f"{name}.json").exists() for name in names):
        print(f"{folder}: reusing the saved next-generation training sets")
        saved = {name: outputs.read_json(folder / f"{name}.json") for name in names}
        return {name: PseudoLabeledSet(np.asarray(s["unlabeled_indices"], np.int64),
                                       np.asarray(s["label_ids"], np.int64))
                for name, s in saved.items()}
    settings = config.ipet
    num_new = num_new_examples(len(data.train), generation, settings.scale_factor)
    quotas = examples_per_label([e.label for e in data.train], data.labels, num_new)
    logits = {name: np.load(generation_dir / name / "unlabeled_logits.npy") for name in names}
    weights = {name: members[name]["train_set_before_training"] for name in names}
    sets = generate_train_sets(
        logits, weights, quotas, logits_percentage=settings.logits_percentage,
        reduction=config.pet.reduction,
        n_most_likely=settings.n_most_likely if generation == 0 else -1,
        seed=config.seed)  # PET draws every generation's sets with the run's one seed
    for name, pseudo in sets.items():
        outputs.write_json(folder / f"{name}.json", {
            "generation": generation, "quota_per_label": quotas,
            "unlabeled_indices": pseudo.unlabeled_indices, "label_ids": pseudo.label_ids,
            "labels": [data.labels[i] for i in pseudo.label_ids]})
    print(f"g{generation}: {num_new} new examples per member for generation g{generation + 1}")
    return sets


def member_train_arrays(labeled: Mapping[str, np.ndarray], unlabeled: Mapping[str, np.ndarray],
                        pseudo: PseudoLabeledSet) -> dict[str, np.ndarray]:
    """The labeled arrays followed by the chosen unlabeled rows with their hard labels."""
    rows = pseudo.unlabeled_indices
    arrays = {}
    for key, values in labeled.items():
        extra = (pseudo.label_ids.astype(values.dtype) if key == "labels"
                 else np.asarray(unlabeled[key])[rows])
        arrays[key] = np.concatenate([values, extra.astype(values.dtype)])
    return arrays


def run_ipet(config: Config, data: TaskData, mesh: Mesh, out: Path) -> dict[str, Any]:
    """All generations, then the merge and distillation of the last one."""
    if not data.unlabeled:
        raise ValueError("method ipet needs unlabeled examples (task.unlabeled_examples)")
    lm, params, patterns, results = prepare_pet(config, data, mesh, out)
    by_id = {p.pattern_id: p for p in patterns}
    generations: dict[str, Any] = {}
    train_sets = None
    last = config.ipet.generations - 1
    for generation in range(config.ipet.generations):
        folder = out / f"g{generation}"
        stage = train_ensemble(config, lm, params, patterns, data, mesh, folder, train_sets,
                               final=member_is_final(config, generation == last))
        if generation < last:
            stage["ensemble"] = merge_members(config, data, folder, stage["members"],
                                              folder / "ensemble")
            sets = next_generation_sets(config, data, folder, stage["members"], generation)
            train_sets = {}
            for name, pseudo in sets.items():
                pattern = by_id[stage["members"][name]["pattern_id"]]
                train_sets[name] = member_train_arrays(pattern.train, pattern.unlabeled, pseudo)
        generations[f"g{generation}"] = stage
    final = generations[f"g{last}"]
    encoder = warmed_up_encoder(config, params)
    final.update(finish_ensemble(config, data, mesh, out, folder, final["members"], encoder))
    results["generations"] = generations
    for key in ("members", "patterns", "pet", "ensemble", "distilled"):
        if key in final:
            results[key] = final[key]
    if config.classifier.baseline:
        results["classifier"] = run_classifier(config, data, mesh, out, encoder)
    return results
