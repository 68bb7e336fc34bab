"""Ensemble-parallel training equals training the members one after another with `fit`."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

from jaxpet.data.batching import Batcher
from jaxpet.engine.checkpoint import Checkpointer
from jaxpet.engine.ensemble_training import (
    EnsembleTrainer,
    Member,
    fit_ensemble,
    stack_member_batches,
    train_members,
    unstack,
)
from jaxpet.engine.optim import make_learning_rate_fn, make_optimizer
from jaxpet.engine.sharding import make_mesh
from jaxpet.engine.training import FAST_CPU_COMPILE, Trainer, fit
from jaxpet.models.config import EncoderConfig
from jaxpet.models.pretrained import init_model
from jaxpet.scoring.cloze_step import make_member_pet_loss, make_pet_loss

VOCAB, SEQ, STEPS, BATCH = 96, 24, 4, 4
PAD, CLS, SEP, MASK = 0, 1, 2, 3
SEEDS = (11, 12)
# Each member is its own "pattern": its own verbalizer ids (of different widths W), data
# (member 0 short texts, member 1 long ones, so bucketed batches differ in length) and seed.
VERBALIZERS = [np.array([[10, -1], [11, 12]], np.int32),
               np.array([[20, 21, 23], [22, -1, -1]], np.int32)]
LENGTHS = [(6, 14), (17, SEQ)]
PET_KWARGS = dict(alpha=0.1, mask_token_id=MASK, vocab_size=VOCAB, max_mlm_targets=4, pad_id=PAD,
                  special_token_ids=(CLS, SEP))
# Parallel and sequential runs differ only in how XLA orders float32 sums (batched vs unbatched
# matrix products, data-parallel gradient reductions); after 4 Adam steps at lr 1e-3 that leaves
# differences of a few 1e-7 relative, far below the ~1e-3 steps: equal to float32 rounding.
RTOL, ATOL = 2e-5, 2e-6
# Every step here, sequential or ensemble, compiles with the same fast CPU options (halves the
# compile time that dominates these tests; equal options are what the comparison needs).
FAST = dict(compiler_options=FAST_CPU_COMPILE)


def _encode(n: int, labeled: bool, rng: np.random.Generator, lengths: tuple[int, int]) -> dict:
    ids = np.full((n, SEQ), PAD, np.int32)
    att = np.zeros((n, SEQ), np.int32)
    slot = np.zeros((n, 1), np.int32)
    for i in range(n):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        ids[i, :length] = rng.integers(4, VOCAB, length)
        ids[i, 0], ids[i, length - 1] = CLS, SEP
        slot[i, 0] = rng.integers(1, length - 1)
        ids[i, slot[i, 0]] = MASK
        att[i, :length] = 1
    out = {"input_ids": ids, "attention_mask": att, "token_type_ids": np.zeros_like(ids)}
    if labeled:
        out.update(mask_positions=slot, labels=(ids[:, 1] % 2).astype(np.int32))
    return out


def _batcher(m: int, buckets) -> Batcher:
    """Member m's labeled and unlabeled sets, batched with its own seed."""
    rng = np.random.default_rng(100 + m)
    return Batcher(groups={"": (_encode(12, True, rng, LENGTHS[m]), BATCH, SEEDS[m]),
                           "unlabeled_": (_encode(20, False, rng, LENGTHS[m]), BATCH,
                                          SEEDS[m] + 1)}, buckets=buckets)


@pytest.fixture(scope="module")
def setup():
    config = EncoderConfig(vocab_size=VOCAB, hidden_size=32, embedding_size=32,
                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=64)
    lm = init_model(config, head="mlm", seed=0)
    optimizer = make_optimizer(learning_rate=1e-3, num_steps=STEPS, warmup_steps=1)
    lr_fn = make_learning_rate_fn(1e-3, STEPS, 1)
    return lm, optimizer, lr_fn


def _flat(params) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


