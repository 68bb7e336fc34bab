"""The five T5 paper formats trained and evaluated end to end from their real configs.

Each format runs `train.py --config configs/t5_<task>.yaml` (train_main, as train.py calls it) with
dotted overrides that only swap in a tiny local T5, the fixture folders under tests/data/t2t
(laid out with the file names the configs expect) and small sizes; everything else (reader,
format, beams, metric, rank classification, dtype) comes from the config file. The metric in
results.json is recomputed from predictions.jsonl with the metric libraries themselves and with
SQuAD's normalisation and sentence splitting written out here, not taken from jaxpet. One format
(translation: BLEU is zero until the model has learned something, so only a trained model makes
its recomputation mean anything) trains for STEPS steps; the other four share its compiled
programs and train for SHORT_STEPS, which exercises their reader, format, decoding and metric
just as well.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import string
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
import tiny_t5
import yaml

from jaxpet.cli import EXIT_USER_ERROR, train_main

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "t2t"
STEPS = 30
SHORT_STEPS = 2
FULLY_TRAINED = "translate"
# Digits (STS-B targets) and capitals the stock tiny tokenizer lacks: without them "3.6" is
# "<unk>.<unk>" and no STS-B prediction could ever parse as a number.
EXTRA_TOKENIZER_TEXTS = ["0.0 0.2 0.4 0.6 0.8 1.0 1.2 2.4 3.6 4.8 5.0 Das Der Die Ein Dog It "
                         "Work Council Owning"] * 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("t2t_formats_model"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny_t5, "TOKENIZER_TEXTS", tiny_t5.TOKENIZER_TEXTS + EXTRA_TOKENIZER_TEXTS)
        tiny_t5.make_t5_tokenizer(folder)
    tiny_t5.make_tiny_t5(folder, "1.0", vocab_size=224, seed=2)
    return folder


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by this module's runs (all five train the same program
    shapes, so the train step compiles once) and XLA's quick CPU compile mode (the
    FAST_CPU_COMPILE options that train.py cannot pass); JAX's settings are put back after."""
    from jax.experimental.compilation_cache import compilation_cache

    previous_dir = jax.config.jax_compilation_cache_dir
    previous_fast = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield str(tmp_path_factory.mktemp("xla_cache"))
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", previous_dir)
    jax.config.update("jax_disable_most_optimizations", previous_fast)


def small_run(model_dir: str, out: Path, cache: str, data_dir: Path,
              steps: int = STEPS) -> list[str]:
    """The overrides of a quick CPU run: tiny model, fixture data, few steps, short lengths. The
    learning rate is raised so that 30 steps fit the fixtures well enough to give non-zero
    scores (an exact recomputation of a zero says little)."""
    return [f"model.name={model_dir}", f"output_dir={out}", f"text2text.data_dir={data_dir}",
            f"text2text.max_steps={steps}", "text2text.train_batch_size=4",
            "text2text.learning_rate=1e-2", "text2text.max_seq_length=48",
            "text2text.max_target_length=12", "text2text.max_new_tokens=12", "mesh.data=2",
            "logging.every=1", "logging.progress=false", f"compilation_cache={cache}"]


# ---- what each fixture evaluation file holds, read without jaxpet ----------------------------

def _tsv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def wmt_eval(path: Path) -> tuple[list[str], list]:
    targets = [line.rstrip("\n").split("\t")[1] for line in path.read_text().splitlines()]
    return targets, targets


def cnndm_eval(path: Path) -> tuple[list[str], list]:
    targets = [json.loads(line)["highlights"] for line in path.read_text().splitlines()]
    return targets, targets


def mnli_eval(path: Path) -> tuple[list[str], list]:
    targets = [row["gold_label"] for row in _tsv_rows(path)]
    return targets, targets


def stsb_eval(path: Path) -> tuple[list[str], list]:
    """Targets: the score rounded to the nearest 0.2 (Python's round is half to even, as
    T5's); references: the raw scores, which the correlation is computed against."""
    scores = [float(row["score"]) for row in _tsv_rows(path)]
    return [f"{round(s * 5) / 5:.1f}" for s in scores], scores


