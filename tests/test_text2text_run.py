"""The text-to-text run: a tiny T5 trained on fixture data, its outputs, resume, loss and config."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tiny_t5 import make_t5_tokenizer, make_tiny_t5

from jaxpet.config import Config, ConfigError, Text2TextConfig
from jaxpet.engine.training import FAST_CPU_COMPILE
from jaxpet.models import load_pretrained
from jaxpet.runs.fingerprint import write_fingerprint
from jaxpet.text2text.config import load_text2text_config
from jaxpet.text2text.data import encode_pairs, read_records, render
from jaxpet.text2text.evaluate import compute_metric, metric_name
from jaxpet.text2text.run import make_seq2seq_loss, run, run_fingerprint

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "configs" / "t5_tiny_offline.yaml"
STEPS = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("t2t_model"))
    make_t5_tokenizer(folder)
    make_tiny_t5(folder, "1.0", vocab_size=224, seed=2)
    return folder


def tiny_config(model_dir: str, out: Path, *extra: str):
    overrides = [f"model.name={model_dir}", f"text2text.data_dir={ROOT / 'tests/data/t2t'}",
                 f"text2text.max_steps={STEPS}", "checkpoint.every=4", "mesh.data=2", *extra]
    return load_text2text_config(str(TINY_CONFIG), overrides, output_dir=str(out))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for this module's runs (the resumed run reuses the programs of
    the first one); JAX's previous setting is put back afterwards."""
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_compilation_cache_dir
    yield str(tmp_path_factory.mktemp("xla_cache"))
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", previous)


def test_run_trains_writes_outputs_and_resumes_exactly(model_dir, compile_cache, tmp_path):
    # One test, so that pytest-xdist never runs the full training twice on two workers.
    out = tmp_path / "full"
    # beam search (2 beams) runs inside the sharded, padded evaluation batches
    config = tiny_config(model_dir, out, f"compilation_cache={compile_cache}",
                         "text2text.num_beams=2")
    results = run(config, compiler_options=FAST_CPU_COMPILE)
    check_outputs(out, results)
    check_resume(out, model_dir, compile_cache, tmp_path / "resumed")


def check_outputs(out: Path, results: dict) -> None:
    for name in ("config.yaml", "metrics.jsonl", "predictions.jsonl", "results.json",
                 "rank_scores.npy", "model/model.safetensors", "model/config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["steps"] == STEPS
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().split("\n")
              if line]
    assert len(losses) == STEPS and np.mean(losses[-3:]) < 0.5 * losses[0]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    dev = read_records(load_text2text_config(str(TINY_CONFIG)).text2text, str(
        ROOT / "tests/data/t2t/sentiment_dev.jsonl"))
    assert [r["target"] for r in rows] == [d["label"] for d in dev]
    expected = 100.0 * np.mean([r["prediction"] == r["target"] for r in rows])
    assert results["metrics"] == {"accuracy": pytest.approx(expected)}
    scores = np.load(out / "rank_scores.npy")
    ranked = np.array(["positive", "negative"])[scores.argmax(-1)]
    assert [r["rank_prediction"] for r in rows] == ranked.tolist()
    assert results["rank_classification"]["accuracy"] == pytest.approx(
        100.0 * np.mean(ranked == [r["target"] for r in rows]))
    assert np.all(scores <= 0.0)  # sums of log-probabilities


