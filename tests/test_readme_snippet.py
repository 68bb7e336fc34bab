"""The README's Python snippet runs as written and gives the transformers model's label logits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from tests.tiny_models import build_tiny_checkpoint, load_torch_model

ROOT = Path(__file__).resolve().parent.parent


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "lm.module.apply" in b)


def test_the_readme_snippet_matches_the_pytorch_model_on_a_two_segment_pattern(tmp_path):
    folder = build_tiny_checkpoint("bert", "mlm", tmp_path)
    code = (readme_snippet().replace("path/to/bert-base-uncased", str(folder))
            .replace('"data/rte"', repr(str(ROOT / "tests" / "data" / "rte")))
            .replace("max_seq_length=128", "max_seq_length=64"))  # the tiny model's positions
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    enc = scope["enc"]
    # Both segments present: without token types BERT would see a different input.
    assert (enc["token_type_ids"] == 1).any() and (enc["token_type_ids"] == 0).any()
    with torch.no_grad():
        logits_NxSxV = load_torch_model(folder, "bert", "mlm")(
            input_ids=torch.tensor(enc["input_ids"]),
            attention_mask=torch.tensor(enc["attention_mask"]),
            token_type_ids=torch.tensor(enc["token_type_ids"]),
        ).logits.numpy()
    rows = np.arange(len(logits_NxSxV))
    mask_NxV = logits_NxSxV[rows, enc["mask_positions"][:, 0]]
    verbalizer_LxW = np.asarray(scope["pvp"].verbalizer_ids(scope["lm"].tokenizer))
    expected_NxL = np.stack([mask_NxV[:, ids[ids >= 0]].mean(-1) for ids in verbalizer_LxW], 1)
    # fp32 parity bound of the model tests; dropping token_type_ids moves them by 0.035 here
    np.testing.assert_allclose(np.asarray(scope["scores"]), expected_NxL, atol=1e-4)
    assert np.isfinite(float(scope["loss"]))
