"""jaxpet predict and jaxpet.predict.load: saved members, the distilled classifier and the merged
ensemble of tiny trained runs label new text exactly as the runs' own evaluations did."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import saved_runs

import jaxpet.engine.training
import jaxpet.pipelines.pet
from jaxpet.cli import main
from jaxpet.runs.outputs import read_jsonl

LABELS = ["1", "2", "3", "4"]
MEMBERS = ["p0-s0", "p1-s0"]
# Scores go through the same compiled program on the same parameters (saved and reloaded in
# float32); a wrong pattern, verbalizer or label order moves them by far more than this.
SCORE_TOL = dict(rtol=1e-5, atol=1e-5)
# Multi-token scores (sums of log p near -10) from the run's own program: only float32
# rounding may differ; ltr vs max_first decoding differs by 1e-4 on the tiny COPA members.
EXACT_TOL = dict(rtol=0, atol=2e-5)



def softmax_np(scores_NxL: np.ndarray) -> np.ndarray:
    shifted = np.asarray(scores_NxL, np.float64) - np.max(scores_NxL, axis=-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)


def run_and_save(config) -> Path:
    """Runs `config`; the pipeline saves every member it trains (output.save_models: all)."""
    jaxpet.pipelines.pet.run(config)
    return all_members_saved(Path(config.output_dir))


def all_members_saved(out: Path) -> Path:
    """`out`, after checking that the run saved every member it trained (save_models: all)."""
    from jaxpet.runs.saved_model import is_saved_model

    members = [m for m in out.glob("p*-s*") if (m / "results.json").exists()]
    assert members and all(is_saved_model(m / "model") for m in members), members
    return out


def eval_examples(config) -> list:
    """The run's evaluation texts, without their labels (new text to the predictor)."""
    from jaxpet.pipelines.setup import load_task_data

    return [dataclasses.replace(e, label=None) for e in load_task_data(config).eval]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return saved_runs.agnews_workspace(tmp_path_factory)


@pytest.fixture(scope="module")
def pet_run(tmp_path_factory):
    """A PET run (two patterns, three steps each) distilled into a classifier: the one that
    test_saved_models and test_evaluate check too (trained once per session)."""
    run = saved_runs.pet_run(tmp_path_factory)
    return all_members_saved(run["out"]), run["config"]


@pytest.mark.parametrize("member", MEMBERS)
def test_a_member_folder_labels_as_the_run_evaluated_it(pet_run, member):
    from jaxpet.predict import load

    out, config = pet_run
    predictor = load(out / member / "model")
    assert predictor.labels == LABELS and predictor.source == "model"
    labels, probs_NxL = predictor.predict(eval_examples(config))
    expected_NxL = np.load(out / member / "eval_logits.npy")
    np.testing.assert_allclose(predictor.scores(eval_examples(config)), expected_NxL,
                               **SCORE_TOL)
    assert labels == [r["label"] for r in read_jsonl(out / member / "predictions.jsonl")]
    np.testing.assert_allclose(probs_NxL, softmax_np(expected_NxL), **SCORE_TOL)


def test_the_patterns_score_differently(pet_run):
    """The round trips above compare like with like: the members' own scores differ."""
    out, _ = pet_run
    p0, p1 = (np.load(out / m / "eval_logits.npy") for m in MEMBERS)
    assert np.abs(p0 - p1).max() > 100 * SCORE_TOL["atol"]


def test_a_run_folder_uses_its_distilled_classifier(pet_run):
    from jaxpet.predict import load

    out, config = pet_run
    predictor = load(out)
    assert predictor.source == "distilled" and predictor.labels == LABELS
    labels, probs_NxL = predictor.predict(eval_examples(config))
    expected_NxL = np.load(out / "distilled" / "eval_logits.npy")
    np.testing.assert_allclose(softmax_np(expected_NxL), probs_NxL, **SCORE_TOL)
    assert labels == [r["label"] for r in read_jsonl(out / "distilled" / "predictions.jsonl")]


def ensemble_view(out: Path, folder: Path, weights: list[float] | None = None) -> Path:
    """The run folder without its distilled model (its final model is then the merged
    ensemble); `weights` replace the members' labeled-set accuracies before training."""
    for name, weight in zip(MEMBERS, weights or [None] * len(MEMBERS), strict=True):
        (folder / name).mkdir(parents=True)
        (folder / name / "model").symlink_to(out / name / "model", target_is_directory=True)
        results = json.loads((out / name / "results.json").read_text())
        if weight is not None:
            results["train_set_before_training"] = weight
        (folder / name / "results.json").write_text(json.dumps(results))
    return folder


