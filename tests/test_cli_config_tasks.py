"""train.py runs a task defined in the config alone, and dispatches method: text2text."""

import json

import numpy as np
from test_train_cli import build_workspace

from jaxpet.cli import requested_method, train_main
from jaxpet.config import ConfigError, load_config

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
    try:
        load_config(config)
    except ConfigError as error:
        assert "task.definition" in str(error) and "task.verbalizer" in str(error)
    else:
        raise AssertionError("a partial task definition was accepted")


def test_requested_method_reads_the_file_and_the_overrides(tmp_path):
    config = tmp_path / "t2t.yaml"
    config.write_text("method: text2text\noutput_dir: x\n")
    assert requested_method(str(config), []) == "text2text"
    assert requested_method(str(config), ["method=pet"]) == "pet"
    assert requested_method("configs/demo.yaml", []) == "pet"


def test_a_model_that_cannot_fit_fails_before_compiling(tmp_path, monkeypatch, capsys):
    import pytest

    import jaxpet.memory
    from jaxpet.run_setup import load_model

    workspace = build_workspace(tmp_path)
    config = load_config(workspace["config"])
    lm = load_model(config, "mlm")  # the CPU reports no memory limit: estimate only
    assert "memory estimate: bert" in capsys.readouterr().out
    monkeypatch.setattr(jaxpet.memory, "device_memory_bytes", lambda device=None: 1024)
    with pytest.raises(jaxpet.memory.DoesNotFit, match="To fit, try"):
        load_model(config, "mlm")
    assert lm.config.model_type == "bert"


def test_tensor_parallel_mesh_from_the_config_gives_the_same_losses(tmp_path):
    from jaxpet.outputs import read_jsonl

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

    from jaxpet.pet import load_task_data, prepare_pattern
    from jaxpet.run_setup import load_model

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
