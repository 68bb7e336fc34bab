"""Tests of the typed config: YAML loading, dotted overrides, and errors that name the key."""

import dataclasses

import pytest

from jaxpet.config import Config, ConfigError, load_config, to_yaml

BASE_YAML = """\
method: pet
output_dir: /tmp/out
task:
  name: agnews
  data_dir: data/agnews
  train_examples: 10
model:
  name: minilm
pet:
  pattern_ids: [0, 1]
  learning_rate: 1e-5
"""


@pytest.fixture
def yaml_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE_YAML)
    return path


def test_yaml_values_and_defaults(yaml_file):
    config = load_config(yaml_file)
    assert isinstance(config, Config)
    assert config.task.name == "agnews" and config.task.train_examples == 10
    assert config.pet.pattern_ids == [0, 1]
    assert config.pet.learning_rate == pytest.approx(1e-5)
    assert isinstance(config.pet.learning_rate, float)
    # untouched keys keep the dataclass defaults
    assert config.pet.alpha == pytest.approx(1e-4)
    assert config.pet.repetitions == 3
    assert config.classifier.temperature == 2.0
    assert config.mlm_pretrain.enabled is False


def test_dotted_overrides(yaml_file):
    config = load_config(yaml_file, ["pet.max_steps=7", "pet.pattern_ids=[3]",
                                     "model.name=roberta-base", "mlm_pretrain.enabled=true",
                                     "pet.alpha=0.5"])
    assert config.pet.max_steps == 7
    assert config.pet.pattern_ids == [3]
    assert config.model.name == "roberta-base"
    assert config.mlm_pretrain.enabled is True
    assert config.pet.alpha == 0.5


@pytest.mark.parametrize(
    "override, key",
    [("pet.max_step=3", "pet.max_step"), ("nosuch=1", "nosuch"), ("task.foo.bar=1", "task.foo")],
)
def test_unknown_override_names_key(yaml_file, override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(yaml_file, [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE_YAML + "  lm_trainig: true\n")
    with pytest.raises(ConfigError, match="pet.lm_trainig") as info:
        load_config(path)
    assert str(path) in str(info.value) and "pet.lm_trainig" in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [("pet.max_steps=ten", "pet.max_steps"), ("pet.lm_training=maybe", "pet.lm_training"),
     ("pet.pattern_ids=zero", "pet.pattern_ids"), ("seed=1.5", "seed")],
)
def test_wrong_type_names_key(yaml_file, override, key):
    with pytest.raises(ConfigError, match=f"bad value for '{key}'"):
        load_config(yaml_file, [override])


@pytest.mark.parametrize(
    "override, key",
    [("method=ipt", "method"), ("task.eval_set=train", "task.eval_set"),
     ("model.dtype=int8", "model.dtype"), ("pet.pattern_ids=[]", "pet.pattern_ids"),
     ("pet.alpha=2.0", "pet.alpha"), ("classifier.train_batch_size=0",
                                      "classifier.train_batch_size")],
)
def test_invalid_values_name_key(yaml_file, override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(yaml_file, [override])


def test_missing_required_keys(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("task:\n  name: agnews\n")
    with pytest.raises(ConfigError, match="missing required.*model.name") as info:
        load_config(path)
    assert "output_dir" in str(info.value) and "task.data_dir" in str(info.value)
    # overrides can fill in what the file lacks
    config = load_config(path, ["output_dir=o", "task.data_dir=d", "model.name=m"])
    assert config.output_dir == "o"


def test_bad_override_syntax_and_missing_file(yaml_file, tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(yaml_file, ["pet.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_round_trip(yaml_file, tmp_path):
    config = load_config(yaml_file, ["pet.max_steps=5", "logging.tensorboard=true"])
    out = tmp_path / "resolved.yaml"
    out.write_text(to_yaml(config))
    again = load_config(out)
    assert dataclasses.asdict(again) == dataclasses.asdict(config)