def test_a_run_folder_without_distillation_merges_its_members(pet_run, tmp_path):
    from jaxpet.predict import load

    out, config = pet_run
    predictor = load(ensemble_view(out, tmp_path / "run"))
    assert predictor.source == "ensemble" and len(predictor.scorers) == 2
    merged = json.loads((out / "ensemble" / "results.json").read_text())
    assert merged["reduction"] == "wmean" and predictor.weights_M.tolist() == merged["weights"]
    labels, probs_NxL = predictor.predict(eval_examples(config))
    expected_NxL = np.load(out / "ensemble" / "eval_logits.npy")
    np.testing.assert_allclose(predictor.scores(eval_examples(config)), expected_NxL,
                               **SCORE_TOL)
    np.testing.assert_allclose(probs_NxL, softmax_np(expected_NxL), **SCORE_TOL)
    assert labels == [r["label"] for r in read_jsonl(out / "ensemble" / "predictions.jsonl")]


def test_the_ensemble_weighs_members_by_their_accuracy_before_training(pet_run, tmp_path):
    """PET's wmean: member m weighted by its train_set_before_training (results.json); the
    tiny run's members both have 0.25, so other weights are set here."""
    from jaxpet.predict import load

    out, config = pet_run
    predictor = load(ensemble_view(out, tmp_path / "run", weights=[0.75, 0.125]))
    members_MxNxL = np.stack([np.load(out / m / "eval_logits.npy") for m in MEMBERS])
    expected_NxL = (0.75 * members_MxNxL[0] + 0.125 * members_MxNxL[1]) / 0.875
    scores_NxL = predictor.scores(eval_examples(config))
    np.testing.assert_allclose(scores_NxL, expected_NxL, **EXACT_TOL)
    # an unweighted mean differs from it by more than the tolerance
    assert np.abs(members_MxNxL.mean(0) - expected_NxL).max() > 10 * EXACT_TOL["atol"]


