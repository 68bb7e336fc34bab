"""The MLM warm-up stage: head-only training, export, reuse, text encoding, method mlm_pretrain."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train_cli import build_workspace

from jaxpet.config import load_config
from jaxpet.data.example import Example
from jaxpet.pipelines.mlm_pretrain import encode_texts, special_tokens_mask
from jaxpet.runs.outputs import read_jsonl


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


def pet_pair_truncation(ids_a: list[int], ids_b: list[int], max_tokens: int):
    """PET's loop (transformers 3's longest_first): one token at a time from the end of the
    longer segment, from the second one on a tie, until the pair fits."""
    ids_a, ids_b = list(ids_a), list(ids_b)
    while len(ids_a) + len(ids_b) > max_tokens:
        if len(ids_a) > len(ids_b):
            ids_a.pop()
        else:
            ids_b.pop()
    return ids_a, ids_b


def test_pair_truncation_follows_pets_loop_on_random_pairs(workspace):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    words = ["the", "match", "goal", "coach", "league", "stocks", "bank", "chip", "internet"]
    rng = np.random.default_rng(0)
    examples = [Example(str(i), " ".join(rng.choice(words, rng.integers(1, 30))),
                        " ".join(rng.choice(words, rng.integers(1, 30)))) for i in range(60)]
    arrays, truncated = encode_texts(examples, tokenizer, max_seq_length=24)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    num_cut = 0
    for i, e in enumerate(examples):
        a = tokenizer.encode(e.text_a, add_special_tokens=False)
        b = tokenizer.encode(e.text_b, add_special_tokens=False)
        num_cut += len(a) + len(b) + 3 > 24
        a, b = pet_pair_truncation(a, b, 24 - 3)  # [CLS] a [SEP] b [SEP]
        row = [cls, *a, sep, *b, sep]
        assert arrays["input_ids"][i].tolist() == row + [pad] * (24 - len(row))
        assert arrays["token_type_ids"][i].tolist()[:len(row)] == [0] * (len(a) + 2) + [1] * (
            len(b) + 1)
        assert arrays["attention_mask"][i].sum() == len(row)
    assert truncated == num_cut > 20  # most pairs were cut, ties among them


def test_a_very_long_pair_encodes_in_linear_memory(workspace):
    # A 14 000-word pair: a tokenizer's own pair truncation needed about 1.2 GB for 6 000
    # tokens and grows quadratically; one pass per segment stays near the interpreter's size.
    import subprocess
    import sys

    script = f"""
import resource
from transformers import AutoTokenizer
from jaxpet.data.example import Example
from jaxpet.pipelines.mlm_pretrain import encode_texts
tokenizer = AutoTokenizer.from_pretrained({str(workspace["model"])!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
text = " ".join(["the match goal coach league"] * 1400)
arrays, truncated = encode_texts([Example("x", text, text)], tokenizer, 32)
assert truncated == 1 and arrays["attention_mask"].sum() == 32
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mib = int(done.stdout.split()[-1])
    assert grown_mib < 200, f"encoding one long pair grew the process by {grown_mib} MiB"


@pytest.mark.slow  # ~35 s on 2 shared cores
def test_head_only_warmup_trains_head_exports_and_is_reused(workspace, tmp_path):
    from jaxpet.engine.sharding import build_mesh
    from jaxpet.models import load_pretrained
    from jaxpet.pipelines import mlm_pretrain
    from jaxpet.pipelines.setup import load_model, load_task_data

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


def _torch_mlm_loss(model_dir, texts: list[tuple[str, str]], seed: int = 0) -> float:
    """transformers' own masked-LM loss of a checkpoint on `texts`, with the same fixed 15%
    of the non-special tokens replaced by [MASK] (five draws, averaged)."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertForMaskedLM.from_pretrained(str(model_dir)).eval()
    enc = tokenizer([a for a, _ in texts], [b for _, b in texts], padding=True,
                    truncation=True, max_length=32, return_tensors="pt")
    special = np.isin(enc["input_ids"].numpy(), tokenizer.all_special_ids)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(5):
        chosen = (rng.random(special.shape) < 0.15) & ~special
        labels = np.where(chosen, enc["input_ids"].numpy(), -100)
        inputs = np.where(chosen, tokenizer.mask_token_id, enc["input_ids"].numpy())
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(inputs),
                        attention_mask=enc["attention_mask"],
                        token_type_ids=enc["token_type_ids"], labels=torch.as_tensor(labels))
        losses.append(float(out.loss))
    return float(np.mean(losses))


def _torch_state(model_dir) -> dict[str, np.ndarray]:
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(model_dir))
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.slow  # two mlm_pretrain runs through train.py, ~40 s on 2 shared cores
def test_method_mlm_pretrain_exports_a_model_that_fits_the_unlabeled_text(workspace, tmp_path):
    from jaxpet.cli import train_main
    from jaxpet.data.tasks import load_examples

    unlabeled = load_examples("agnews", workspace["data"], "unlabeled", 24)
    texts = [(e.text_a, e.text_b) for e in unlabeled]
    original = _torch_state(workspace["model"])
    runs = {}
    for train_encoder in (True, False):
        out = tmp_path / f"encoder-{train_encoder}"
        assert train_main([
            "--config", str(workspace["config"]), "method=mlm_pretrain", f"output_dir={out}",
            "mlm_pretrain.steps=40", "mlm_pretrain.batch_size=8",
            "mlm_pretrain.max_seq_length=32", "mlm_pretrain.learning_rate=1e-2",
            f"mlm_pretrain.train_encoder={str(train_encoder).lower()}",
            "logging.progress=false"]) == 0
        top = json.loads((out / "results.json").read_text())
        assert top["method"] == "mlm_pretrain" and "members" not in top
        assert top["mlm_pretrain"]["train_encoder"] is train_encoder
        assert top["mlm_pretrain"]["sequences"] == 24
        runs[train_encoder] = out / "mlm_pretrain" / "model"
        assert top["mlm_pretrain"]["model_dir"] == str(runs[train_encoder])

    # the exported folders are transformers checkpoints whose MLM loss on the unlabeled text
    # dropped. The maskings are fixed, so an unchanged model scores exactly `before` (3.79);
    # 40 steps bring it to 3.11 with the encoder and 3.61 with the head alone (measured,
    # the tied output embeddings stay frozen): 0.9x and 0.97x leave margin and still need
    # the stage to have learned the text
    before = _torch_mlm_loss(workspace["model"], texts)
    for train_encoder, bound in ((True, 0.9), (False, 0.97)):
        after = _torch_mlm_loss(runs[train_encoder], texts)
        assert after < bound * before, (train_encoder, before, after)

    # train_encoder off: the encoder's weights come back bit for bit, only the head moved
    head_only = _torch_state(runs[False])
    encoder_keys = [k for k in original if k.startswith("bert.")]
    assert encoder_keys
    for key in encoder_keys:
        np.testing.assert_array_equal(head_only[key], original[key], err_msg=key)
    assert not np.array_equal(head_only["cls.predictions.transform.dense.weight"],
                              original["cls.predictions.transform.dense.weight"])
    # train_encoder on: the encoder learned too
    full = _torch_state(runs[True])
    assert any(not np.array_equal(full[k], original[k]) for k in encoder_keys)