def _assert_params_close(got, want) -> None:
    for a, b in zip(_flat(got), _flat(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def _loggers(num: int) -> tuple[list[dict[int, float]], list]:
    logs: list[dict[int, float]] = [{} for _ in range(num)]
    return logs, [lambda s, mt, log=log: log.__setitem__(s, mt["loss"]) for log in logs]


def _losses(logs: list[dict[int, float]]) -> np.ndarray:
    return np.asarray([[log[s] for s in range(1, STEPS + 1)] for log in logs])


@pytest.fixture(scope="module")
def sequential(setup):
    """The reference: each member trained alone by the plain Trainer and `fit` on one device,
    its verbalizer closed over by make_pet_loss, full-length batches (buckets=None)."""
    lm, optimizer, lr_fn = setup
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    params = []
    logs, writers = _loggers(len(SEEDS))
    for m, seed in enumerate(SEEDS):
        trainer = Trainer(make_pet_loss(lm.module.apply, VERBALIZERS[m], **PET_KWARGS), optimizer,
                          mesh, learning_rate_fn=lr_fn, **FAST)
        state = fit(trainer, trainer.init(lm.params), _batcher(m, None), STEPS, seed=seed,
                    log_every=1, progress=False, metrics_writer=writers[m])
        params.append(jax.device_get(state.params))
    losses = _losses(logs)
    # Members really differ (own data, seed, verbalizer): otherwise the tests prove little.
    assert np.abs(losses[0] - losses[1]).max() > 1e-3
    return params, losses


def _members(lm, buckets) -> list[Member]:
    return [Member(lm.params, _batcher(m, buckets).global_batch, SEEDS[m],
                   {"verbalizer_ids": VERBALIZERS[m]}) for m in range(len(SEEDS))]


@pytest.mark.parametrize("parallel", [True, "auto"])
def test_train_members_matches_sequential_fit(setup, sequential, parallel, monkeypatch):
    """Bucketed batches: member 0's are shorter and get padded to member 1's full length,
    which reproduces its full-length batches exactly. True: both members vmapped on one
    device; "auto" with an ensemble step that runs out of memory: the one-after-another
    fallback (plain Trainer and fit), on a data=4 mesh."""
    lm, optimizer, lr_fn = setup
    if parallel == "auto":
        def out_of_memory(*args, **kwargs):
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1.0T bytes")

        monkeypatch.setattr(EnsembleTrainer, "train_step", out_of_memory)
    members = _members(lm, (16, SEQ))
    own = [{mb.batch_fn(s)["input_ids"].shape[1] for s in range(STEPS)} for mb in members]
    assert own == [{16}, {SEQ}]  # member 0 really is padded
    mesh = make_mesh(data=1, devices=jax.devices()[:1]) if parallel else make_mesh(
        data=4, devices=jax.devices()[:4])
    logs, writers = _loggers(len(SEEDS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params = train_members(members, make_member_pet_loss(lm.module.apply, **PET_KWARGS),
                               optimizer, mesh, STEPS, parallel=parallel, learning_rate_fn=lr_fn,
                               pad_id=PAD, metrics_writers=writers, log_every=1, progress=False,
                               **FAST)
    fell_back = [w for w in caught if "one after another" in str(w.message)]
    assert len(fell_back) == (parallel == "auto")
    ref_params, ref_losses = sequential
    np.testing.assert_allclose(_losses(logs), ref_losses, rtol=RTOL, atol=ATOL)
    assert len(params) == len(SEEDS)
    for got, want in zip(params, ref_params, strict=True):
        _assert_params_close(got, want)


def test_member_mesh_with_checkpoint_resume(setup, sequential, tmp_path):
    """Members split over a member=2 x data=2 x fsdp=2 mesh; stopped halfway, resumed from the
    checkpoint; one compiled program for every step; equals the sequential reference."""
    lm, optimizer, lr_fn = setup
    mesh = make_mesh(member=2, data=2, fsdp=2)
    trainer = EnsembleTrainer(make_member_pet_loss(lm.module.apply, **PET_KWARGS), optimizer,
                              mesh, len(SEEDS), learning_rate_fn=lr_fn, **FAST)
    batch_fns = [_batcher(m, None).global_batch for m in range(len(SEEDS))]
    logs, writers = _loggers(len(SEEDS))
    kwargs = dict(seeds=SEEDS, constants=[{"verbalizer_ids": v} for v in VERBALIZERS],
                  progress=False, log_every=1, metrics_writers=writers)
    with Checkpointer(tmp_path / "ck", max_to_keep=1) as ckpt:
        half = fit_ensemble(trainer, trainer.init([lm.params] * 2), batch_fns, STEPS // 2,
                            checkpointer=ckpt, **kwargs)
        assert ckpt.latest_step() == STEPS // 2
        del half
        # A restarted run begins from the initial params and picks up the checkpoint.
        state = fit_ensemble(trainer, trainer.init([lm.params] * 2), batch_fns, STEPS,
                             checkpointer=ckpt, **kwargs)
        assert ckpt.latest_step() == STEPS
    assert trainer.compiled_programs() == 1
    assert int(state.step) == STEPS
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.shape[0] == len(SEEDS) and leaf.sharding.spec[0] == "member"
    assert leaf.addressable_shards[0].data.shape[0] == 1  # one member per device group
    ref_params, ref_losses = sequential
    np.testing.assert_allclose(_losses(logs), ref_losses, rtol=RTOL, atol=ATOL)
    for m in range(len(SEEDS)):
        _assert_params_close(unstack(state, m), ref_params[m])
        single = trainer.unstack(state, m)
        _assert_params_close(single.params, ref_params[m])
        assert single.params is not None and jax.tree.leaves(single.opt_state)


def test_stack_member_batches_pads_and_checks():
    a = {"input_ids": np.full((2, 3), 7), "attention_mask": np.ones((2, 3)),
         "unlabeled_special_tokens_mask": np.zeros((2, 3)), "labels": np.zeros(2),
         "verbalizer_ids": np.full((2, 1), 9), "mask_positions": np.ones((2, 1))}
    b = {k: np.concatenate([v, v[:, :2]], axis=1) for k, v in a.items() if v.ndim == 2}
    b["labels"] = a["labels"]
    out = stack_member_batches([a, b], pad_id=5)
    assert out["input_ids"].shape == (2, 2, 5)
    np.testing.assert_array_equal(out["input_ids"][0, :, 3:], 5)
    np.testing.assert_array_equal(out["attention_mask"][0, :, 3:], 0)
    np.testing.assert_array_equal(out["unlabeled_special_tokens_mask"][0, :, 3:], 1)
    np.testing.assert_array_equal(out["input_ids"][1], b["input_ids"])
    # Widths: unused mask slots and padding verbalizer words are -1.
    assert out["verbalizer_ids"].shape == (2, 2, 2) and out["mask_positions"].shape == (2, 2, 2)
    np.testing.assert_array_equal(out["verbalizer_ids"][0], [[9, -1]] * 2)
    np.testing.assert_array_equal(out["mask_positions"][0, :, 1:], -1)
    np.testing.assert_array_equal(out["verbalizer_ids"][1], b["verbalizer_ids"])
    with pytest.raises(ValueError, match="'labels' has different shapes"):
        stack_member_batches([a, {**a, "labels": np.zeros(3)}])
    with pytest.raises(ValueError, match="same arrays"):
        stack_member_batches([a, {k: v for k, v in a.items() if k != "labels"}])
    with pytest.raises(ValueError, match="multiple of the mesh's member axis"):
        EnsembleTrainer(None, None, make_mesh(member=4, data=2), 2)
    with pytest.raises(KeyError, match="verbalizer_ids"):
        make_member_pet_loss(None, **PET_KWARGS)(None, {"input_ids": a["input_ids"]}, None)
