"""Checkpoint I/O: save_pretrained round trips through transformers, bare encoders, clear errors."""

import json
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models as tm
import torch
from safetensors.numpy import load_file, save_file

from jaxpet.models.config import EncoderConfig
from jaxpet.models.pretrained import init_model, load_pretrained, save_pretrained


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tm.shared_root(tmp_path_factory)


def _ids(lm, seed=0, batch=3, seq=12):
    rng = np.random.default_rng(seed)
    low = lm.config.pad_token_id + 1
    ids_BxS = rng.integers(low, lm.config.vocab_size, size=(batch, seq))
    mask_BxS = np.ones_like(ids_BxS)
    mask_BxS[0, seq - 4:] = 0
    ids_BxS[0, seq - 4:] = lm.config.pad_token_id
    return ids_BxS, mask_BxS


def _jax_logits(lm, ids_BxS, mask_BxS):
    return np.asarray(tm.jit_apply(lm.module, lm.params, jnp.asarray(ids_BxS),
                                   jnp.asarray(mask_BxS)))


def _torch_logits(model, ids_BxS, mask_BxS):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids_BxS),
                     attention_mask=torch.from_numpy(mask_BxS)).logits.numpy()


def _assert_same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "family,head",
    [("bert", "classifier"), ("roberta", "mlm"), ("xlm-roberta", "classifier"), ("albert", "mlm")],
)
def test_save_pretrained_round_trips_through_transformers(family, head, tiny_root, tmp_path):
    folder = tm.build_tiny_checkpoint(family, head, tiny_root)
    lm = load_pretrained(folder, head=head)
    out = save_pretrained(lm, tmp_path / "saved")

    model, info = tm._model_class(family, head).from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    # test_models_parity shows jaxpet == the original torch model; here saved == original.
    ids_BxS, mask_BxS = _ids(lm)
    # the same torch kernels on saved vs original weights (~1e-7); a lost or untied weight is > 1e-2
    np.testing.assert_allclose(
        _torch_logits(model.eval(), ids_BxS, mask_BxS),
        _torch_logits(tm.load_torch_model(folder, family, head), ids_BxS, mask_BxS),
        atol=1e-6, rtol=0,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_pretrained(out, head=head)
    _assert_same_tree(lm.params, again.params)
    assert again.config == lm.config
    text = "The movie was great."
    assert again.tokenizer(text)["input_ids"] == lm.tokenizer(text)["input_ids"]


def test_init_model_saves_a_checkpoint_transformers_loads(tmp_path):
    config = EncoderConfig.from_hf(tm.tiny_hf_config("albert", vocab_size=90)).replace(
        inner_group_num=2
    )
    assert (config.num_hidden_groups, config.num_hidden_layers, config.embedding_size) == (2, 3, 16)
    lm = init_model(config, head="mlm", seed=3)
    assert lm.tokenizer is None
    # Random init must not leave zero-width surprises: scanned/grouped params have real values.
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(lm.params))
    out = save_pretrained(lm, tmp_path / "albert")
    model = tm._model_class("albert", "mlm").from_pretrained(str(out)).eval()
    ids_BxS, mask_BxS = _ids(lm, seed=1)
    # fp32 parity across frameworks (~1e-6/op); a mis-saved or transposed weight is > 1e-2
    np.testing.assert_allclose(_jax_logits(lm, ids_BxS, mask_BxS),
                               _torch_logits(model, ids_BxS, mask_BxS), atol=1e-4, rtol=0)


def test_bare_encoder_loads_with_head_initialised_and_warning(tiny_root):
    folder = tm.build_tiny_checkpoint("bert", "base", tiny_root)
    assert "embeddings.word_embeddings.weight" in load_file(str(folder / "model.safetensors"))
    with pytest.warns(UserWarning, match=r"cls\.predictions\.transform\.dense\.weight"):
        lm = load_pretrained(folder, head="mlm")
    ids_BxS, mask_BxS = _ids(lm)
    hidden_BxSxD = lm.module.apply(
        {"params": lm.params}, jnp.asarray(ids_BxS), jnp.asarray(mask_BxS),
        method=lambda module, ids, mask: module.encoder(ids, mask),
    )
    bare = tm.load_torch_model(folder, "bert", "base")
    with torch.no_grad():
        expected_BxSxD = bare(input_ids=torch.from_numpy(ids_BxS),
                              attention_mask=torch.from_numpy(mask_BxS)).last_hidden_state
    # fp32 parity across frameworks (~1e-6 per op); a wrong layer or mask moves states by > 1e-2
    np.testing.assert_allclose(np.asarray(hidden_BxSxD), expected_BxSxD.numpy(), atol=1e-4, rtol=0)
    # The pooler of the bare model serves the classifier; only the classifier itself is new.
    with pytest.warns(UserWarning, match=r"classifier\.weight") as record:
        load_pretrained(folder, head="classifier", num_labels=2)
    assert not any("pooler" in str(w.message) for w in record)


def test_pytorch_model_bin_loads_like_safetensors(tiny_root, tmp_path):
    source = tm.build_tiny_checkpoint("xlm-roberta", "mlm", tiny_root)
    folder = shutil.copytree(source, tmp_path / "bin")
    state = load_file(str(folder / "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    _assert_same_tree(load_pretrained(folder).params, load_pretrained(source).params)


def test_missing_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"'gpt2'.*bert, roberta, xlm-roberta, albert"):
        load_pretrained(tmp_path)


def test_shape_mismatch_names_key_and_shapes(tiny_root, tmp_path):
    folder = shutil.copytree(tm.build_tiny_checkpoint("bert", "mlm", tiny_root), tmp_path / "c")
    raw = json.loads((folder / "config.json").read_text())
    raw["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.0\.intermediate\.dense\.weight"
                       r"' has shape \(64, 32\) but the config expects \(48, 32\)"):
        load_pretrained(folder)


def test_missing_encoder_weight_and_unexpected_keys(tiny_root, tmp_path):
    folder = shutil.copytree(tm.build_tiny_checkpoint("roberta", "mlm", tiny_root), tmp_path / "c")
    state = load_file(str(folder / "model.safetensors"))
    state["extra.weight"] = np.zeros(3, np.float32)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.warns(UserWarning, match=r"extra\.weight"):
        load_pretrained(folder)
    del state["roberta.encoder.layer.1.output.dense.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"roberta\.encoder\.layer\.1\.output\.dense\.bias"):
        load_pretrained(folder)


def test_classifier_from_mlm_checkpoint_needs_num_labels(tiny_root):
    with pytest.raises(ValueError, match="num_labels"):
        load_pretrained(tm.build_tiny_checkpoint("bert", "mlm", tiny_root), head="classifier")


def test_hub_name_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE.*local"):
        load_pretrained("some-org/some-model-jaxpet-test")


def test_t5_goes_through_the_same_entry_points(tmp_path):
    import tiny_t5

    folder = tmp_path / "t5"
    tiny_t5.make_tiny_t5(str(folder), version="1.0")
    with pytest.raises(ValueError, match="seq2seq"):
        load_pretrained(folder, head="mlm")
    lm = load_pretrained(folder, head="seq2seq")
    assert lm.head == "seq2seq" and lm.config.model_type == "t5"
    out = save_pretrained(lm, tmp_path / "saved")
    _assert_same_tree(lm.params, load_pretrained(out, head="seq2seq").params)


def test_encoder_checkpoint_refuses_seq2seq_head(tiny_root):
    with pytest.raises(ValueError, match="head='mlm' or head='classifier'"):
        load_pretrained(tm.build_tiny_checkpoint("bert", "mlm", tiny_root), head="seq2seq")
