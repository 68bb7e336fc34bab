"""`jaxpet init-model`: random checkpoints that transformers loads, and torch-free offline runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from multiprocess_worker import FAST_XLA_FLAGS

from jaxpet.init_model import FAMILIES, init_model, random_model

ROOT = Path(__file__).resolve().parents[1]
# the demo's AG News label words, which its single-token patterns need as one token each
LABEL_WORDS = ("World", "Sports", "Business", "Tech")


@pytest.mark.parametrize("family", FAMILIES)
def test_written_checkpoint_loads_in_transformers_with_the_same_logits(family, tmp_path):
    import torch
    import transformers

    from jaxpet.models import load_pretrained

    folder = init_model(family, tmp_path / family)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tokenizer(["News: World Sports Business Tech", "It was great."], padding=True,
                    return_tensors="np")
    # the model as initialised in memory (same seed): a bug in writing it cannot hide here
    lm = random_model(family)
    assert len(lm.tokenizer) == len(tokenizer)
    reloaded = load_pretrained(folder, head="seq2seq" if family == "t5" else "mlm")
    # jaxpet reads back exactly what it wrote, leaf for leaf
    jax.tree.map(np.testing.assert_array_equal, lm.params, reloaded.params)
    if family == "t5":
        reference = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
        decoder_ids = np.array([[0, 5, 6], [0, 7, 8]])
        ours = lm.module.apply({"params": lm.params}, enc["input_ids"], enc["attention_mask"],
                               decoder_input_ids=decoder_ids,
                               decoder_attention_mask=np.ones_like(decoder_ids))
        with torch.no_grad():
            theirs = reference(input_ids=torch.tensor(enc["input_ids"]),
                               attention_mask=torch.tensor(enc["attention_mask"]),
                               decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()
        rows = np.ones(theirs.shape[:2], bool)
    else:
        reference = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
        assert type(reference).__name__.lower().startswith(family.replace("-", ""))
        ours = lm.module.apply({"params": lm.params}, enc["input_ids"], enc["attention_mask"],
                               token_type_ids=enc.get("token_type_ids"))
        with torch.no_grad():
            theirs = reference(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
        rows = enc["attention_mask"].astype(bool)
        # single-token verbalizers: each label word (after a space) is one token
        for word in LABEL_WORDS:
            assert len(tokenizer.tokenize(" " + word)) == 1, (family, word)
        assert tokenizer.mask_token_id is not None
    assert theirs.shape[-1] == len(tokenizer)
    assert np.std(theirs) > 1e-2  # random weights, not zeros: the comparison below means something
    # fp32 on CPU agrees to ~1e-6; a transposed kernel, a dropped layer norm or a wrong
    # position offset moves logits of std ~0.1 by far more than 1e-5
    np.testing.assert_allclose(np.asarray(ours)[rows], theirs[rows], atol=1e-5, rtol=0)


# Runs in a fresh interpreter in which `import torch` fails as if torch were not installed.
NO_TORCH_RUN = """
import json, sys
sys.modules["torch"] = None
from jaxpet.cli import main

out = sys.argv[1]
assert main(["init-model", "t5", f"{out}/t5"]) == 0
assert main(["init-model", "bert", f"{out}/bert"]) == 0
assert main(["train", "--config", "configs/t5_tiny_offline.yaml", f"model.name={out}/t5",
             f"output_dir={out}/t2t", "text2text.max_steps=2", "text2text.eval_examples=6",
             "checkpoint.every=0", f"compilation_cache={out}/xla"]) == 0
assert main(["train", "--config", "configs/pet_t5_tiny_offline.yaml", f"model.name={out}/t5",
             f"output_dir={out}/pet", "classifier.model=" + f"{out}/bert", "pet.pattern_ids=[0]",
             "pet.max_steps=2", "classifier.max_steps=2", "task.train_examples=8",
             "task.unlabeled_examples=8", "task.test_examples=8", "eval.zero_shot=false",
             f"compilation_cache={out}/xla"]) == 0
print(json.dumps({"torch_imported": sys.modules.get("torch") is not None}))
"""


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_tiny_t5_configs_run_from_init_model_with_torch_absent(tmp_path):
    # one CPU device, as on a user's laptop (the test session fakes 8); XLA's quick CPU compile
    # (the assertions compare the run's reports with its own saved predictions); the runs'
    # compilation caches in tmp_path, not the user's ~/.cache
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = FAST_XLA_FLAGS
    done = subprocess.run([sys.executable, "-c", NO_TORCH_RUN, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"torch_imported": False}

    t2t = json.loads((tmp_path / "t2t" / "results.json").read_text())
    predictions = _jsonl(tmp_path / "t2t" / "predictions.jsonl")
    assert t2t["steps"] == 2 and t2t["num_eval"] == len(predictions) == 6
    # the reported accuracies are the saved predictions' hit rates (in %)
    exact = [p["prediction"] == p["target"] for p in predictions]
    ranked = [p["rank_prediction"] == p["target"] for p in predictions]
    assert t2t["metrics"]["accuracy"] == pytest.approx(100 * np.mean(exact))
    assert t2t["rank_classification"]["accuracy"] == pytest.approx(100 * np.mean(ranked))
    assert all(p["rank_prediction"] in ("positive", "negative") for p in predictions)

    pet = json.loads((tmp_path / "pet" / "results.json").read_text())
    assert list(pet["members"]) == ["p0-s0"] and pet["num_eval"] == 8
    for stage, folder in (("ensemble", "ensemble"), ("distilled", "distilled")):
        rows = _jsonl(tmp_path / "pet" / folder / "predictions.jsonl")
        assert len(rows) == 8
        hits = [row["label"] == row["gold"] for row in rows]
        assert pet[stage]["metrics"]["acc"] == pytest.approx(np.mean(hits))
    # the distilled classifier is the tiny BERT that init-model wrote, in Hugging Face format
    config = json.loads((tmp_path / "pet" / "distilled" / "model" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 32


def test_the_same_command_writes_the_same_vocabulary_in_every_process():
    # tokenizer trainers order tied pieces differently per process; init-model must not, or
    # a checkpoint written again would map its (same) weights to other words
    script = ("import hashlib, json\nfrom jaxpet.init_model import TOKENIZERS\n"
              "print(json.dumps({f: hashlib.sha256(json.dumps(sorted(t().get_vocab().items()))"
              ".encode()).hexdigest() for f, t in TOKENIZERS.items()}))")
    env = dict(os.environ, PYTHONHASHSEED="random")
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                      capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(2)]
    assert runs[0].keys() == set(FAMILIES)
    assert runs[0] == runs[1]