def test_batches_share_one_compiled_program(pet_run):
    from jaxpet.predict import load

    out, config = pet_run
    lowered: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listener)
    predictor = load(out / "p0-s0" / "model", batch_size=2)
    examples = eval_examples(config)  # 16 texts: 8 batches of 2
    start = len(lowered)
    scores_NxL = predictor.scores(examples)
    assert lowered[start:].count("jit(label_logits_fn)") == 1, lowered[start:]
    again = len(lowered)
    predictor.scores(examples[:5])  # another call, a padded last batch: nothing new
    assert lowered[again:].count("jit(label_logits_fn)") == 0, lowered[again:]
    # batches of 2, the run's of 8: another program, the same numbers up to float32 rounding
    np.testing.assert_allclose(scores_NxL, np.load(out / "p0-s0" / "eval_logits.npy"),
                               **SCORE_TOL)


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(["predict", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _check_output(records: list[dict], folder: Path, ids: list[str]) -> None:
    """CLI records against the member's own evaluation: ids, labels, scores and probs."""
    expected_NxL = np.load(folder / "eval_logits.npy")
    assert [r["id"] for r in records] == ids
    assert [r["label"] for r in records] == [
        r["label"] for r in read_jsonl(folder / "predictions.jsonl")]
    for key, expected in (("scores", expected_NxL), ("probs", softmax_np(expected_NxL))):
        got_NxL = np.array([[r[key][name] for name in LABELS] for r in records])
        np.testing.assert_allclose(got_NxL, expected, **SCORE_TOL)


@pytest.fixture(scope="module")
def eval_records(pet_run) -> list[dict]:
    _, config = pet_run
    return [{"id": f"news-{i}", "text_a": e.text_a, "text_b": e.text_b}
            for i, e in enumerate(eval_examples(config))]


def test_cli_jsonl_to_an_output_file(pet_run, eval_records, tmp_path, capsys):
    out, _ = pet_run
    source = tmp_path / "news.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in eval_records))
    status, printed, errors = _cli([out / "p1-s0" / "model", "--input", source,
                                    "--output", tmp_path / "labels.jsonl", "--batch-size", 4],
                                   capsys)
    assert status == 0, errors
    assert printed == "" and f"16 predictions: {tmp_path / 'labels.jsonl'}" in errors
    _check_output(read_jsonl(tmp_path / "labels.jsonl"), out / "p1-s0",
                  [r["id"] for r in eval_records])


def test_cli_csv_and_the_task_file_to_stdout(pet_run, eval_records, workspace, tmp_path,
                                             capsys):
    import csv

    out, _ = pet_run
    source = tmp_path / "news.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["text_b", "id", "text_a"])  # columns in any order
        writer.writeheader()
        writer.writerows(eval_records)
    status, printed, errors = _cli([out / "p0-s0" / "model", "--input", source], capsys)
    assert status == 0, errors
    _check_output(_records(printed), out / "p0-s0", [r["id"] for r in eval_records])
    # AG News' own test.csv (no header, label first): read by the task's reader
    status, printed, errors = _cli([out / "p0-s0" / "model", "--input",
                                    workspace["data"] / "test.csv"], capsys)
    assert status == 0, errors
    _check_output(_records(printed), out / "p0-s0", [f"test-{i}" for i in range(16)])


def test_cli_stdin_lines_are_texts(pet_run, eval_records, monkeypatch, tmp_path, capsys):
    out, _ = pet_run
    lines = [r["text_a"] for r in eval_records[:5]]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(
        ("\n".join(lines) + "\n").encode())))
    status, printed, errors = _cli([out / "p0-s0" / "model", "--input", "-"], capsys)
    assert status == 0, errors
    from_stdin = _records(printed)
    assert [r["id"] for r in from_stdin] == ["1", "2", "3", "4", "5"]  # line numbers
    # the same texts as text_a alone in a JSONL file: the same scores
    source = tmp_path / "single.jsonl"
    source.write_text("".join(json.dumps({"text_a": t}) + "\n" for t in lines))
    status, printed, errors = _cli([out / "p0-s0" / "model", "--input", source], capsys)
    assert status == 0, errors
    assert [r["scores"] for r in _records(printed)] == [r["scores"] for r in from_stdin]
    # and not those of the full pairs (text_b is part of the pattern)
    assert [r["scores"]["1"] for r in from_stdin] != pytest.approx(
        np.load(out / "p0-s0" / "eval_logits.npy")[:5, 0].tolist(), abs=1e-4)


@pytest.mark.parametrize("name, content, message", [
    ("cols.csv", b"text,label\nsome news,1\n",
     r"cols\.csv:1: no 'text_a' column \(has \['text', 'label'\]\)"),
    ("keys.jsonl", b'{"text": "some news"}\n',
     r"keys\.jsonl:1: no 'text_a' column \(has \['text'\]\)"),
    ("types.jsonl", b'{"text_a": "news"}\n{"text_a": 7}\n',
     r"types\.jsonl:2: text_a must be a string, got 7"),
    ("rows.csv", b"id,text_a\n1,news\n2,more,news\n", r"rows\.csv:3: 3 columns, the header has 2"),
    ("empty.jsonl", b" \n\n", r"empty\.jsonl: the file is empty"),
    ("latin1.csv", b"id,text_a\n1,news\n2,caf\xe9\n", r"latin1\.csv:3: not valid UTF-8"),
    ("header.csv", b"id,text_a\n", r"header\.csv: only a header, no rows"),
])
def test_cli_bad_input_is_one_line_naming_file_and_line(pet_run, tmp_path, capsys, name,
                                                       content, message):
    import re

    out, _ = pet_run
    (tmp_path / name).write_bytes(content)
    status, printed, errors = _cli([out / "p0-s0" / "model", "--input", tmp_path / name],
                                   capsys)
    assert status == 2 and printed == ""
    assert errors.startswith("error: ") and "Traceback" not in errors
    assert re.search(message, errors.splitlines()[0]), errors


def test_cli_a_folder_that_is_no_model_nor_run(pet_run, tmp_path, capsys):
    out, _ = pet_run
    (tmp_path / "in.txt").write_text("some news\n")
    for folder, why in ((tmp_path, "holds no jaxpet.json"), (tmp_path / "nope", "does not exist"),
                        (tmp_path / "in.txt", "is not a folder")):
        status, _, errors = _cli([folder, "--input", tmp_path / "in.txt"], capsys)
        assert status == 2
        assert f"{folder}: neither a saved model folder nor a run folder" in errors, errors
        assert why in errors
    status, _, errors = _cli([out / "p0-s0" / "model", "--input", tmp_path / "missing.csv"],
                             capsys)
    assert status == 2 and f"{tmp_path / 'missing.csv'}: input file not found" in errors


