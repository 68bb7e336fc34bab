"""train.py runs config-defined tasks (exact encoding, multi-token answers), and text2text."""

import json

import numpy as np
import pytest
from test_train_cli import build_workspace

from jaxpet.cli import train_main
from jaxpet.config import ConfigError, load_config, to_yaml

WORDS = {"1": "world", "2": "sports", "3": "business", "4": "tech"}


def test_config_defined_task_trains_from_train_py(tmp_path):
    workspace = build_workspace(tmp_path)
    out = tmp_path / "out-custom"
    # The AG News fixture read as a user's own CSV task, with a pattern given as a template.
    config = tmp_path / "custom.yaml"
    config.write_text(f"""\
method: pet
output_dir: {out}
compilation_cache: ""
no_distillation: true
task:
  name: my-topics
  data_dir: {workspace["data"]}
  train_examples: 8
  unlabeled_examples: 0
  definition: {{format: csv, text_a: 1, text_b: 2, label: 0, labels: ["1", "2", "3", "4"],
                files: {{train: train.csv, dev: test.csv}}}}
  patterns: ["{{mask}} news : {{text_a:shorten}} {{text_b:shorten}}"]
  verbalizer: {json.dumps(WORDS)}
model: {{name: {workspace["model"]}}}
pet: {{pattern_ids: [0], repetitions: 1, max_seq_length: 32, train_batch_size: 4,
      max_steps: 2, learning_rate: 1e-3}}
mesh: {{data: 1}}
eval: {{batch_size: 8, zero_shot: false}}
logging: {{progress: false}}
""")
    assert train_main(["--config", str(config)]) == 0
    member = json.loads((out / "p0-s0" / "results.json").read_text())
    assert member["num_train"] == 8 and member["num_eval"] == 16
    assert np.load(out / "p0-s0" / "eval_logits.npy").shape == (16, 4)


def test_a_partial_task_definition_names_the_missing_keys(tmp_path):
    config = tmp_path / "partial.yaml"
    config.write_text("output_dir: x\ntask: {name: t, data_dir: d, patterns: ['{mask} .']}\n"
                      "model: {name: m}\n")
    with pytest.raises(ConfigError, match=r"'task\.definition', 'task\.patterns' and "
                       r"'task\.verbalizer'"):
        load_config(config)


def test_the_method_chooses_the_sections_a_config_may_set(tmp_path):
    t2t = tmp_path / "t2t.yaml"
    t2t.write_text("method: text2text\noutput_dir: x\nmodel: {name: m}\n"
                   "text2text: {train_file: t.jsonl, template_inputs: 'q: {q}', "
                   "template_targets: '{a}'}\n")
    config = load_config(t2t)
    assert config.method == "text2text" and config.text2text.train_file == "t.jsonl"
    # a PET-only section would be ignored by a text2text run: named, not skipped silently
    with pytest.raises(ConfigError, match=r"override 'pet\.learning_rate=0\.1': config key "
                       r"'pet' is not read by method 'text2text'"):
        load_config(t2t, ["pet.learning_rate=0.1"])
    # an override of the method makes the file's text2text section the unread one
    with pytest.raises(ConfigError, match=rf"{t2t}: config key 'text2text' is not read by "
                       r"method 'pet'"):
        load_config(t2t, ["method=pet"])
    pet = load_config("configs/demo.yaml", ["output_dir=x"])
    assert pet.method == "pet" and "text2text" not in to_yaml(pet)


def test_a_model_that_cannot_fit_fails_before_compiling(tmp_path, monkeypatch, capsys):
    import jaxpet.engine.memory
    import jaxpet.pipelines.setup
    from jaxpet.pipelines.setup import load_model

    workspace = build_workspace(tmp_path)
    config = load_config(workspace["config"])
    lm = load_model(config, "mlm")  # the CPU reports no memory limit: estimate only
    assert "memory estimate: bert" in capsys.readouterr().out
    # the device query as the model loader sees it
    monkeypatch.setattr(jaxpet.pipelines.setup, "device_memory_bytes", lambda device=None: 1024)
    with pytest.raises(jaxpet.engine.memory.DoesNotFit, match="To fit, try"):
        load_model(config, "mlm")
    assert lm.config.model_type == "bert"


@pytest.mark.slow  # two PET runs, one on 8 devices, ~60-120 s on 2 shared cores
def test_tensor_parallel_mesh_from_the_config_gives_the_same_losses(tmp_path):
    from jaxpet.runs.outputs import read_jsonl

    workspace = build_workspace(tmp_path)
    common = ["pet.pattern_ids=[0]", "pet.lm_training=false", "no_distillation=true",
              "eval.zero_shot=false", "task.unlabeled_examples=0", "pet.max_steps=2"]
    losses = {}
    for name, mesh in (("single", ["mesh.data=1"]),
                       ("sharded", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])):
        out = tmp_path / name
        assert train_main(["--config", str(workspace["config"]), f"output_dir={out}",
                           *common, *mesh]) == 0
        losses[name] = [r["loss"] for r in read_jsonl(out / "p0-s0" / "metrics.jsonl")]
    np.testing.assert_allclose(losses["sharded"], losses["single"], rtol=1e-5)


