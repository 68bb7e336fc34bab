"""Task records of the wrong type: one line naming the file, the line and the field, before any
model loads (the original PET hands such a value to its tokenizer, which fails on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxpet.cli import train_main

GOOD = {"id": 1, "question": "Soll der Staat Kitas finanzieren?",
        "comment": "Ja, Familien brauchen Hilfe.", "label": "FAVOR", "language": "de"}


def write_xstance(folder: Path, bad_line: int, field: str, value: object) -> None:
    folder.mkdir()
    records = [dict(GOOD, id=i) for i in range(1, 5)]
    records[bad_line - 1][field] = value
    for name in ("train.jsonl", "test.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("field, value, shown", [
    ("question", 5, "field 'question' should be str, got int 5"),
    ("comment", ["Ja"], "field 'comment' should be str, got list ['Ja']"),
    ("question", None, "field 'question' should be str, got NoneType None"),
])
def test_xstance_text_that_is_not_a_string(capsys, tmp_path, field, value, shown):
    data = tmp_path / "xstance"
    write_xstance(data, 3, field, value)
    config = tmp_path / "xstance.yaml"
    config.write_text(f"""\
method: pet
output_dir: {tmp_path / "out"}
no_distillation: true
task: {{name: xstance, data_dir: {data}, train_examples: -1, unlabeled_examples: 0}}
model: {{name: {tmp_path / "no-model-needed"}}}
pet: {{pattern_ids: [1], max_steps: 2, lm_training: false}}
eval: {{zero_shot: false}}
logging: {{progress: false}}
""")
    status = train_main(["--config", str(config)])
    captured = capsys.readouterr()
    # the data load fails before the (missing) model is ever opened, with the record's place
    assert status == 2 and "Traceback" not in captured.err
    assert f"error: {data / 'train.jsonl'}:3: {shown}" in captured.err
    assert not (tmp_path / "out" / "results.json").exists()
