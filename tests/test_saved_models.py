"""Every trained model is saved: members of each scorer kind and the distilled classifier load in
transformers with the trained weights and their jaxpet.json; output.save_models; atomic folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import saved_runs
from saved_runs import AGNEWS_LABELS, AGNEWS_WORDS, card

TEXTS = ["Sports : the team won the game .", "World News: talks in the capital ( news )"]


@pytest.fixture(scope="module")
def pet_run(tmp_path_factory):
    return saved_runs.pet_run(tmp_path_factory)


def torch_mlm_logits(folder: Path, texts: list[str]) -> tuple[np.ndarray, dict]:
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model = BertForMaskedLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(**batch).logits.numpy(), {k: v.numpy() for k, v in batch.items()}


@pytest.mark.parametrize("member", ["p0-s0", "p1-s0"])
def test_a_saved_member_gives_its_trained_mlm_logits_in_transformers(pet_run, member):
    from jaxpet.models import load_pretrained

    folder = pet_run["out"] / member / "model"
    torch_BxSxV, batch = torch_mlm_logits(folder, TEXTS)
    base = load_pretrained(str(pet_run["workspace"]["model"]), head="mlm")
    trained = pet_run["trained"][member]
    jax_BxSxV = np.asarray(base.module.apply({"params": trained}, batch["input_ids"],
                                             batch["attention_mask"], batch["token_type_ids"]))
    # fp32 parity of the two implementations; a wrong or untrained weight moves logits by more
    np.testing.assert_allclose(torch_BxSxV, jax_BxSxV, atol=1e-4, rtol=1e-4)
    untrained_BxSxV, _ = torch_mlm_logits(pet_run["workspace"]["model"], TEXTS)
    # three steps at 1e-2 move the logits far beyond the parity tolerance: the weights trained
    assert np.abs(untrained_BxSxV - torch_BxSxV).max() > 1e-2


@pytest.mark.parametrize("member", ["p0-s0", "p1-s0"])
def test_single_token_member_cards(pet_run, member):
    saved = card(pet_run["out"] / member / "model")
    assert saved["scorer"] == "cloze" and saved["task"] == "agnews"
    assert saved["labels"] == AGNEWS_LABELS
    assert saved["verbalizer"] == AGNEWS_WORDS
    assert saved["pattern_id"] == int(member[1]) and saved["member"] == member
    assert saved["max_seq_length"] == 32 and saved["backbone"] == "bert"
    assert saved["decoding"] is None
    assert saved["config"]["pet"]["pattern_ids"] == [0, 1]
    assert saved["config"]["output_dir"] == str(pet_run["out"])
    stored = (pet_run["out"] / "fingerprint.json").read_text()
    assert saved["fingerprint"] == json.loads(stored)


def test_the_baseline_classifier_is_saved_with_its_card(pet_run):
    saved = card(pet_run["out"] / "sc-s0" / "model")
    assert saved["scorer"] == "classifier" and saved["member"] == "sc-s0"
    assert saved["labels"] == AGNEWS_LABELS and saved["max_seq_length"] == 32
    config = json.loads((pet_run["out"] / "sc-s0" / "model" / "config.json").read_text())
    assert config["id2label"] == dict(zip("0123", AGNEWS_LABELS, strict=True))


def test_the_distilled_pipeline_answers_the_task_label_names(pet_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    folder = pet_run["out"] / "distilled" / "model"
    saved = card(folder)
    assert saved["scorer"] == "classifier" and saved["labels"] == AGNEWS_LABELS
    assert saved["member"] == "distilled" and saved["pattern_id"] is None
    classify = pipeline("text-classification", model=str(folder), device="cpu")
    answers = classify(TEXTS)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        logits_BxL = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.numpy()
    # output index i is the task's i-th label (the order the distillation's soft labels have)
    assert [a["label"] for a in answers] == [AGNEWS_LABELS[i] for i in logits_BxL.argmax(-1)]
    # the distilled weights are the trained ones: its logits are the run's on the same input
    from jaxpet.models import load_pretrained

    lm = load_pretrained(str(folder), head="classifier", num_labels=4)
    batch = tokenizer(TEXTS, padding=True, return_tensors="np")
    jax_BxL = np.asarray(lm.module.apply({"params": pet_run["trained"]["distilled"]},
                                         batch["input_ids"], batch["attention_mask"],
                                         batch["token_type_ids"]))
    # fp32 parity of the two implementations; untrained weights differ by far more
    np.testing.assert_allclose(logits_BxL, jax_BxL, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_multi_token_members_are_saved_as_candidates_scorers(tmp_path_factory):
    import torch
    from transformers import BertForMaskedLM

    run = saved_runs.copa_run(tmp_path_factory)
    folder = run["out"] / "p1-s0" / "model"
    saved = card(folder)
    assert saved["scorer"] == "candidates" and saved["task"] == "copa"
    assert saved["labels"] == ["0", "1"] and saved["pattern_id"] == 1
    assert saved["decoding"] == "ltr"  # the run's pet.decoding_strategy, not the default
    model = BertForMaskedLM.from_pretrained(str(folder))
    trained = run["trained"]["p1-s0"]["encoder"]
    embeddings = model.bert.embeddings.word_embeddings.weight.detach().numpy()
    # the saved word embeddings are the trained ones, bit for bit (safetensors is lossless)
    np.testing.assert_array_equal(
        embeddings, np.asarray(trained["embeddings"]["word_embeddings"]["embedding"]))
    base = BertForMaskedLM.from_pretrained(str(run["model"]))
    assert not torch.equal(base.bert.embeddings.word_embeddings.weight,
                           model.bert.embeddings.word_embeddings.weight)


@pytest.mark.slow
def test_t5_backbone_members_are_saved_as_seq2seq_scorers(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from jaxpet.models import load_pretrained

    run = saved_runs.t5_run(tmp_path_factory)
    folder = run["out"] / "p0-s0" / "model"
    saved = card(folder)
    assert saved["scorer"] == "seq2seq" and saved["backbone"] == "t5"
    assert saved["labels"] == AGNEWS_LABELS and saved["verbalizer"] == AGNEWS_WORDS
    assert saved["pattern_id"] == 0 and saved["decoding"] is None
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    decoder_ids = torch.tensor([[0, 5, 6], [0, 7, 8]])
    model = T5ForConditionalGeneration.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        torch_BxTxV = model(**batch, decoder_input_ids=decoder_ids).logits.numpy()
    base = load_pretrained(str(run["model"]), head="seq2seq")
    jax_BxTxV = np.asarray(base.module.apply(
        {"params": run["trained"]["p0-s0"]}, batch["input_ids"].numpy(),
        batch["attention_mask"].numpy(), decoder_input_ids=decoder_ids.numpy(),
        decoder_attention_mask=np.ones((2, 3), np.int32)))
    # fp32 parity of the two implementations; untrained weights differ by far more
    np.testing.assert_allclose(torch_BxTxV, jax_BxTxV, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_save_models_none_saves_nothing_and_a_rerun_that_wants_models_says_what_to_do(
        tmp_path_factory):
    from jaxpet.config import ConfigError, load_config
    from jaxpet.pipelines.pet import run

    unsaved = saved_runs.unsaved_run(tmp_path_factory)
    out = unsaved["out"]
    finished = sorted(p.parent.name for p in out.glob("*/results.json"))
    assert finished == ["distilled", "ensemble", "p0-s0", "p0-s1"]
    assert not list(out.rglob("jaxpet.json")) and not list(out.rglob("model.safetensors"))
    config_file = unsaved["workspace"]["config"]
    overrides = [f"output_dir={out}", "eval.zero_shot=false", "pet.learning_rate=1e-2",
                 "classifier.learning_rate=1e-2", "classifier.unlabeled_batch_size=8",
                 "pet.lm_training=false", "pet.pattern_ids=[0]", "pet.repetitions=2",
                 "classifier.max_steps=1"]
    trained_config = (out / "config.yaml").read_bytes()
    # final: the members are not final models (they are distilled), the classifier is
    with pytest.raises(ConfigError, match=r"distilled: results\.json exists but .*"
                                          r"distilled/model was not saved.*--overwrite"):
        run(load_config(config_file, [*overrides, "output.save_models=final"]))
    with pytest.raises(ConfigError, match=r"p0-s0: results\.json exists but .*p0-s0/model "
                                          r"was not saved.*output\.save_models='all'.*"
                                          r"--overwrite"):
        run(load_config(config_file, [*overrides, "output.save_models=all"]))
    # a refused rerun leaves the folder's config as its finished run wrote it
    assert (out / "config.yaml").read_bytes() == trained_config


@pytest.mark.slow
def test_save_models_final_keeps_only_the_last_ipet_generation(tmp_path_factory):
    run = saved_runs.ipet_final_run(tmp_path_factory)
    out = run["out"]
    members = ["p0-s0", "p1-s0"]
    for member in members:
        assert (out / "g0" / member / "results.json").is_file()
        assert not (out / "g0" / member / "model").exists()
        saved = card(out / "g1" / member / "model")
        assert saved["member"] == f"g1/{member}" and saved["scorer"] == "cloze"
    # the saved weights are generation g1's, not g0's
    from safetensors.numpy import load_file

    weights = load_file(str(out / "g1" / "p0-s0" / "model" / "model.safetensors"))
    g1 = run["trained"]["g1/p0-s0"]["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    g0 = run["trained"]["g0/p0-s0"]["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    saved_embeddings = weights["bert.embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(saved_embeddings, np.asarray(g1))
    assert not np.array_equal(saved_embeddings, np.asarray(g0))


def test_a_bad_save_models_value_names_the_key(pet_run):
    from jaxpet.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"config key 'output\.save_models' must be one of "
                                          r"\['all', 'final', 'none'\], got 'some'"):
        load_config(pet_run["workspace"]["config"], ["output.save_models=some"])


KILL_SCRIPT = """\
import os, signal, sys
import jaxpet.runs.saved_model as saved_model
from jaxpet.models import load_pretrained
source, target = sys.argv[1], sys.argv[2]
lm = load_pretrained(source, head="mlm")
card = saved_model.read_card(source)

def killed(folder, card):
    os.kill(os.getpid(), signal.SIGKILL)  # after the weights, before the card

saved_model.write_card = killed
saved_model.write_model(target, lm, card)
"""


def test_a_kill_while_saving_leaves_no_half_model_folder(pet_run, tmp_path):
    from safetensors.numpy import load_file

    source = pet_run["out"] / "p0-s0" / "model"
    old = tmp_path / "old" / "model"  # a complete model folder being replaced
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    for target in (tmp_path / "new" / "model", old):
        done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(source), str(target)],
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300,
                              capture_output=True, text=True)
        assert done.returncode == -9, done.stderr
        partial = list(target.parent.glob(".model.*.partial"))
        # the kill came after the weights were written: they exist, only under a hidden name
        assert partial and "model.safetensors" in os.listdir(partial[0])
        assert load_file(str(partial[0] / "model.safetensors"))
    assert not (tmp_path / "new" / "model").exists()
    assert os.listdir(old) == ["config.json"]  # the folder it would replace is untouched
