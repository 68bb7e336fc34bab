"""The PyTorch reference steps of the benchmark compute the same loss as jaxpet's PET step."""

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM

from jaxpet.bench.torch_pet import fused_pet_loss, original_pet_loss
from jaxpet.bench.train import (
    SpecialIds,
    masked_unlabeled,
    model_config,
    synthetic_batch,
    verbalizer_ids,
)
from jaxpet.models.pretrained import init_model, save_pretrained
from jaxpet.scoring.cloze_step import make_pet_loss

ALPHA = 0.3  # large enough that both loss terms matter in the comparison


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = model_config("tiny", 16).replace(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    lm = init_model(config, head="mlm", seed=1)
    folder = tmp_path_factory.mktemp("bench_tiny")
    save_pretrained(lm, folder)
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    batch = synthetic_batch(config, labeled=3, unlabeled=4, seq_len=16, seed=2)
    return config, lm, model, batch


def test_torch_ways_compute_jaxpets_loss(setup):
    config, lm, model, batch = setup
    ids = SpecialIds.for_config(config)
    loss_fn = make_pet_loss(
        lm.module.apply,
        verbalizer_ids(config),
        alpha=ALPHA,
        mask_token_id=ids.mask,
        vocab_size=config.vocab_size,
        max_mlm_targets=3,
        pad_id=ids.pad,
        special_token_ids=(ids.cls, ids.sep),
    )
    rng = jax.random.key(5)
    jax_loss, aux = loss_fn(lm.params, {k: np.asarray(v) for k, v in batch.items()}, rng)
    # The loss draws its MLM masking from the first half of the split rng.
    masked = masked_unlabeled(jax.random.split(rng)[0], batch, config, max_targets=3)
    assert masked["unlabeled_mlm_weights"].sum() > 0
    tensors = {k: torch.as_tensor(np.array(v)) for k, v in masked.items()}
    with torch.no_grad():
        original = original_pet_loss(model, tensors, verbalizer_ids(config), ALPHA)
        fused = fused_pet_loss(model, tensors, verbalizer_ids(config), ALPHA)
    for total, cloze, mlm in (original, fused):
        # torch vs XLA fp32 kernels (~1e-6); a loss over other rows, slots or targets is > 1e-2 off
        np.testing.assert_allclose(float(cloze), float(aux["cloze"]), rtol=1e-4)
        np.testing.assert_allclose(float(mlm), float(aux["mlm"]), rtol=1e-4)
        np.testing.assert_allclose(float(total), float(jax_loss), rtol=1e-4)


@pytest.mark.slow  # three ways compiled and timed, and the matmul peak measured: about a minute
def test_bench_train_runs_end_to_end_with_tiny(tmp_path, capsys):
    import json

    from jaxpet.bench.cli import main

    out = tmp_path / "train.json"
    args = ["train", "--size", "tiny", "--seq-len", "16", "--batch-size", "2"]
    args += ["--unlabeled-batch-size", "2", "--steps", "1", "--warmup", "0", "--compare", "torch"]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [way["name"] for way in report["ways"]]
    assert names == ["jaxpet", "torch (a) original PET", "torch (b) jaxpet's algorithm"]
    # (a) runs the vocabulary head at every position, so it does more FLOPs than (b) and jaxpet.
    flops = [way["flops_per_step"] for way in report["ways"]]
    assert flops[1] > flops[0] == flops[2]
    # the speed-ups quoted are ratios of the measured median step times, jaxpet in the divisor
    steps = [way["step_seconds"] for way in report["ways"]]
    assert report["speedup_vs_torch_original"] == pytest.approx(steps[1] / steps[0])
    assert report["speedup_vs_torch_fused"] == pytest.approx(steps[2] / steps[0])
    # achieved FLOP/s = model FLOPs per step / step time, as a share of the measured matmul peak
    peak = report["measured_peak"]["flops_per_s"]
    for way in report["ways"]:
        achieved = way["flops_per_step"] / way["step_seconds"]
        assert way["achieved_flops_per_s"] == pytest.approx(achieved)
        assert way["fraction_of_measured_peak"] == pytest.approx(achieved / peak)
    assert "speed-up over (a)" in capsys.readouterr().out
