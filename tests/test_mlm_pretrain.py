"""Tests of the MLM warm-up stage: head-only training, export, reuse, and text encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train_cli import build_workspace

from jaxpet.config import load_config
from jaxpet.data.example import Example
from jaxpet.mlm_pretrain import encode_texts, special_tokens_mask
from jaxpet.outputs import read_jsonl


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("mlm_pretrain"))


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}/"))
        return out
    return {prefix[:-1]: np.asarray(tree)}


def test_encode_texts_mixes_pairs_and_singles_in_order(workspace):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    examples = [Example("a", "the match goal", "coach league"), Example("b", "stocks bank"),
                Example("c", "the chip " * 20, "internet")]
    arrays, truncated = encode_texts(examples, tokenizer, max_seq_length=16)
    for i, e in enumerate(examples):
        expected = tokenizer(e.text_a, e.text_b, truncation="longest_first", max_length=16,
                             padding="max_length")
        assert arrays["input_ids"][i].tolist() == expected["input_ids"]
        assert arrays["token_type_ids"][i].tolist() == expected["token_type_ids"]
    assert truncated == 1
    special = special_tokens_mask(arrays["input_ids"], tokenizer)
    assert special[1].tolist() == [int(t in tokenizer.all_special_ids)
                                   for t in arrays["input_ids"][1]]
    assert (arrays["special_tokens_mask"] == special).all()


def test_head_only_warmup_trains_head_exports_and_is_reused(workspace, tmp_path):
    from jaxpet import mlm_pretrain
    from jaxpet.models import load_pretrained
    from jaxpet.pet import build_mesh, load_model, load_task_data

    config = load_config(workspace["config"], [
        f"output_dir={tmp_path}", "mlm_pretrain.enabled=true", "mlm_pretrain.steps=12",
        "mlm_pretrain.batch_size=8", "mlm_pretrain.max_seq_length=32",
        "mlm_pretrain.learning_rate=1e-2", "mlm_pretrain.train_encoder=false",
        "logging.every=1"])
    data = load_task_data(config)
    lm = load_model(config, "mlm")
    before = _flat(lm.params)
    params, results = mlm_pretrain.run(config, lm, data.unlabeled, build_mesh(config), tmp_path)
    after = _flat(params)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    # only the MLM head moves: no update (and no weight decay) reaches the frozen encoder
    assert changed and all(not k.startswith("encoder/") for k in changed)
    assert {"transform/kernel", "bias"} <= changed
    folder = tmp_path / "mlm_pretrain"
    log = read_jsonl(folder / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    assert all(r["tokens_per_s"] > 0 and r["examples_per_s"] > 0 for r in log)
    losses = [r["mlm"] for r in log]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # lr 1e-2 on a tiny vocab learns fast
    assert json.loads((folder / "results.json").read_text())["steps"] == 12

    # the exported folder is a normal checkpoint holding the trained parameters
    exported = _flat(load_pretrained(folder / "model", head="mlm").params)
    for key, value in after.items():
        np.testing.assert_allclose(exported[key], value, rtol=1e-6, atol=1e-6)

    # a second run finds the finished stage and reuses it instead of training again
    params_again, _ = mlm_pretrain.run(config, lm, data.unlabeled, build_mesh(config), tmp_path)
    again = _flat(params_again)
    for key, value in after.items():
        np.testing.assert_allclose(again[key], value, rtol=1e-6, atol=1e-6)
    assert len(read_jsonl(folder / "metrics.jsonl")) == 12