def squad_eval(path: Path) -> tuple[list[str], list]:
    """Target: the first answer (fixture answers need no punctuation padding); references:
    all gold answers, which EM/F1 take the best over."""
    answers = [[a["text"] for a in qa["answers"]]
               for article in json.loads(path.read_text())["data"]
               for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    return [a[0] for a in answers], answers


# ---- the metric recomputed from predictions.jsonl --------------------------------------------

def bleu_of(predictions: list[str], references: list) -> dict[str, float]:
    import sacrebleu

    score = sacrebleu.corpus_bleu(predictions, [references], smooth_method="exp",
                                  tokenize="intl").score
    return {"bleu": score}


def one_sentence_per_line(text: str) -> str:
    """rougeLsum reads one sentence per line; generated summaries come on one line, so split
    after every '.', '!' or '?' that a space or the end follows."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return "\n".join(s for s in sentences if s)


def rouge_of(predictions: list[str], references: list) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(one_sentence_per_line(r), one_sentence_per_line(p))
              for p, r in zip(predictions, references, strict=True)]
    return {k: 100.0 * float(np.mean([s[k].fmeasure for s in scores])) for k in scores[0]}


def accuracy_of(predictions: list[str], references: list) -> dict[str, float]:
    return {"accuracy": 100.0 * float(np.mean([p == r for p, r in
                                               zip(predictions, references, strict=True)]))}


def correlation_of(predictions: list[str], references: list) -> dict[str, float]:
    from scipy import stats

    values = np.array([generated_number(p) for p in predictions])
    if np.ptp(values) == 0.0:  # one repeated output: no correlation is defined
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": 100.0 * stats.pearsonr(values, references)[0],
            "spearman": 100.0 * stats.spearmanr(values, references)[0]}


def generated_number(text: str) -> float:
    """A generated number; anything else scores -1, as T5's STS-B evaluation does."""
    try:
        return float(text)
    except ValueError:
        return -1.0


def squad_normalized(text: str) -> list[str]:
    """SQuAD v1.1's answer normalisation, as its official evaluation script defines it: lower
    case, no punctuation, no articles, single spaces; returned as tokens."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def squad_f1(prediction: str, gold: str) -> float:
    predicted, true = squad_normalized(prediction), squad_normalized(gold)
    same = sum((collections.Counter(predicted) & collections.Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_of(predictions: list[str], references: list) -> dict[str, float]:
    em = [max(squad_normalized(p) == squad_normalized(g) for g in golds)
          for p, golds in zip(predictions, references, strict=True)]
    f1 = [max(squad_f1(p, g) for g in golds)
          for p, golds in zip(predictions, references, strict=True)]
    return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


Reader = Callable[[Path], tuple[list[str], list]]
Scorer = Callable[[list[str], list], dict[str, float]]
FORMATS: dict[str, tuple[str, str, str, str, Reader, Scorer]] = {
    # format: (config, fixture folder, evaluation file, metric, eval reader, scorer)
    "translate": ("t5_wmt_ende.yaml", "wmt14_ende", "newstest2014.tsv", "bleu", wmt_eval,
                  bleu_of),
    "summarize": ("t5_cnndm.yaml", "cnn_dailymail", "validation.jsonl", "rouge", cnndm_eval,
                  rouge_of),
    "mnli": ("t5_mnli.yaml", "MNLI", "dev_matched.tsv", "accuracy", mnli_eval, accuracy_of),
    "stsb": ("t5_stsb.yaml", "STS-B", "dev.tsv", "correlation", stsb_eval, correlation_of),
    "squad": ("t5_squad.yaml", "squad", "dev-v1.1.json", "squad", squad_eval, squad_of),
}


def reject_nan(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_paper_formats_train_and_score_from_their_configs(model_dir, compile_cache, tmp_path,
                                                          capsys):
    # One test for the five runs, so that pytest-xdist never splits them over two workers that
    # would each compile the shared train step; every format runs even when one fails.
    failures = {}
    for fmt in FORMATS:
        try:
            check_format(fmt, model_dir, compile_cache, tmp_path / fmt, capsys)
        except AssertionError as error:
            failures[fmt] = error
    assert not failures, "\n\n".join(f"{fmt}: {error}" for fmt, error in failures.items())


def check_format(fmt: str, model_dir: str, compile_cache: str, out: Path,
                 capsys: pytest.CaptureFixture) -> None:
    config_name, folder, eval_file, metric, eval_reader, scorer = FORMATS[fmt]
    config_path = ROOT / "configs" / config_name
    steps = STEPS if fmt == FULLY_TRAINED else SHORT_STEPS
    overrides = small_run(model_dir, out, compile_cache, DATA / folder, steps)
    capsys.readouterr()
    assert train_main(["--config", str(config_path), *overrides]) == 0
    check_config_was_used(config_path, out, fmt)
    results = json.loads((out / "results.json").read_text())
    assert (results["format"], results["metric"], results["steps"]) == (fmt, metric, steps)
    # the summary line train.py prints is results.json's scores, in valid JSON
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1],
                         parse_constant=reject_nan)
    assert summary["metrics"] == results["metrics"]
    check_loss_decreases(out, steps)
    assert (out / "model" / "model.safetensors").is_file()

    targets, references = eval_reader(DATA / folder / eval_file)
    rows = read_lines(out / "predictions.jsonl")
    assert results["num_eval"] == len(rows) == len(targets)
    assert [r["target"] for r in rows] == targets
    # SQuAD and STS-B are scored against more than the target string: the file says what
    scored_against = [r.get("reference", r["target"]) for r in rows]
    assert scored_against == references
    predictions = [r["prediction"] for r in rows]
    expected = scorer(predictions, references)
    if fmt == FULLY_TRAINED:
        assert all(v > 0 for v in expected.values()), expected  # a zero proves little
    # results.json writes an undefined (NaN) score as null
    scores = {k: float("nan") if v is None else v for k, v in results["metrics"].items()}
    assert scores == pytest.approx(expected, nan_ok=True)
    if fmt == "mnli":
        check_rank_classification(out, rows, results)


def check_config_was_used(config_path: Path, out: Path, fmt: str) -> None:
    """Every text2text key the test did not override has the config file's value."""
    original = yaml.safe_load(config_path.read_text())
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["text2text"]["format"] == fmt
    for key in ("reader", "reader_options", "format", "format_options", "num_beams",
                "length_penalty", "metric", "rank_classification", "train_file", "eval_file"):
        if key in original["text2text"]:
            assert saved["text2text"][key] == original["text2text"][key], key
    assert saved["model"]["dtype"] == original["model"]["dtype"]


def check_loss_decreases(out: Path, steps: int = STEPS) -> None:
    """Every step logged with a finite loss; a run of STEPS fits: the last losses are at most
    half the first (an untrained or mis-wired loss stays near its start)."""
    losses = [row["loss"] for row in read_lines(out / "metrics.jsonl")]
    assert len(losses) == steps
    assert np.all(np.isfinite(losses))
    if steps >= 10:
        assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def check_rank_classification(out: Path, rows: list[dict], results: dict) -> None:
    """The config ranks the three label strings by log-likelihood; the choice is the argmax of
    the saved scores, and its accuracy is scored like the generated strings."""
    scores = np.load(out / "rank_scores.npy")
    labels = np.array(["entailment", "neutral", "contradiction"])
    assert scores.shape == (len(rows), 3) and np.all(scores < 0.0)
    ranked = labels[scores.argmax(-1)].tolist()
    assert [r["rank_prediction"] for r in rows] == ranked
    assert results["rank_classification"] == pytest.approx(
        accuracy_of(ranked, [r["target"] for r in rows]))


def test_train_py_runs_the_offline_text2text_config(model_dir, compile_cache, tmp_path):
    """`python train.py --config configs/t5_tiny_offline.yaml` as a user types it. With the
    format tests' sizes, dtype and evaluation batch, its train step and greedy decoding are the
    programs those compiled, and come from the shared cache instead of being compiled again."""
    out = tmp_path / "tiny"
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    command = [sys.executable, "train.py", "--config", "configs/t5_tiny_offline.yaml",
               *small_run(model_dir, out, compile_cache, DATA), "model.dtype=bfloat16",
               "eval.batch_size=4"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    assert summary["metrics"] == results["metrics"]
    assert (results["method"], results["format"], results["steps"]) == ("text2text", "template",
                                                                        STEPS)
    check_loss_decreases(out)
    # checkpoint.every 20 of the config, and the final state
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == [20, STEPS]
    rows = read_lines(out / "predictions.jsonl")
    dev = read_lines(DATA / "sentiment_dev.jsonl")
    assert [r["guid"] for r in rows] == [d["id"] for d in dev]
    assert [r["target"] for r in rows] == [d["label"] for d in dev]
    assert results["metrics"] == pytest.approx(
        accuracy_of([r["prediction"] for r in rows], [r["target"] for r in rows]))
    assert {r["rank_prediction"] for r in rows} <= {"positive", "negative"}


# ---- errors a user can make with these configs -----------------------------------------------

def test_missing_data_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    # As typed without the data: the config's relative data_dir does not exist, and the model
    # (t5-base, not downloadable offline) must not be loaded first.
    monkeypatch.chdir(tmp_path)
    status = train_main(["--config", str(ROOT / "configs" / "t5_mnli.yaml"), "output_dir=out",
                         "compilation_cache=''"])
    assert status == EXIT_USER_ERROR
    message = capsys.readouterr().err
    assert "data/MNLI/train.tsv: no such data file" in message
    assert "text2text.train_file='train.tsv'" in message
    assert "text2text.data_dir='data/MNLI'" in message


def test_a_missing_eval_file_fails_before_training(tmp_path, capsys):
    # The model stays the config's t5-base, which cannot load offline: the error must come first.
    out = tmp_path / "out"
    status = train_main(["--config", str(ROOT / "configs" / "t5_squad.yaml"), f"output_dir={out}",
                         f"text2text.data_dir={DATA / 'squad'}",
                         "text2text.eval_file=dev-v2.0.json", "compilation_cache=''"])
    assert status == EXIT_USER_ERROR
    message = capsys.readouterr().err
    assert f"{DATA / 'squad' / 'dev-v2.0.json'}: no such data file" in message
    assert "text2text.eval_file='dev-v2.0.json'" in message
    assert not (out / "metrics.jsonl").exists()  # no training step ran


def test_a_record_without_a_field_of_the_format_is_named(tmp_path, capsys):
    # JSONL sentiment records rendered with the mnli format: no premise/hypothesis fields. The
    # model (runs/tiny_t5 of the config) is never built here: records are checked before.
    status = train_main(["--config", str(ROOT / "configs" / "t5_tiny_offline.yaml"),
                         f"model.name={tmp_path / 'no_model'}", f"output_dir={tmp_path / 'out'}",
                         f"text2text.data_dir={DATA}", "text2text.format=mnli",
                         "compilation_cache=''"])
    assert status == EXIT_USER_ERROR
    message = capsys.readouterr().err
    assert ("sentiment_train.jsonl: record 'train-0': mnli: missing key 'premise' (the record "
            "has fields ['id', 'label', 'text'])") in message


@pytest.mark.parametrize("overrides, message", [
    (["text2text.format=summarise"], "config key 'text2text.format' must be one of"),
    (["text2text.format_options.target_language="],
     "config key 'text2text.format_options.target_language' is required with format "
     "'translate'"),
    (["text2text.reader=wmt"], "config key 'text2text.reader' must be one of"),
])
def test_config_mistakes_exit_2_naming_the_key(overrides, message, tmp_path, capsys):
    status = train_main(["--config", str(ROOT / "configs" / "t5_wmt_ende.yaml"),
                         f"output_dir={tmp_path}", *overrides])
    assert status == EXIT_USER_ERROR
    assert message in capsys.readouterr().err