def test_over_long_text_is_truncated_with_one_warning(pet_run, eval_records, tmp_path,
                                                      capsys):
    out, _ = pet_run
    long_text = " ".join([eval_records[0]["text_a"]] * 20)  # ~80 words, max_seq_length 32
    source = tmp_path / "long.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "text_a": long_text}, {"id": "b", "text_a": "world news"},
        {"id": "c", "text_a": long_text, "text_b": long_text}]))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a warning per input would show every time
        status, printed, errors = _cli([out / "p0-s0" / "model", "--input", source], capsys)
    assert status == 0, errors
    assert len(_records(printed)) == 3
    warned = [line for line in errors.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1, errors
    assert "2 of 3 inputs have more tokens than the model's max_seq_length=32" in warned[0]
    assert "id 'a'" in warned[0]


@pytest.fixture(scope="module")
def copa_run(tmp_path_factory):
    """A COPA run (multi-token answers, pattern 1, two steps, ltr decoding: not the
    default) reported as its ensemble, without distillation: saved_runs' (once per session)."""
    run = saved_runs.copa_run(tmp_path_factory)
    return all_members_saved(run["out"]), run["config"]


@pytest.fixture(scope="module")
def copa_predictor(copa_run):
    from jaxpet.predict import load

    out, _ = copa_run
    return load(out)


@pytest.mark.slow
def test_multi_token_members_and_ensemble_decode_as_the_run(copa_run, copa_predictor, tmp_path,
                                                            capsys):
    from jaxpet.runs.saved_model import read_card

    out, config = copa_run
    assert read_card(out / "p1-s0" / "model").decoding == "ltr"
    examples = eval_examples(config)
    assert copa_predictor.source == "ensemble"
    for member, scorer in zip(("p1-s0",), copa_predictor.scorers, strict=True):
        assert scorer.card.scorer == "candidates" and scorer.folder == out / member / "model"
        np.testing.assert_allclose(scorer.scores(examples),
                                   np.load(out / member / "eval_logits.npy"), **EXACT_TOL)
    labels, probs_NxC = copa_predictor.predict(examples)
    expected_NxC = np.load(out / "ensemble" / "eval_logits.npy")
    assert labels == [r["label"] for r in read_jsonl(out / "ensemble" / "predictions.jsonl")]
    np.testing.assert_allclose(probs_NxC, softmax_np(expected_NxC), **SCORE_TOL)
    # the CLI with choices (and the premise's question as an extra field)
    source = tmp_path / "copa.jsonl"
    source.write_text("".join(json.dumps({
        "text_a": e.text_a, "choices": [e.meta["choice1"], e.meta["choice2"]],
        "question": e.meta["question"]}) + "\n" for e in examples))
    status, printed, errors = _cli([out / "p1-s0" / "model", "--input", source], capsys)
    assert status == 0, errors
    got_NxC = np.array([[r["scores"][c] for c in ("0", "1")] for r in _records(printed)])
    np.testing.assert_allclose(got_NxC, np.load(out / "p1-s0" / "eval_logits.npy"),
                               **EXACT_TOL)
    # without the choices COPA cannot be scored: one line naming the input and the example
    source.write_text(json.dumps({"text_a": "The sun rose.", "question": "effect"}) + "\n")
    status, _, errors = _cli([out / "p1-s0" / "model", "--input", source], capsys)
    assert status == 2
    assert f"{source}: example '1' lacks meta field 'choice1'" in errors, errors


@pytest.mark.slow
def test_the_decoding_strategy_is_the_cards(copa_run, copa_predictor):
    """The default max_first gives other scores than the card's ltr on these members, by more
    than EXACT_TOL: the round trip above catches a predictor that ignores the card."""
    out, config = copa_run
    scorer = dataclasses.replace(copa_predictor.scorers[0], fn=None)
    scorer.config = dataclasses.replace(scorer.config, pet=dataclasses.replace(
        scorer.config.pet, decoding_strategy="max_first"))
    other_NxC = scorer.scores(eval_examples(config))
    assert np.abs(other_NxC - np.load(out / "p1-s0" / "eval_logits.npy")).max() > 5 * EXACT_TOL[
        "atol"]


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    """A PET run on a tiny T5 backbone (label words of several tokens, scored by the decoder),
    pattern 0, two steps, no distillation: saved_runs' (once per session)."""
    run = saved_runs.t5_run(tmp_path_factory)
    return all_members_saved(run["out"]), run["config"]


@pytest.mark.slow
def test_a_t5_member_scores_as_the_run(t5_run):
    from jaxpet.predict import load

    out, config = t5_run
    predictor = load(out)  # the run's final model: its one member
    assert predictor.source == "ensemble" and predictor.scorers[0].card.scorer == "seq2seq"
    examples = eval_examples(config)
    # T5's small vocabulary cuts the fixture's texts into many pieces: some are cut
    with pytest.warns(UserWarning, match="inputs have more tokens than the model's "
                                         "max_seq_length=32"):
        labels, probs_NxL = predictor.predict(examples)
    expected_NxL = np.load(out / "p0-s0" / "eval_logits.npy")
    np.testing.assert_allclose(predictor.scorers[0].scores(examples), expected_NxL,
                               **EXACT_TOL)
    assert labels == [r["label"] for r in read_jsonl(out / "p0-s0" / "predictions.jsonl")]
    np.testing.assert_allclose(probs_NxL, softmax_np(expected_NxL), **SCORE_TOL)


def test_the_readme_snippet_gives_the_transformers_classifiers_probabilities(pet_run, capsys):
    """README "Use a trained model": its Python snippet on a run folder answers with the
    distilled classifier, as transformers' PyTorch model of distilled/model does."""
    import re

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _ = pet_run
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    snippet = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    scope: dict = {}
    exec(compile(snippet.replace('"runs/demo"', repr(str(out))), "README.md", "exec"), scope)
    assert str(scope["model"].labels) in capsys.readouterr().out
    texts = [("stocks rally as tech earnings beat forecasts", None),
             ("cup final", "the home side won the match")]
    model = AutoModelForSequenceClassification.from_pretrained(out / "distilled" / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "distilled" / "model")
    with torch.no_grad():
        logits_NxL = np.stack([model.eval()(**tokenizer(a, b, return_tensors="pt")).logits[0]
                               .numpy() for a, b in texts])
    # Flax vs PyTorch float32 kernels (parity tests: ~1e-6); unnormalised logits or another
    # model's answers differ by > 1e-2
    np.testing.assert_allclose(scope["probs"], softmax_np(logits_NxL), atol=1e-4)
    assert scope["labels"] == [LABELS[i] for i in logits_NxL.argmax(-1)]
    assert np.ptp(softmax_np(logits_NxL)) > 1e-2  # the classifier's answers are not uniform


def test_the_readme_commands(pet_run, eval_records, tmp_path, monkeypatch, capsys):
    """README "Use a trained model": its three commands on the tiny run's folder."""
    import csv
    import re
    import shlex

    out, _ = pet_run
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in re.findall(
        r"```bash\n(.*?)```", section, re.S)[0].splitlines()]
    assert len(commands) == 3
    (tmp_path / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_records))
    with open(tmp_path / "news.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["id", "text_a", "text_b"])
        writer.writeheader()
        writer.writerows(eval_records)
    monkeypatch.chdir(tmp_path)
    printed = []
    for command in commands:
        command = command.replace("runs/demo", str(out))
        stdin = ""
        if "|" in command:  # echo TEXT | jaxpet predict ...
            echo, command = command.split("|")
            stdin = shlex.split(echo)[1] + "\n"
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        argv = shlex.split(command)
        assert argv[:2] == ["jaxpet", "predict"]
        status = main(argv[1:])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        printed.append(captured.out)
    # the run folder: its distilled classifier; the member folder: that member
    distilled = read_jsonl(out / "distilled" / "predictions.jsonl")
    assert [r["label"] for r in read_jsonl(tmp_path / "labels.jsonl")] == [
        r["label"] for r in distilled]
    _check_output(_records(printed[1]), out / "p0-s0", [r["id"] for r in eval_records])
    (line,) = _records(printed[2])
    assert line["id"] == "1" and set(line["probs"]) == set(LABELS)


def test_ipet_and_classifier_run_layouts(pet_run, tmp_path):
    """An iPET run's final ensemble is its last generation's members; a sequence_classifier
    run's final model is its classifier (one; several are not merged by the run)."""
    from jaxpet.predict import load

    out, config = pet_run
    ipet = tmp_path / "ipet"
    for generation, member in (("g0", "p0-s0"), ("g1", "p1-s0")):
        (ipet / generation / "p0-s0").mkdir(parents=True)
        (ipet / generation / "p0-s0" / "model").symlink_to(out / member / "model")
        shutil.copy(out / member / "results.json", ipet / generation / "p0-s0")
    predictor = load(ipet)
    assert [s.folder for s in predictor.scorers] == [ipet / "g1" / "p0-s0" / "model"]
    np.testing.assert_allclose(predictor.scores(eval_examples(config)),
                               np.load(out / "p1-s0" / "eval_logits.npy"), **SCORE_TOL)
    classifier = tmp_path / "sc"
    (classifier / "sc-s0").mkdir(parents=True)
    (classifier / "sc-s0" / "model").symlink_to(out / "distilled" / "model")
    labels, probs_NxL = load(classifier).predict(eval_examples(config))
    np.testing.assert_allclose(probs_NxL, softmax_np(np.load(
        out / "distilled" / "eval_logits.npy")), **SCORE_TOL)
    (classifier / "sc-s1").mkdir()
    (classifier / "sc-s1" / "model").symlink_to(out / "distilled" / "model")
    with pytest.raises(ValueError, match=r"sc: a sequence_classifier run with 2 classifiers, "
                                         r"which the run does not merge; name one: "):
        load(classifier)
    # a member folder named without its model/ is that model
    assert [s.folder for s in load(out / "p1-s0").scorers] == [out / "p1-s0" / "model"]


def test_cli_a_saved_dataset_folder(pet_run, eval_records, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    out, _ = pet_run
    datasets.Dataset.from_list(eval_records).save_to_disk(str(tmp_path / "news"))
    status, printed, errors = _cli([out / "p0-s0" / "model", "--input", tmp_path / "news"],
                                   capsys)
    assert status == 0, errors
    _check_output(_records(printed), out / "p0-s0", [r["id"] for r in eval_records])
    datasets.Dataset.from_list([{"text": "world news"}]).save_to_disk(str(tmp_path / "bad"))
    status, _, errors = _cli([out / "p0-s0" / "model", "--input", tmp_path / "bad"], capsys)
    assert status == 2
    assert f"{tmp_path / 'bad'} [split 'train']: no 'text_a' column (has ['text'])" in errors


@pytest.mark.slow
def test_a_config_defined_task_in_a_fresh_process(workspace, tmp_path):
    """A task defined in the config alone (reader, template pattern, verbalizer): a new
    `jaxpet predict` process rebuilds it from the card and labels as the run evaluated."""
    import subprocess

    from jaxpet.config import load_config

    config = workspace["root"] / "custom.yaml"
    config.write_text(f"""\
method: pet
output_dir: {tmp_path / "out"}
seed: 3
no_distillation: true
compilation_cache: ""
task:
  name: my-news
  data_dir: {workspace["data"]}
  train_examples: 8
  unlabeled_examples: 0
  definition: {{format: csv, text_a: 1, text_b: 2, label: 0, labels: ["1", "2", "3", "4"],
               files: {{train: train.csv, dev: test.csv, test: test.csv}}}}
  patterns: ["{{text_a:shorten}} news : {{mask}} . {{text_b:shorten}}"]
  verbalizer: {{"1": world, "2": sports, "3": business, "4": tech}}
model: {{name: {workspace["model"]}}}
pet: {{pattern_ids: [0], repetitions: 1, max_seq_length: 32, train_batch_size: 4,
      max_steps: 3, learning_rate: 1e-2}}
eval: {{batch_size: 8, zero_shot: false}}
mesh: {{data: 1}}
logging: {{progress: false, every: 1}}
""")
    out = run_and_save(load_config(config))
    done = subprocess.run(
        [sys.executable, "-m", "jaxpet.cli", "predict", str(out), "--input",
         str(workspace["data"] / "test.csv")], capture_output=True, text=True, timeout=600,
        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _check_output(_records(done.stdout), out / "p0-s0", [f"test-{i}" for i in range(16)])
