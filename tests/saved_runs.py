"""Tiny trained runs shared by test_saved_models.py, test_evaluate.py and test_predict.py, each
trained once per session (per xdist worker): the parameters each training returned are kept
(a spy on jaxpet.pipelines.member.train, which jaxpet.pipelines.distill calls too), so that a test
can compare a saved model with what was really trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import pytest
from test_train_cli import build_workspace

import jaxpet.pipelines.distill
import jaxpet.pipelines.member
import jaxpet.pipelines.pet

AGNEWS_LABELS = ["1", "2", "3", "4"]  # pet.md: files label 1..4, in this order
AGNEWS_WORDS = {"1": ["World"], "2": ["Sports"], "3": ["Business"], "4": ["Tech"]}
_RUNS: dict[str, dict[str, Any]] = {}


def train(config: Any) -> dict[str, Any]:
    """Runs `config`; returns {folder name: trained params} of every
    training in it (members by member name, iPET members as g1/p0-s0, `distilled`)."""
    trained: dict[str, Any] = {}
    original_train = jaxpet.pipelines.member.train

    def spy(config, settings, loss_fn, params, groups, mesh, folder, seed):
        params, seconds = original_train(config, settings, loss_fn, params, groups, mesh,
                                         folder, seed)
        parent = folder.parent.name
        name = f"{parent}/{folder.name}" if parent[:1] == "g" and parent[1:].isdigit() else (
            folder.name)
        trained[name] = jax.device_get(params)
        return params, seconds

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jaxpet.pipelines.member, "train", spy)  # the members
        patch.setattr(jaxpet.pipelines.distill, "train", spy)  # the classifiers
        jaxpet.pipelines.pet.run(config)
    return trained


def agnews_workspace(factory: Any) -> dict[str, Path]:
    """build_workspace's AG News data, tiny BERT and config (once per session)."""
    if "workspace" not in _RUNS:
        _RUNS["workspace"] = build_workspace(factory.mktemp("saved_models"))
    return _RUNS["workspace"]


def _run(key: str, factory: Any, overrides: list[str]) -> dict[str, Any]:
    from jaxpet.config import load_config

    if key not in _RUNS:
        space = agnews_workspace(factory)
        out = space["root"] / f"out-{key}"
        config = load_config(space["config"], [
            f"output_dir={out}", "eval.zero_shot=false", "pet.learning_rate=1e-2",
            "classifier.learning_rate=1e-2", "classifier.unlabeled_batch_size=8",
            "pet.lm_training=false", *overrides])
        _RUNS[key] = {"out": out, "config": config, "trained": train(config),
                      "workspace": space}
    return _RUNS[key]


def pet_run(factory: Any) -> dict[str, Any]:
    """AG News, patterns 0 and 1, three steps each, distilled (three steps), and the
    supervised baseline; every model saved (the default output.save_models)."""
    return _run("pet", factory, ["classifier.baseline=true"])


def unsaved_run(factory: Any) -> dict[str, Any]:
    """One member and its distillation with output.save_models none."""
    return _run("none", factory, ["output.save_models=none", "pet.pattern_ids=[0]",
                                  "pet.repetitions=2", "classifier.max_steps=1"])


def ipet_final_run(factory: Any) -> dict[str, Any]:
    """iPET, two generations of two members, two steps each, not distilled, with
    output.save_models final: only generation g1's members are final models."""
    return _run("ipet", factory, ["method=ipet", "no_distillation=true",
                                  "output.save_models=final", "ipet.generations=2",
                                  "pet.max_steps=2", "pet.reduction=mean"])


def copa_run(factory: Any) -> dict[str, Any]:
    """COPA (multi-token answers), pattern 1, two steps, ltr decoding, not distilled."""
    from test_multitoken_pet import COPA, _copa_records, _vocab, _write_jsonl
    from tiny_models import tiny_hf_config

    from jaxpet.config import load_config

    if "copa" not in _RUNS:
        import torch
        from transformers import BertForMaskedLM, BertTokenizer

        root = factory.mktemp("saved_copa")
        (root / "copa").mkdir()
        _write_jsonl(root / "copa" / "train.jsonl", _copa_records(COPA, 2))
        _write_jsonl(root / "copa" / "val.jsonl", _copa_records(COPA[:4], 3))
        tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(_vocab())})
        torch.manual_seed(0)
        BertForMaskedLM(tiny_hf_config("bert", len(tokenizer), tokenizer)).save_pretrained(
            str(root / "tiny-bert"))
        tokenizer.save_pretrained(str(root / "tiny-bert"))
        (root / "copa.yaml").write_text(f"""\
method: pet
output_dir: {root / "out"}
seed: 1
no_distillation: true
compilation_cache: ""
task: {{name: copa, data_dir: {root / "copa"}, unlabeled_examples: 0}}
model: {{name: {root / "tiny-bert"}}}
pet: {{pattern_ids: [1], repetitions: 1, max_seq_length: 32, train_batch_size: 8,
      max_steps: 2, learning_rate: 1e-2, decoding_strategy: ltr}}
eval: {{batch_size: 8, zero_shot: false}}
mesh: {{data: 1}}
logging: {{progress: false, every: 1}}
""")
        config = load_config(root / "copa.yaml")
        _RUNS["copa"] = {"out": root / "out", "config": config, "trained": train(config),
                         "model": root / "tiny-bert"}
    return _RUNS["copa"]


def t5_run(factory: Any) -> dict[str, Any]:
    """A tiny T5 as the PET backbone on AG News, pattern 0, two steps, not distilled."""
    from test_t5_pet_pipeline import make_tiny_t5_backbone

    if "t5" not in _RUNS:
        space = agnews_workspace(factory)
        t5 = space["root"] / "tiny-t5"
        make_tiny_t5_backbone(t5)
        _RUNS["t5"] = _run("t5-run", factory, [
            f"model.name={t5}", "no_distillation=true", "pet.pattern_ids=[0]",
            "pet.max_steps=2", "pet.train_batch_size=8"])
        _RUNS["t5"]["model"] = t5
    return _RUNS["t5"]


def card(folder: Path) -> dict[str, Any]:
    """The raw jaxpet.json of a saved model folder."""
    return json.loads((folder / "jaxpet.json").read_text())