def _hand_csv(folder, rows) -> None:
    import csv

    folder.mkdir()
    for name in ("train.csv", "test.csv"):
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


def test_config_defined_task_encodes_the_hand_written_tokens(tmp_path):
    from transformers import AutoTokenizer

    from jaxpet.pipelines.member import prepare_pattern
    from jaxpet.pipelines.setup import load_model, load_task_data

    workspace = build_workspace(tmp_path)
    data = tmp_path / "hand"
    _hand_csv(data, [("2", "coach league", "the match goal ."),
                     ("3", "stocks profit", "a bank .")])
    config = tmp_path / "hand.yaml"
    config.write_text(f"""\
output_dir: {tmp_path / "out"}
task:
  name: hand-topics
  data_dir: {data}
  definition: {{format: csv, text_a: 1, text_b: 2, label: 0, labels: ["1", "2", "3", "4"],
                files: {{train: train.csv, dev: test.csv}}}}
  patterns: ["{{text_a:shorten}} news : {{mask}} . || {{text_b:shorten}}"]
  verbalizer: {json.dumps(WORDS)}
  unlabeled_examples: 0
model: {{name: {workspace["model"]}}}
pet: {{max_seq_length: 16}}
mesh: {{data: 1}}
""")
    cfg = load_config(config)
    pattern = prepare_pattern(cfg, load_model(cfg, "mlm"), load_task_data(cfg), 0)
    # BERT's pair layout, written out by hand: text_a, the literal, the mask, then text_b
    expected = [["[CLS]", "coach", "league", "news", ":", "[MASK]", ".", "[SEP]",
                 "the", "match", "goal", ".", "[SEP]"],
                ["[CLS]", "stocks", "profit", "news", ":", "[MASK]", ".", "[SEP]",
                 "a", "bank", ".", "[SEP]"]]
    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    for arrays in (pattern.train, pattern.eval):
        for row, tokens in enumerate(expected):
            n = len(tokens)
            assert tokenizer.convert_ids_to_tokens(arrays["input_ids"][row][:n]) == tokens
            assert (arrays["input_ids"][row][n:] == tokenizer.pad_token_id).all()
            assert arrays["attention_mask"][row].tolist() == [1] * n + [0] * (
                len(arrays["attention_mask"][row]) - n)
            segment_b = tokens.index("[SEP]") + 1
            assert arrays["token_type_ids"][row][:n].tolist() == [0] * segment_b + [1] * (
                n - segment_b)
            assert arrays["mask_positions"][row].tolist() == [5]
        assert arrays["labels"].tolist() == [1, 2]
    # one verbalizer word per label, in the task's label order
    assert pattern.verbalizer_ids_LxW.tolist() == [
        [i] for i in tokenizer.convert_tokens_to_ids(["world", "sports", "business", "tech"])]


# label words of 1 to 3 tokens: the task needs multi-mask decoding
MULTI_WORDS = {"1": "world", "2": "sports match", "3": "business market", "4": "tech chip computer"}


def _torch_log_probs(model, ids: list[int]):
    import torch

    with torch.no_grad():
        logits_SxV = model(input_ids=torch.tensor([ids]),
                           attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           token_type_ids=torch.zeros(1, len(ids), dtype=torch.long)).logits[0]
    return torch.log_softmax(logits_SxV.double(), -1).numpy()


def _pet_score(model, ids: list[int], mask_at: list[int], targets: list[int],
               strategy: str) -> float:
    """PET's multi-mask score of one candidate: fill one mask per step (max_first: the one
    whose target token is most probable; ltr: the leftmost), summing the log-probabilities."""
    ids, remaining, total = list(ids), list(range(len(targets))), 0.0
    while remaining:
        log_p_SxV = _torch_log_probs(model, ids)
        step = [log_p_SxV[mask_at[j], targets[j]] for j in remaining]
        pick = int(np.argmax(step)) if strategy == "max_first" else 0
        j = remaining.pop(pick)
        total += step[pick]
        ids[mask_at[j]] = targets[j]
    return total


def _context_sensitive_bert(workspace: dict, folder):
    """The workspace's tokenizer with a random BERT of large initial weights: its mask
    predictions depend on the filled context, so the order of the fill steps shows in the
    scores (with the default 0.02 init, max_first and ltr agree to 1e-4)."""
    import torch
    from tiny_models import tiny_hf_config
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    hf_config = tiny_hf_config("bert", len(tokenizer), tokenizer)
    hf_config.initializer_range = 0.5
    torch.manual_seed(1)
    BertForMaskedLM(hf_config).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.slow  # a multi-token PET run and PyTorch re-scoring, ~60 s on 2 shared cores
