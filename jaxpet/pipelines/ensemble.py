"""One PET ensemble: the masked LM, every pattern's encoded sets, the MLM warm-up and zero-shot
scores, then every pattern x repetition member in `OUT/p{P}-s{S}` (jaxpet.pipelines.member),
trained one by one or together (jaxpet.pipelines.parallel_members). PET trains one ensemble,
iPET one per generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxpet.config import Config
from jaxpet.engine.sharding import check_batch_sizes
from jaxpet.models import LoadedModel
from jaxpet.pipelines import mlm_pretrain
from jaxpet.pipelines.member import (
    PatternData,
    aggregate,
    check_decoder_memory,
    place_params,
    prepare_pattern,
    share_logits_fns,
    train_member,
    zero_shot,
)
from jaxpet.pipelines.parallel_members import train_in_parallel
from jaxpet.pipelines.setup import TaskData, load_model
from jaxpet.runs import outputs


def prepare_pet(config: Config, data: TaskData, mesh: Mesh,
                out: Path) -> tuple[Any, Any, list[PatternData], dict[str, Any]]:
    """Checks batch sizes, loads the MLM, encodes every pattern, runs the MLM warm-up and the
    zero-shot evaluations; returns (lm, start params, patterns, results so far)."""
    settings = config.pet
    sizes = {"pet.train_batch_size": settings.train_batch_size,
             "eval.batch_size": config.eval.batch_size}
    if settings.lm_training:
        sizes["pet.unlabeled_batch_size"] = settings.unlabeled_batch_size
    if config.mlm_pretrain.enabled:
        sizes["mlm_pretrain.batch_size"] = config.mlm_pretrain.batch_size
    check_batch_sizes(mesh, sizes)
    lm = load_model(config, "mlm")  # run() has already checked the T5 options (check_models)
    patterns = share_logits_fns([prepare_pattern(config, lm, data, p)
                                 for p in settings.pattern_ids])
    check_decoder_memory(config, lm, patterns)
    results: dict[str, Any] = {}
    lm = dataclasses.replace(lm, params=place_params(lm.params, mesh))  # frees the unplaced copy
    params = lm.params
    if config.eval.zero_shot:
        results["zero_shot"] = zero_shot(config, patterns, params, data, mesh)
    if config.mlm_pretrain.enabled:
        params, results["mlm_pretrain"] = mlm_pretrain.run(config, lm, data.unlabeled, mesh, out)
        if config.eval.zero_shot:
            results["zero_shot_after_mlm_pretrain"] = zero_shot(
                config, patterns, params, data, mesh)
    return lm, params, patterns, results


def train_ensemble(config: Config, lm: LoadedModel, params: Any, patterns: Sequence[PatternData],
                   data: TaskData, mesh: Mesh, out: Path,
                   train_sets: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                   final: bool = True) -> dict[str, Any]:
    """Every pattern x repetition member in `out/p{P}-s{S}`; `train_sets` (by member name)
    replace the labeled set; `final`: the members are the run's final models (nothing is
    distilled from them). Returns {"members", "patterns", "pet"} results."""
    trained: dict[str, tuple[Any, float]] = {}
    if config.pet.parallel_members:
        trained = train_in_parallel(config, lm, params, patterns, mesh, out, train_sets)
    members = {}
    for pattern in patterns:
        for repetition in range(config.pet.repetitions):
            folder = outputs.member_dir(out, pattern.pattern_id, repetition)
            members[folder.name] = train_member(
                config, lm, params, pattern, data, mesh, folder, repetition,
                None if train_sets is None else train_sets[folder.name],
                trained.get(folder.name), final)
    return {"members": members,
            "patterns": aggregate(members, lambda r: f"p{r['pattern_id']}"),
            "pet": aggregate(members, lambda r: "all")["all"]}


def warmed_up_encoder(config: Config, params: Any) -> Any:
    """The encoder after the MLM warm-up (the classifiers start from it), or None."""
    return params.get("encoder") if config.mlm_pretrain.enabled else None


