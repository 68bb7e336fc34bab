"""End-to-end: train.py / jaxpet CLI on a tiny BERT and AG News-format fixture data."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxpet.cli import main, train_main
from jaxpet.config import load_config
from jaxpet.runs.outputs import read_jsonl

REPO = Path(__file__).resolve().parents[1]
TOPICS = {  # label -> (verbalizer word, topic words)
    "1": ("world", ["minister", "election", "border", "treaty", "embassy"]),
    "2": ("sports", ["match", "goal", "coach", "league", "striker"]),
    "3": ("business", ["stocks", "profit", "market", "shares", "bank"]),
    "4": ("tech", ["software", "internet", "chip", "computer", "hackers"]),
}
FILLER = ["the", "a", "reports", "new", "on", "monday", "says", "after", "week", "in"]


def _rows(per_label: int, seed: int) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(per_label):
        for label, (_, words) in TOPICS.items():
            head = " ".join(rng.choice(words + FILLER[:3], 4))
            body = " ".join(rng.choice(words + FILLER, 9 + i % 5)) + "."
            rows.append((label, head, body))
    return rows


def _write_csv(path: Path, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


def build_workspace(root: Path) -> dict[str, Path]:
    """Fixture data (AG News CSV), a tiny BERT MLM checkpoint with a word-level vocab whose
    words include the verbalizers, and an experiment config using both."""
    import torch
    from tiny_models import tiny_hf_config
    from transformers import BertForMaskedLM, BertTokenizer

    data = root / "agnews"
    data.mkdir()
    _write_csv(data / "train.csv", _rows(12, seed=0))
    _write_csv(data / "test.csv", _rows(4, seed=1))
    words = sorted({w for _, words in TOPICS.values() for w in words}
                   | {v for v, _ in TOPICS.values()} | set(FILLER)
                   | {"news", ":", "(", ")", ".", "-"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    hf_config = tiny_hf_config("bert", len(tokenizer), tokenizer)
    torch.manual_seed(0)
    model = BertForMaskedLM(hf_config).eval()
    model_dir = root / "tiny-bert"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    config = root / "exp.yaml"
    config.write_text(f"""\
method: pet
output_dir: {root / "out-pet"}
seed: 3
compilation_cache: {root / "xla-cache"}
task: {{name: agnews, data_dir: {data}, train_examples: 16, test_examples: -1,
        unlabeled_examples: 24, split_examples_evenly: true}}
model: {{name: {model_dir}}}
pet: {{pattern_ids: [0, 1], repetitions: 1, max_seq_length: 32, train_batch_size: 4,
      unlabeled_batch_size: 4, max_steps: 3, learning_rate: 1e-3, lm_training: true,
      max_mlm_targets: 4}}
