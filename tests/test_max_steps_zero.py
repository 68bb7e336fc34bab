"""max_steps 0 evaluates the model as it is: a tiny T5 (text2text) and a sequence classifier."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_cli import build_workspace
from tiny_t5 import make_t5_tokenizer, make_tiny_t5

from jaxpet.cli import train_main
from jaxpet.config import ConfigError, load_config
from jaxpet.engine.training import FAST_CPU_COMPILE
from jaxpet.runs.outputs import read_jsonl
from jaxpet.text2text.config import load_text2text_config
from jaxpet.text2text.run import run

ROOT = Path(__file__).resolve().parent.parent
T5_CONFIG = ROOT / "configs" / "t5_tiny_offline.yaml"
T2T_DATA = ROOT / "tests" / "data" / "t2t"


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> tuple[str, torch.nn.Module, object]:
    folder = str(tmp_path_factory.mktemp("t5_zero"))
    tokenizer = make_t5_tokenizer(folder)
    model = make_tiny_t5(folder, "1.0", vocab_size=224, seed=5)
    return folder, model, tokenizer


def test_text2text_max_steps_0_scores_the_untrained_t5_as_torch_does(t5, tmp_path):
    folder, model, tokenizer = t5
    out = tmp_path / "out"
    # no training file at all: an evaluation-only run needs none
    tree = _t5_yaml()
    del tree["text2text"]["train_file"]
    config = load_text2text_config(tree, [
        f"model.name={folder}", f"text2text.data_dir={T2T_DATA}", "text2text.max_steps=0",
        "mesh.data=1"], output_dir=str(out))
    assert config.text2text.train_file == ""
    results = run(config, compiler_options=FAST_CPU_COMPILE)

    records = [json.loads(line) for line in (T2T_DATA / "sentiment_dev.jsonl").open()]
    texts = [f"sentiment: {r['text']}" for r in records]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**enc, max_new_tokens=8, num_beams=1, do_sample=False)
    expected = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [p["prediction"] for p in predictions] == expected
    gold = [r["label"] for r in records]
    accuracy = np.mean([p == g for p, g in zip(expected, gold, strict=True)])
    assert results["steps"] == 0 and results["num_train"] == 0
    assert json.loads((out / "results.json").read_text())["metrics"]["accuracy"] == \
        pytest.approx(100 * accuracy)

    # rank classification: sum log p of each label (with its EOS) under the untrained model
    labels = ["positive", "negative"]
    scores_NxL = np.zeros((len(texts), len(labels)))
    for j, label in enumerate(labels):
        target = tokenizer([label] * len(texts), return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(**enc, labels=target).logits
        log_p = torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
        scores_NxL[:, j] = log_p.sum(-1).numpy()
    # fp32 sums of a few log-probs: 1e-4 catches a missing token or a shifted decoder input
    np.testing.assert_allclose(np.load(out / "rank_scores.npy"), scores_NxL, atol=1e-4)
    assert [p["rank_prediction"] for p in predictions] == [
        labels[i] for i in scores_NxL.argmax(-1)]
    # nothing was trained: no optimizer state, no checkpoint, no training log
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def _t5_yaml() -> dict:
    import yaml

    return yaml.safe_load(T5_CONFIG.read_text())


def test_max_steps_0_config_rules(tmp_path):
    with pytest.raises(ConfigError, match=r"text2text\.eval_file' is required with "
                                          r"text2text\.max_steps 0"):
        load_text2text_config(str(T5_CONFIG), ["text2text.max_steps=0",
                                               "text2text.eval_file=''"])
    with pytest.raises(ConfigError, match=r"text2text\.max_steps' must be >= 0"):
        load_text2text_config(str(T5_CONFIG), ["text2text.max_steps=-1",
                                               "text2text.num_train_epochs=0"])
    with pytest.raises(ConfigError, match="missing required config key.*train_file"):
        tree = _t5_yaml()
        del tree["text2text"]["train_file"]
        load_text2text_config(tree)
    demo = ROOT / "configs" / "demo.yaml"
    assert load_config(demo, ["classifier.max_steps=0"]).classifier.max_steps == 0
    with pytest.raises(ConfigError, match=r"classifier\.max_steps' must be >= 0"):
        load_config(demo, ["classifier.max_steps=-1", "classifier.num_train_epochs=0"])


@pytest.fixture(scope="module")
def classifier_workspace(tmp_path_factory) -> dict:
    """build_workspace plus a tiny BertForSequenceClassification (4 labels) on its vocab."""
    from tiny_models import tiny_hf_config
    from transformers import BertForSequenceClassification, BertTokenizer

    workspace = build_workspace(tmp_path_factory.mktemp("zero_classifier"))
    tokenizer = BertTokenizer.from_pretrained(str(workspace["model"]))
    hf_config = tiny_hf_config("bert", len(tokenizer), tokenizer)
    hf_config.num_labels = 4
    torch.manual_seed(11)
    model = BertForSequenceClassification(hf_config).eval()
    folder = workspace["root"] / "tiny-bert-sc"
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return {**workspace, "classifier": folder, "torch": model, "tokenizer": tokenizer}


def _torch_logits(workspace: dict, rows: list[list[str]]) -> np.ndarray:
    enc = workspace["tokenizer"]([r[1] for r in rows], [r[2] for r in rows], padding=True,
                                 truncation="longest_first", max_length=32, return_tensors="pt")
    with torch.no_grad():
        return workspace["torch"](**enc).logits.numpy()


def _test_rows(workspace: dict) -> list[list[str]]:
    with open(workspace["data"] / "test.csv", newline="") as f:
        return list(csv.reader(f))


def test_classifier_max_steps_0_evaluates_the_checkpoint_as_torch_does(classifier_workspace):
    ws = classifier_workspace
    out = ws["root"] / "out-sc0"
    assert train_main(["--config", str(ws["config"]), "method=sequence_classifier",
                       f"output_dir={out}", f"classifier.model={ws['classifier']}",
                       "classifier.repetitions=1", "classifier.max_steps=0",
                       "checkpoint.every=1"]) == 0
    rows = _test_rows(ws)
    expected_NxL = _torch_logits(ws, rows)
    # fp32 forward of a 2-layer BERT: 1e-4 catches any trained step (lr 1e-3 moves logits more)
    np.testing.assert_allclose(np.load(out / "sc-s0" / "eval_logits.npy"), expected_NxL,
                               atol=1e-4)
    accuracy = np.mean([str(i + 1) == r[0] for i, r in zip(expected_NxL.argmax(-1), rows,
                                                         strict=True)])
    member = json.loads((out / "sc-s0" / "results.json").read_text())
    assert member["metrics"]["acc"] == pytest.approx(accuracy)
    assert member["train_time_s"] == 0.0
    assert not (out / "sc-s0" / "checkpoints").exists()
    assert f"sequence classifier (1 run) | {accuracy:.3f}" in (out / "summary.md").read_text()


def test_zero_shot_pet_run_distils_nothing(classifier_workspace):
    """pet.max_steps 0 and classifier.max_steps 0: zero-shot members, and a 'distilled' model
    that is the classifier checkpoint as it is."""
    ws = classifier_workspace
    out = ws["root"] / "out-pet0"
    assert train_main(["--config", str(ws["config"]), f"output_dir={out}",
                       f"classifier.model={ws['classifier']}", "pet.pattern_ids=[0]",
                       "pet.max_steps=0", "classifier.max_steps=0"]) == 0
    expected_NxL = _torch_logits(ws, _test_rows(ws))
    # as above: any distillation step would move the logits by far more than 1e-4
    np.testing.assert_allclose(np.load(out / "distilled" / "eval_logits.npy"), expected_NxL,
                               atol=1e-4)
    assert json.loads((out / "distilled" / "results.json").read_text())["train_time_s"] == 0.0