def test_multi_token_yaml_task_scores_candidates_max_first(tmp_path, monkeypatch):
    import dataclasses

    from transformers import AutoTokenizer, BertForMaskedLM

    import jaxpet.pipelines.member
    from jaxpet.data.tasks import load_examples
    from jaxpet.models import load_pretrained, save_pretrained

    trained = []
    original_train = jaxpet.pipelines.member.train

    def keep_trained(*args, **kwargs):  # the member's trained params, which no file holds
        params, seconds = original_train(*args, **kwargs)
        trained.append(params)
        return params, seconds

    monkeypatch.setattr(jaxpet.pipelines.member, "train", keep_trained)
    workspace = build_workspace(tmp_path)
    model_dir = _context_sensitive_bert(workspace, tmp_path / "sharp-bert")
    out = tmp_path / "out-multi"
    config = tmp_path / "multi.yaml"
    config.write_text(f"""\
method: pet
output_dir: {out}
compilation_cache: ""
no_distillation: true
task:
  name: my-multi-topics
  data_dir: {workspace["data"]}
  train_examples: 8
  test_examples: 6
  unlabeled_examples: 0
  definition: {{format: csv, text_a: 1, text_b: 2, label: 0, labels: ["1", "2", "3", "4"],
                files: {{train: train.csv, dev: test.csv}}}}
  patterns: ["{{mask}} news : {{text_a:shorten}} {{text_b:shorten}}"]
  verbalizer: {json.dumps(MULTI_WORDS)}
model: {{name: {model_dir}}}
pet: {{pattern_ids: [0], repetitions: 1, max_seq_length: 32, train_batch_size: 4,
      max_steps: 2, learning_rate: 1e-2, lm_training: false}}
mesh: {{data: 1}}
eval: {{batch_size: 8, zero_shot: false}}
logging: {{progress: false}}
""")
    assert train_main(["--config", str(config)]) == 0
    member = json.loads((out / "p0-s0" / "results.json").read_text())
    assert member["decoding_strategy"] == "max_first" and member["loss"] == "hinge"
    scores_NxC = np.load(out / "p0-s0" / "eval_logits.npy")
    assert scores_NxC.shape == (6, 4) and len(trained) == 1

    # the trained member, exported and loaded into transformers' PyTorch BERT
    lm = load_pretrained(model_dir, head="mlm")
    save_pretrained(dataclasses.replace(lm, params=trained[0]), tmp_path / "member")
    model = BertForMaskedLM.from_pretrained(str(tmp_path / "member")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    examples = load_examples("my-multi-topics", workspace["data"], "dev", 6)
    tok = tokenizer.convert_tokens_to_ids
    differs = 0
    for i, example in enumerate(examples[:3]):
        text = tokenizer.tokenize(example.text_a) + tokenizer.tokenize(example.text_b)
        for c, word in enumerate(MULTI_WORDS.values()):
            targets = tok(word.split())
            # PET evaluates each candidate with exactly its own number of masks
            ids = tok(["[CLS]", *["[MASK]"] * len(targets), "news", ":", *text, "[SEP]"])
            mask_at = list(range(1, 1 + len(targets)))
            expected = _pet_score(model, ids, mask_at, targets, "max_first")
            # fp32 Flax vs PyTorch forward passes agree to ~1e-6; a skipped or misordered
            # fill step moves a score by a whole log-probability (~ -4 here)
            assert scores_NxC[i, c] == pytest.approx(expected, abs=2e-4), (i, word)
            differs += abs(expected - _pet_score(model, ids, mask_at, targets, "ltr")) > 1e-3
    assert differs, "max_first and ltr agree here: the test would not tell them apart"
    assert member["metrics"]["acc"] == pytest.approx(np.mean(
        scores_NxC.argmax(-1) == [int(e.label) - 1 for e in examples]))


def test_priming_refuses_multi_token_label_words(tmp_path):
    from jaxpet.pipelines.member import prepare_pattern
    from jaxpet.pipelines.setup import load_model, load_task_data

    workspace = build_workspace(tmp_path)
    config = tmp_path / "primed-multi.yaml"
    config.write_text(f"""\
output_dir: {tmp_path / "out"}
task:
  name: my-primed-multi
  data_dir: {workspace["data"]}
  definition: {{format: csv, text_a: 1, text_b: 2, label: 0, labels: ["1", "2", "3", "4"],
                files: {{train: train.csv, dev: test.csv}}}}
  patterns: ["{{mask}} news : {{text_a:shorten}} {{text_b:shorten}}"]
  verbalizer: {json.dumps(MULTI_WORDS)}
  unlabeled_examples: 0
model: {{name: {workspace["model"]}}}
mesh: {{data: 1}}
eval: {{priming: true}}
""")
    cfg = load_config(config)
    with pytest.raises(ConfigError, match=r"eval\.priming needs a masked LM and single-token "
                       r"label words; pattern 0 of task 'my-primed-multi'"):
        prepare_pattern(cfg, load_model(cfg, "mlm"), load_task_data(cfg), 0)