classifier: {{max_seq_length: 32, train_batch_size: 4, max_steps: 3, learning_rate: 1e-3}}
mesh: {{data: 1}}
eval: {{batch_size: 8}}
logging: {{progress: false, every: 1}}
""")
    return {"root": root, "data": data, "model": model_dir, "config": config}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("train_cli"))


def _check_member(folder: Path, num_eval: int, num_unlabeled: int | None, steps: int) -> dict:
    results = json.loads((folder / "results.json").read_text())
    logits_NxL = np.load(folder / "eval_logits.npy")
    assert logits_NxL.shape == (num_eval, 4) and np.isfinite(logits_NxL).all()
    predictions = read_jsonl(folder / "predictions.jsonl")
    assert len(predictions) == num_eval
    labels = ["1", "2", "3", "4"]
    assert [p["label"] for p in predictions] == [labels[i] for i in logits_NxL.argmax(-1)]
    accuracy = np.mean([p["label"] == p["gold"] for p in predictions])
    assert results["metrics"]["acc"] == pytest.approx(accuracy)
    if num_unlabeled is not None:
        assert np.load(folder / "unlabeled_logits.npy").shape == (num_unlabeled, 4)
    log = read_jsonl(folder / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    for record in log:
        for key in ("loss", "learning_rate", "grad_norm"):
            assert np.isfinite(record[key]), key
        assert record["examples_per_s"] > 0 and record["tokens_per_s"] > 0
    # linear decay to 0 over the run
    assert log[0]["learning_rate"] > log[-1]["learning_rate"]
    return results


def _untrained_train_accuracy(workspace: dict, pattern_id: int) -> float:
    """The untrained checkpoint's accuracy on the labeled set, from transformers' PyTorch BERT
    on hand-written pattern text (agnews P0 `___ : a b`, P1 `___ News: a b`, pet.md)."""
    import torch
    from transformers import BertForMaskedLM, BertTokenizer

    from jaxpet.pipelines.setup import load_task_data

    train = load_task_data(load_config(workspace["config"])).train
    assert len(train) == 16
    tokenizer = BertTokenizer.from_pretrained(str(workspace["model"]))
    model = BertForMaskedLM.from_pretrained(str(workspace["model"])).eval()
    words = tokenizer.convert_tokens_to_ids([TOPICS[label][0] for label in sorted(TOPICS)])
    hits = []
    for example in train:
        prefix = {0: "", 1: "News"}[pattern_id]
        text = f"{tokenizer.mask_token} {prefix}: {example.text_a} {example.text_b}"
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        assert ids.shape[1] <= 32  # the run's max_seq_length: nothing was cut
        with torch.no_grad():
            logits_V = model(input_ids=ids).logits[0, 1]  # [CLS] [MASK] ...
        hits.append(int(logits_V[words].argmax()) == sorted(TOPICS).index(example.label))
    return float(np.mean(hits))


def test_pet_run_writes_all_outputs(workspace, capsys):
    # distillation is covered by tests/test_pipeline.py
    assert train_main(["--config", str(workspace["config"]), "no_distillation=true"]) == 0
    out = workspace["root"] / "out-pet"
    printed = capsys.readouterr().out
    assert "| setting" in printed and "PET p0" in printed and "zero-shot p1" in printed
    # the resolved config loads back as the same experiment
    resolved = load_config(out / "config.yaml")
    assert resolved.pet.pattern_ids == [0, 1] and resolved.pet.lm_training is True
    top = json.loads((out / "results.json").read_text())
    assert set(top["members"]) == {"p0-s0", "p1-s0"}
    assert set(top["zero_shot"]) == {"p0", "p1"}
    for name in ("p0-s0", "p1-s0"):
        member = _check_member(out / name, num_eval=16, num_unlabeled=24, steps=3)
        assert member["train_set_before_training"] == pytest.approx(
            _untrained_train_accuracy(workspace, member["pattern_id"]))
        assert member["seed"] == 3 and member["num_train"] == 16
        log = read_jsonl(out / name / "metrics.jsonl")
        assert all(r["mlm"] > 0 for r in log)  # the auxiliary MLM loss is active
        assert top["patterns"][f"p{member['pattern_id']}"]["acc"]["mean"] == pytest.approx(
            member["metrics"]["acc"])
    assert (out / "summary.md").read_text().startswith("agnews")

    # `jaxpet report` prints the same table; a second run reuses the finished members
    assert main(["report", str(out)]) == 0
    assert "PET p1" in capsys.readouterr().out
    assert train_main(["--config", str(workspace["config"]), "eval.zero_shot=false",
                       "no_distillation=true"]) == 0
    assert "reusing" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again["members"] == top["members"]


def test_sequence_classifier(workspace, capsys):
    out = workspace["root"] / "out-sc"
    status = train_main(["--config", str(workspace["config"]), "method=sequence_classifier",
                         f"output_dir={out}", "classifier.repetitions=1"])
    assert status == 0
    assert "sequence classifier" in capsys.readouterr().out
    top = json.loads((out / "results.json").read_text())
    assert top["method"] == "sequence_classifier" and "members" not in top
    member = _check_member(out / "sc-s0", num_eval=16, num_unlabeled=None, steps=3)
    assert top["classifier"]["summary"]["acc"]["mean"] == pytest.approx(member["metrics"]["acc"])


def test_train_py_reports_config_errors(workspace):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(workspace["config"]),
         "pet.lm_trainig=true"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'pet.lm_trainig'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [(["task.name=nosuchtask"], "unknown task 'nosuchtask'"),
     (["task.data_dir=/does/not/exist"], "file not found"),
     (["pet.max_steps=abc"], "pet.max_steps"),
     (["pet.train_batch_size=3", "mesh.data=2"], "pet.train_batch_size")],
)
def test_user_errors_exit_2_without_traceback(workspace, capsys, overrides, message):
    status = train_main(["--config", str(workspace["config"]),
                         f"output_dir={workspace['root'] / 'out-err'}", *overrides])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err


def test_label_outside_task_is_reported_with_file_and_line(workspace, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    rows = _rows(2, seed=0)
    rows[3] = ("7", rows[3][1], rows[3][2])
    _write_csv(bad / "train.csv", rows)
    _write_csv(bad / "test.csv", rows)
    status = train_main(["--config", str(workspace["config"]), f"task.data_dir={bad}",
                         f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert status == 2 and "train.csv" in err and re.search(r"'?7'?", err)


def _paper_configs() -> list[Path]:
    # t5_*.yaml are text-to-text configs (method text2text reads its own sections)
    return sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("t5_"))


@pytest.mark.parametrize("path", _paper_configs(), ids=lambda p: p.name)
def test_every_config_loads_and_names_real_tasks_and_patterns(path):
    from jaxpet.data.tasks import get_task
    from jaxpet.prompts.registry import available

    text = path.read_text()
    assert text.startswith("#") and f"--config configs/{path.name}" in text, \
        "the header documents the command that runs the config"
    config = load_config(path)
    get_task(config.task.name)
    patterns = available()[config.task.name]
    assert set(config.pet.pattern_ids) <= set(patterns), (config.pet.pattern_ids, patterns)
    # paper setups quote what they target; the offline demos (demo, petal_demo) say what runs
    if config.method in ("pet", "ipet") and not path.name.endswith("demo.yaml"):
        assert "paper" in text.lower() or "Target" in text