def check_resume(out: Path, model_dir: str, compile_cache: str, tmp_path: Path) -> None:
    # A run killed after step 8 leaves checkpoint 8 behind (and its fingerprint, written at its
    # start); a rerun resumes from it.
    (tmp_path / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / "8", tmp_path / "checkpoints" / "8")
    config = tiny_config(model_dir, tmp_path, "text2text.eval_file=''",
                         f"compilation_cache={compile_cache}")
    write_fingerprint(tmp_path, run_fingerprint(config))
    run(config, compiler_options=FAST_CPU_COMPILE)
    resumed_log = [json.loads(line)["step"] for line in
                   (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert resumed_log == list(range(9, STEPS + 1))  # only the remaining steps ran
    final = load_file(str(out / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert final.keys() == resumed.keys()
    for key in final:
        # same program, same steps; a replayed batch or rng key moves weights by ~lr = 1e-4
        np.testing.assert_allclose(resumed[key], final[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_seq2seq_loss_matches_torch_t5_loss(model_dir):
    lm = load_pretrained(model_dir, head="seq2seq")
    section = load_text2text_config(str(TINY_CONFIG)).text2text
    records = read_records(section, str(ROOT / "tests/data/t2t/sentiment_train.jsonl"), 4)
    arrays, _ = encode_pairs(lm.tokenizer, render(section, records), 32, 8, "train")
    loss_fn = make_seq2seq_loss(lm.module.apply)
    loss, aux = jax.jit(loss_fn)(lm.params, {k: jnp.asarray(v) for k, v in arrays.items()},
                                 jax.random.key(0))
    from transformers import T5ForConditionalGeneration

    hf = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
    labels = np.where(arrays["target_mask"] > 0, arrays["target_ids"], -100).astype(np.int64)
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(arrays["input_ids"].astype(np.int64)),
                      attention_mask=torch.tensor(arrays["attention_mask"].astype(np.int64)),
                      labels=torch.tensor(labels)).loss.item()
    # fp32 vs torch's loss; a shifted label, pad counted as target or missing EOS is > 1e-2
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(aux["target_tokens"]) == arrays["target_mask"].sum()


def test_configs_load_and_errors_name_the_key():
    for path in sorted((ROOT / "configs").glob("t5_*.yaml")):
        config = load_text2text_config(str(path))
        assert config.method == "text2text" and config.text2text.train_file, path
    with pytest.raises(ConfigError, match="template_inputs.* is required"):
        load_text2text_config(str(TINY_CONFIG), ["text2text.template_inputs=''"])
    with pytest.raises(ConfigError, match="text2text.format"):
        load_text2text_config(str(TINY_CONFIG), ["text2text.format=poem"])
    with pytest.raises(ConfigError, match="unknown config key 'text2text.beams'"):
        load_text2text_config(str(TINY_CONFIG), ["text2text.beams=4"])


def test_config_reads_the_text2text_section_of_a_full_config():
    @dataclasses.dataclass
    class FullConfig(Config):  # the experiment Config with a text2text section, as train.py has
        text2text: Text2TextConfig = dataclasses.field(default_factory=Text2TextConfig)

    tiny = load_text2text_config(str(TINY_CONFIG))
    full = FullConfig(method="text2text", output_dir="runs/x", seed=7, model=tiny.model,
                      text2text=tiny.text2text)
    config = load_text2text_config(full)
    assert config.text2text == tiny.text2text
    assert (config.output_dir, config.seed, config.mesh) == ("runs/x", 7, full.mesh)
    with pytest.raises(ConfigError, match="method"):
        load_text2text_config(dataclasses.replace(full, method="pet"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


BUILT_IN = [  # (reader, reader_options, file, format, format_options)
    ("translation", {}, "translation.tsv", "translate",
     {"source_language": "en", "target_language": "de"}),
    ("cnn_dailymail", {}, "cnndm.jsonl", "summarize", {}),
    ("glue_tsv", {"task": "mnli"}, "mnli.tsv", "mnli", {}),
    ("glue_tsv", {"task": "stsb"}, "stsb.tsv", "stsb", {}),
    ("squad", {}, "squad.json", "squad", {}),
]


@pytest.mark.parametrize("reader,reader_options,file,fmt,format_options", BUILT_IN)
def test_built_in_formats_read_render_encode_and_score(tokenizer, reader, reader_options, file,
                                                        fmt, format_options):
    section = Text2TextConfig(data_dir=str(ROOT / "tests/data/t2t"), train_file=file,
                              reader=reader, reader_options=reader_options, format=fmt,
                              format_options=format_options, max_seq_length=24,
                              max_target_length=6)
    records = read_records(section, file)
    pairs = [p for p in render(section, records) if p.targets is not None]
    too_long = sum(len(tokenizer(p.inputs)["input_ids"]) > 24 for p in pairs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arrays, cut = encode_pairs(tokenizer, pairs, 24, 6, file)
    assert cut["inputs"] == too_long
    assert any("max_seq_length" in str(w.message) for w in caught) == (too_long > 0)
    assert arrays["input_ids"].shape == (len(pairs), 24)
    assert arrays["target_ids"].shape == (len(pairs), 6)
    eos = 1
    last_inputs = arrays["input_ids"][np.arange(len(pairs)), arrays["attention_mask"].sum(1) - 1]
    assert (last_inputs == eos).all()  # every row ends with EOS, cut or not
    kept = [r for r, p in zip(records, render(section, records), strict=True)
            if p.targets is not None]
    perfect = compute_metric(metric_name(section), [p.targets for p in pairs], pairs, kept)
    best = {"bleu": 100.0, "rouge1": 100.0, "accuracy": 100.0, "em": 100.0, "f1": 100.0}
    for key, value in perfect.items():
        if key in best:
            assert value == pytest.approx(best[key]), (key, perfect)
    if fmt == "stsb":  # rounded targets against the raw scores: strongly, not perfectly, related
        assert perfect["pearson"] > 99.0


def test_model_section_options_reach_the_t5_model(model_dir, tmp_path):
    from jaxpet.text2text.run import load_model

    lm = load_model(tiny_config(model_dir, tmp_path, "model.remat=true"))
    assert lm.config.remat and lm.module.config is lm.config
    with pytest.raises(ConfigError, match="model.attention .* not to T5"):
        load_model(tiny_config(model_dir, tmp_path, "model.attention_dropout=0"))
