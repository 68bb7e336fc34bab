"""`jaxpet config keys|show` and docs/config.md list every config key as the schema defines it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from jaxpet.cli import main
from jaxpet.config import Config, Text2TextConfig, load_config
from jaxpet.config_docs import key_docs, keys_markdown, text2text_key_docs
from jaxpet.text2text.config import load_text2text_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
T5_DEMO = ROOT / "configs" / "t5_tiny_offline.yaml"


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("definition", "reader_options",
                                                   "format_options"):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _schema(cls: type, prefix: str = "") -> dict:
    """Every leaf key and its default as OmegaConf resolves the dataclass (MISSING is '???')."""
    return _leaves(yaml.safe_load(OmegaConf.to_yaml(OmegaConf.structured(cls))), prefix)


def _as_yaml(default: str):
    return "???" if default == "(required)" else yaml.safe_load(default)


@pytest.mark.parametrize("docs,schema", [
    (key_docs, lambda: _schema(Config)),
    (text2text_key_docs, lambda: _schema(Text2TextConfig, "text2text.")),
])
def test_keys_are_every_schema_key_with_its_default_and_a_meaning(docs, schema):
    listed = {doc.key: doc for doc in docs()}
    expected = schema()
    assert list(listed) == list(expected)  # same keys, in the schema's order
    for key, default in expected.items():
        assert _as_yaml(listed[key].default) == default, key
        assert len(listed[key].help) > 8, f"{key} has no meaning in the config dataclass"
        assert "noqa" not in listed[key].help


def test_types_and_meanings_come_from_the_dataclass_source():
    docs = {doc.key: doc for doc in key_docs() + text2text_key_docs()}
    # hand-read from jaxpet/config/schema.py
    assert (docs["pet.alpha"].type, docs["pet.alpha"].default) == ("float", "0.0001")
    assert "auxiliary MLM loss" in docs["pet.alpha"].help
    assert docs["pet.pattern_ids"].type == "list[int]"
    assert docs["classifier.model"].type == "str | null"
    # a field redefined without a comment keeps the meaning of the field it overrides
    assert docs["pet.repetitions"].default == "3"
    assert docs["pet.repetitions"].help == docs["classifier.repetitions"].help
    assert "models per setting" in docs["pet.repetitions"].help
    # a comment block above a field is part of its meaning
    assert "cuDNN" in docs["model.attention"].help
    assert docs["text2text.max_target_length"].help.startswith("decoder target tokens")


def test_config_keys_command_prints_every_key(capsys):
    assert main(["config", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_key = {line.split()[0]: line.split()[1:] for line in lines}
    assert set(_schema(Config)) <= set(by_key)
    assert by_key["logging.tensorboard"][:2] == ["bool", "false"]
    assert by_key["text2text.num_beams"][:2] == ["int", "1"]


def test_docs_config_md_is_current():
    page = (ROOT / "docs" / "config.md").read_text()
    assert page == keys_markdown(), (
        "docs/config.md is stale: regenerate it with "
        "`jaxpet config keys --markdown > docs/config.md`")
    for key in _schema(Config):
        assert f"| `{key}` |" in page


def test_config_show_prints_the_resolved_config_that_loads_back(tmp_path, capsys):
    overrides = ["pet.max_steps=7", "petal.words_per_label=3"]
    assert main(["config", "show", str(DEMO), *overrides]) == 0
    shown = capsys.readouterr().out
    tree = yaml.safe_load(shown)
    # defaults the demo file does not set are printed too
    assert tree["petal"]["num_candidates"] == 1000 and tree["mesh"]["fsdp"] == 1
    assert tree["pet"]["max_steps"] == 7
    (tmp_path / "shown.yaml").write_text(shown)
    assert load_config(tmp_path / "shown.yaml") == load_config(DEMO, overrides)


def test_config_show_reads_text2text_configs_and_names_a_bad_key(tmp_path, capsys):
    assert main(["config", "show", str(T5_DEMO), "text2text.num_beams=2"]) == 0
    shown = capsys.readouterr().out
    assert yaml.safe_load(shown)["text2text"]["num_beams"] == 2
    (tmp_path / "t5.yaml").write_text(shown)
    assert load_text2text_config(tmp_path / "t5.yaml") == load_text2text_config(
        T5_DEMO, ["text2text.num_beams=2"])
    assert main(["config", "show", str(DEMO), "pet.max_step=3"]) == 2
    assert "unknown config key 'pet.max_step'" in capsys.readouterr().err
