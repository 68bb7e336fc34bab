"""Options a user can discover: --help texts, config-change advice that applies, early errors."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from jaxpet.cli import main
from jaxpet.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
T5_DEMO = str(ROOT / "configs" / "t5_tiny_offline.yaml")
# The subcommands `jaxpet` has (README "Command line"); written here, not read from jaxpet.cli.
SUBCOMMANDS = ("train", "predict", "report", "petal", "config", "init-model")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's --help exits
        status = stop.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_jaxpet_help_lists_every_subcommand_with_its_meaning(capsys):
    status, out, _ = _run(["--help"], capsys)
    assert status == 0
    for name in SUBCOMMANDS:
        line = re.search(rf"^  {re.escape(name)} +(\S.{{20,}})$", out, re.MULTILINE)
        assert line, f"`jaxpet --help` has no line for {name}:\n{out}"
        # the listed subcommand is a real one: its own --help answers
        sub_status, sub_out, _ = _run([name, "--help"], capsys)
        assert sub_status == 0 and "usage:" in sub_out


def _example_command(help_text: str) -> list[str]:
    """The `python train.py --config ...` example of a --help text, continuation lines joined."""
    match = re.search(r"python train\.py (--config .*?)(?:\n\s*\n|\n  jaxpet)",
                      help_text.replace("\\\n", " "), re.DOTALL)
    assert match, help_text
    return shlex.split(match.group(1))


@pytest.mark.parametrize("command", [[sys.executable, "train.py", "--help"],
                                     [sys.executable, "-m", "jaxpet.cli", "train", "--help"]])
def test_train_help_explains_configs_and_overrides_with_an_example_that_loads(command):
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "--config" in text and "key=value" in text and "override" in text
    assert "jaxpet config show" in text and "jaxpet config keys" in text
    args = _example_command(text)
    assert args[0] == "--config"
    overrides = args[2:]
    assert len(overrides) >= 2 and all("=" in item for item in overrides)
    # the example is a command that works: its file and every override load
    config = load_config(ROOT / args[1], overrides)
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        assert str(node).replace(" ", "") == value, item


def _suggestion_keys(source: str) -> list[tuple[str, str]]:
    """(key, value) of every `section.key=value` / `no_distillation=...` in a string literal
    of `source`, and ('key', '') of every quoted 'section.key'."""
    sections = ("task|model|pet|classifier|ipet|mlm_pretrain|petal|mesh|checkpoint|eval|logging|"
                "distributed|text2text")
    assign = re.compile(rf"(?<![\w.])((?:{sections})\.[a-z_]+|no_distillation|method|output_dir)"
                        r"=(\[[^\]]*\]|[^\s,;:)'\"`]*)")
    quoted = re.compile(rf"'((?:{sections})\.[a-z_]+)'")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(m.group(1), m.group(2)) for m in assign.finditer(node.value)]
            found += [(m.group(1), "") for m in quoted.finditer(node.value)]
    return found


def _apply(key: str, value: str) -> None:
    from jaxpet.text2text.config import load_text2text_config

    if key.startswith("text2text."):
        load_text2text_config(T5_DEMO, [f"{key}={value or 'x'}"] if value else [])
    else:
        load_config(DEMO, [f"{key}={value}"] if value else [])


def test_every_config_key_a_message_names_exists_and_its_suggested_value_loads():
    from jaxpet.config_docs import key_docs, text2text_key_docs

    keys = {doc.key for doc in key_docs() + text2text_key_docs()}
    found = []
    for path in sorted((ROOT / "jaxpet").rglob("*.py")):
        for key, value in _suggestion_keys(path.read_text()):
            found.append((path.name, key, value))
            assert key in keys, f"{path}: names config key {key!r}, which does not exist"
            if value and value != "None":  # None: a Python keyword argument in a docstring
                _apply(key, value)
    # the scan sees the advice it must check (distillation, tensorboard, help examples)
    assert ("distill.py", "no_distillation", "true") in found
    assert any(key == "logging.tensorboard" for _, key, _ in found)


def _memory_case(name: str, section: str, batch_sizes: dict[str, int], **estimate_args):
    from jaxpet.engine.memory import GIB, DoesNotFit, check_fits, estimate_memory

    estimate = estimate_memory(name, batch_size=sum(batch_sizes.values()), **estimate_args)
    for fraction in (0.95, 0.8, 0.6):  # a budget tight enough to fail, loose enough to advise
        try:
            check_fits(estimate, estimate.total_bytes * fraction / 0.9, section=section,
                       batch_sizes=batch_sizes, accumulation_steps=2)
        except DoesNotFit as error:
            if error.suggestions:
                return error, estimate
    raise AssertionError(f"no advice for {name} at {estimate.total_bytes / GIB:.1f} GiB")


@pytest.mark.parametrize("name,section,batch_sizes,args", [
    ("roberta-large", "pet", {"train_batch_size": 32, "unlabeled_batch_size": 32},
     dict(seq_len=256, data=4)),
    ("bert-base-uncased", "classifier", {"train_batch_size": 16, "unlabeled_batch_size": 16},
     dict(seq_len=512, data=2, remat="dots")),
    ("t5-3b", "pet", {"train_batch_size": 16}, dict(seq_len=256, target_len=8, data=2)),
])
def test_out_of_memory_advice_applies_as_overrides(name, section, batch_sizes, args):
    error, estimate = _memory_case(name, section, batch_sizes, **args)
    message = str(error)
    for overrides in error.suggestions:
        assert " ".join(overrides) in message  # what the user reads is what is checked here
        config = load_config(DEMO, overrides)
        changed = getattr(config, section)
        if f"{section}.accumulation_steps" in " ".join(overrides):
            # a smaller micro-batch keeps the effective batch of the original settings
            factor = changed.accumulation_steps // 2
            for key, size in batch_sizes.items():
                assert getattr(changed, key) * factor == size
        if "model.remat=true" in overrides:
            assert config.model.remat
            if estimate.backbone.family == "t5":  # T5 has one remat policy: whole blocks
                assert not any(o.startswith("model.remat_policy") for o in overrides)
    kinds = {o.split("=")[0] for overrides in error.suggestions for o in overrides}
    assert "mesh.fsdp" in kinds or "model.remat" in kinds or f"{section}.train_batch_size" in kinds


def test_tensorboard_without_tensorboardx_stops_before_the_model_loads(
        tmp_path, monkeypatch, capsys):
    import jaxpet.pipelines.setup

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX -> ImportError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing extra was reported")

    monkeypatch.setattr(jaxpet.pipelines.setup, "load_model", no_model)
    # batch sizes that the test session's 8 CPU devices divide, so only the extra can stop it
    sizes = [f"{s}.{k}_batch_size=8" for s in ("pet", "classifier") for k in ("train", "unlabeled")]
    status = main(["train", "--config", DEMO, f"output_dir={tmp_path / 'out'}", *sizes,
                   "logging.tensorboard=true"])
    err = capsys.readouterr().err
    assert status == 2
    assert "logging.tensorboard" in err and "pip install jaxpet[tensorboard]" in err
    with pytest.raises(ConfigError, match=r"pip install jaxpet\[tensorboard\]"):
        load_config(DEMO, ["logging.tensorboard=true"])
    load_config(DEMO, ["logging.tensorboard=false"])  # off: the extra is not needed


def test_alpha_above_one_half_warns_that_the_original_pet_counts_the_other_way(capsys):
    with pytest.warns(UserWarning, match=r"original PET's --alpha is the other way round"):
        load_config(DEMO, ["pet.alpha=0.9999"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the paper's values, up to 0.5, say nothing
        load_config(DEMO, ["pet.alpha=1e-4"])
        load_config(DEMO, ["pet.alpha=0.5"])
