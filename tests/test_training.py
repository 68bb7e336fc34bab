"""Train step: 1 device == 8 devices (4 data x 2 fsdp); PET's single forward; predict."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import multiprocess_worker as worker
import numpy as np

from jaxpet import losses
from jaxpet.data.masking import mask_tokens_positions
from jaxpet.engine.sharding import make_mesh
from jaxpet.engine.training import FAST_CPU_COMPILE, fit, predict
from jaxpet.scoring.cloze_step import make_label_logits_fn, make_pet_loss

STEPS = 4


def _run(mesh) -> tuple[dict[int, dict], dict[str, np.ndarray], object]:
    trainer, state, batcher = worker.setup(mesh, num_steps=STEPS)
    logged: dict[int, dict] = {}
    state = fit(trainer, state, batcher, STEPS, seed=7, log_every=1, progress=False,
                metrics_writer=lambda step, m: logged.__setitem__(step, m))
    assert trainer.compiled_programs() == 1
    return logged, worker.flat_params(state.params), state


def test_one_device_and_eight_devices_agree():
    single_log, single_params, _ = _run(make_mesh(data=1, devices=jax.devices()[:1]))
    sharded_log, sharded_params, state = _run(make_mesh(data=4, fsdp=2))
    assert sorted(single_log) == sorted(sharded_log) == list(range(1, STEPS + 1))
    for step in single_log:
        for key in ("loss", "cloze", "mlm", "grad_norm", "learning_rate"):
            # 8-device all-reduces sum in another order (~1e-6); a doubled or lost shard is > 1e-2
            np.testing.assert_allclose(sharded_log[step][key], single_log[step][key], rtol=2e-5,
                                       err_msg=f"{key} at step {step}")
    for name, value in single_params.items():
        # that reduction-order noise through AdamW; a shard with other gradients is off ~lr
        np.testing.assert_allclose(sharded_params[name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    # Training moved the parameters, and the big kernels really are split over fsdp.
    _, init_params = worker.tiny_model()
    init = worker.flat_params(nn.unbox(init_params))
    assert any(not np.allclose(init[k], v) for k, v in sharded_params.items())
    kernel = state.params["encoder"]["layers"]["layer"]["intermediate"]["kernel"]
    assert "fsdp" in str(kernel.sharding.spec)
    assert int(state.step) == STEPS
    # Warmup of one step, then linear decay: 0 at step 1, peak at step 2.
    assert single_log[1]["learning_rate"] == 0.0
    # fp32 rounding of the warm-up ramp; an off-by-one step gives 0 or 5e-4
    np.testing.assert_allclose(single_log[2]["learning_rate"], 1e-3, rtol=1e-6)
    assert all(np.isfinite(m["loss"]) and m["mlm"] > 0 for m in single_log.values())
    # Prediction with the trained (sharded) params; in this test so the runs are built once.
    _check_predict_pads_the_last_batch_and_keeps_every_row(state)


def test_pet_loss_is_one_forward_equal_to_two():
    module, boxed = worker.tiny_model()
    params = nn.unbox(boxed)
    labeled, unlabeled = worker.tiny_data(8, 8)
    batch = {k: jnp.asarray(v) for k, v in labeled.items()}
    batch.update({"unlabeled_" + k: jnp.asarray(v) for k, v in unlabeled.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")})
    alpha, max_targets = 0.25, 4
    loss_fn = make_pet_loss(module.apply, worker.VERBALIZER_LxW, alpha=alpha,
                            mask_token_id=worker.MASK, vocab_size=worker.VOCAB,
                            max_mlm_targets=max_targets, special_token_ids=(worker.CLS, worker.SEP))
    rng = jax.random.key(5)
    loss, aux = jax.jit(loss_fn, compiler_options=FAST_CPU_COMPILE)(params, batch, rng)

    def separate(params):
        rng_mask, _ = jax.random.split(rng)
        ids = batch["unlabeled_input_ids"]
        special = jnp.isin(ids, jnp.array([worker.PAD, worker.CLS, worker.SEP, worker.MASK]))
        inputs, positions, targets, weights = mask_tokens_positions(
            rng_mask, ids, special, vocab_size=worker.VOCAB, mask_token_id=worker.MASK,
            max_targets=max_targets, attention_mask=batch["unlabeled_attention_mask"])
        mask_logits = module.apply({"params": params}, batch["input_ids"],
                                   batch["attention_mask"], positions=batch["mask_positions"])
        cloze = losses.cloze_loss(losses.label_logits(mask_logits[:, 0], worker.VERBALIZER_LxW),
                                  batch["labels"])
        mlm_logits = module.apply({"params": params}, inputs, batch["unlabeled_attention_mask"],
                                  positions=positions)
        mlm = losses.mlm_loss(mlm_logits, targets, weights)
        return (1 - alpha) * cloze + alpha * mlm, cloze, mlm

    ref_loss, ref_cloze, ref_mlm = jax.jit(separate, compiler_options=FAST_CPU_COMPILE)(params)
    # one fused pass vs separate passes (fp32 reordering); a row in the wrong loss is > 1e-2
    np.testing.assert_allclose(aux["cloze"], ref_cloze, rtol=1e-5)
    np.testing.assert_allclose(aux["mlm"], ref_mlm, rtol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert float(ref_mlm) > 0


def _check_predict_pads_the_last_batch_and_keeps_every_row(state):
    module, _ = worker.tiny_model()
    labeled, _ = worker.tiny_data(13, 1)
    fn = make_label_logits_fn(module.apply, worker.VERBALIZER_LxW)
    mesh = make_mesh(data=4, fsdp=2)
    scores = predict(fn, state.params, labeled, batch_size=8, mesh=mesh)
    assert scores.shape == (13, 2)
    params = jax.device_get(state.params)
    logits = jax.jit(module.apply)({"params": params}, labeled["input_ids"],
                                   labeled["attention_mask"], positions=labeled["mask_positions"])
    expected = np.asarray(losses.label_logits(logits[:, 0], worker.VERBALIZER_LxW))
    # sharded predict vs a direct forward (fp32); padded or reordered rows differ > 1e-2
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    again = predict(fn, state.params, {k: v[:5] for k, v in labeled.items()}, 8, mesh)
    np.testing.assert_allclose(again, expected[:5], rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_master_weights():
    from jaxpet.engine.optim import make_optimizer
    from jaxpet.engine.sharding import global_batch
    from jaxpet.engine.training import Trainer
    from jaxpet.scoring.cloze_step import make_classifier_loss

    class Probe(nn.Module):
        @nn.compact
        def __call__(self, input_ids, attention_mask, token_type_ids=None, positions=None,
                     deterministic=True):
            h = nn.Embed(20, 8)(input_ids).mean(1)
            return nn.Dense(2)(h)

    model = Probe()
    ids = np.arange(32, dtype=np.int32).reshape(8, 4) % 20
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids[:, 0] % 2}
    params = model.init(jax.random.key(0), ids, ids)["params"]
    mesh = make_mesh(data=2, devices=jax.devices()[:2])
    results = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        trainer = Trainer(make_classifier_loss(model.apply), make_optimizer(1e-2, num_steps=3),
                          mesh, compute_dtype=dtype, compiler_options=FAST_CPU_COMPILE)
        state = trainer.init(params)
        state, metrics = trainer.train_step(state, global_batch(batch, mesh), jax.random.key(1))
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
        results[dtype] = float(metrics["loss"])
    # bf16 compute gives nearly, not exactly, the float32 loss.
    assert results[jnp.bfloat16] != results[jnp.float32]
    # bf16 rounding (~1e-2 relative); a loss on other rows or labels differs by far more
    np.testing.assert_allclose(results[jnp.bfloat16], results[jnp.float32], rtol=2e-2)
