"""T5 as a PET backbone: sentinel encoding, label scores vs score_targets and HF torch, the loss."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from tiny_t5 import make_t5_tokenizer, make_tiny_t5

from jaxpet.data import Example
from jaxpet.decoding.seq2seq import score_targets
from jaxpet.models import load_pretrained
from jaxpet.prompts import get_pvp
from jaxpet.scoring.seq2seq import (
    SENTINEL,
    make_t5_label_scores_fn,
    make_t5_pet_loss,
    t5_label_scores,
    t5_label_targets,
    t5_pet_encode,
)

SEQ = 48
TEXTS = [("the dog is good", "2"), ("that is terrible", "1"), ("a great fox", "2"),
         ("the lazy cat is terrible", "1"), ("owning a dog is good for you", "2"),
         ("the mat is terrible", "1"), ("the quick brown fox is great", "2"),
         ("a man is playing a terrible guitar", "1")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("t5_pet_model"))
    make_t5_tokenizer(folder)
    hf = make_tiny_t5(folder, "1.0", vocab_size=224, seed=1)
    return load_pretrained(folder, head="seq2seq"), hf


def examples(labeled: bool = True) -> list[Example]:
    return [Example(f"ex{i}", text, None, label if labeled else None)
            for i, (text, label) in enumerate(TEXTS)]


def test_encode_puts_one_sentinel_where_the_mask_was(tiny):
    lm, _ = tiny
    pvp = get_pvp("yelp-polarity", 3)  # [text] [In summary, the restaurant is <mask> .]
    enc = t5_pet_encode(pvp, examples(), lm.tokenizer, 64)  # long enough: nothing is cut
    sentinel = lm.tokenizer.convert_tokens_to_ids(SENTINEL)
    assert lm.tokenizer.mask_token is None  # the caller's tokenizer is left alone
    for i, (text, _) in enumerate(TEXTS):
        row = enc["input_ids"][i][enc["attention_mask"][i] > 0].tolist()
        assert row.count(sentinel) == 1 and row[-1] == lm.tokenizer.eos_token_id
        decoded = lm.tokenizer.decode(row, skip_special_tokens=False).replace(" ", "")
        assert decoded.startswith(text.replace(" ", ""))
        assert decoded.endswith("restaurantis<extra_id_0>.</s>")
    np.testing.assert_array_equal(enc["labels"], [int(label) - 1 for _, label in TEXTS])


def test_label_scores_equal_score_targets_and_torch(tiny):
    lm, hf = tiny
    pvp = get_pvp("yelp-polarity", 0, verbalizer={"1": ["bad", "terrible"], "2": "good"})
    enc = t5_pet_encode(pvp, examples()[:4], lm.tokenizer, SEQ)
    ids_LxWxT, mask_LxWxT = t5_label_targets(pvp, lm.tokenizer)
    assert ids_LxWxT.shape[:2] == (2, 2) and mask_LxWxT[1, 1].sum() == 0  # "2" has one word
    first = lm.tokenizer.convert_tokens_to_ids(SENTINEL)
    assert (ids_LxWxT[:, :, 0][mask_LxWxT[:, :, 0] > 0] == first).all()
    scores_fn = jax.jit(lambda p, ids, mask: t5_label_scores(
        lm.module.apply, p, ids, mask, ids_LxWxT, mask_LxWxT))
    scores_BxL = np.asarray(scores_fn(lm.params, enc["input_ids"], enc["attention_mask"]))
    batch = len(enc["input_ids"])

    def reference(label: int, word: int) -> np.ndarray:
        tiled = lambda a: np.tile(a[label, word], (batch, 1))  # noqa: E731
        return np.asarray(score_targets(lm, enc["input_ids"], enc["attention_mask"],
                                        tiled(ids_LxWxT), tiled(mask_LxWxT)))

    expected_BxL = np.stack([(reference(0, 0) + reference(0, 1)) / 2, reference(1, 0)], axis=1)
    # fp32 vs float64 reference scores; a word not averaged or a shifted target differs by nats
    np.testing.assert_allclose(scores_BxL, expected_BxL, rtol=1e-5, atol=1e-4)

    # The same scores straight from the PyTorch model: sum log p of "<extra_id_0> good".
    with torch.no_grad():
        for b in range(batch):
            target = ids_LxWxT[1, 0][mask_LxWxT[1, 0] > 0]
            decoder_in = np.concatenate([[0], target[:-1]])
            keep = enc["attention_mask"][b] > 0
            logits = hf(input_ids=torch.tensor(enc["input_ids"][b][keep][None].astype(np.int64)),
                        decoder_input_ids=torch.tensor(decoder_in[None].astype(np.int64))).logits
            logp = torch.log_softmax(logits[0].double(), dim=-1).numpy()
            torch_score = logp[np.arange(len(target)), target].sum()
            # fp32 parity with torch; a missing sentinel or a pad counted as target differs by nats
            np.testing.assert_allclose(scores_BxL[b, 1], torch_score, rtol=1e-4, atol=1e-4)


def test_loss_is_cross_entropy_over_label_scores(tiny):
    lm, _ = tiny
    pvp = get_pvp("yelp-polarity", 1)
    enc = t5_pet_encode(pvp, examples(), lm.tokenizer, SEQ)
    enc["labels"][2] = -1  # an unlabeled row must not count
    ids, mask = t5_label_targets(pvp, lm.tokenizer)
    batch = {k: enc[k] for k in ("input_ids", "attention_mask", "labels")}
    # [L, T] targets for the loss and [L, 1, T] for the scores: one word per label either way
    loss_fn = make_t5_pet_loss(lm.module.apply, ids[:, 0], mask[:, 0])
    scores_fn = make_t5_label_scores_fn(lm.module.apply, ids, mask)

    @jax.jit
    def both(params, batch):
        return loss_fn(params, batch, jax.random.key(0)), scores_fn(params, batch)

    (loss, aux), scores = both(lm.params, batch)
    scores = np.asarray(scores, np.float64)
    logp = scores - np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - scores.max(1, keepdims=True)
    keep = enc["labels"] >= 0
    expected = -logp[np.flatnonzero(keep), enc["labels"][keep]].mean()
    # fp32 vs float64 cross-entropy; counting the unlabeled row or another label changes it > 1e-2
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # the share of labeled rows whose best-scoring label is the gold one
    argmax_hits = scores[np.flatnonzero(keep)].argmax(1) == enc["labels"][keep]
    assert float(aux["train_accuracy"]) == pytest.approx(argmax_hits.mean())


def test_tiny_t5_pet_training_fits_the_labeled_set(tiny):
    from jaxpet.engine.optim import make_optimizer
    from jaxpet.engine.sharding import make_mesh
    from jaxpet.engine.training import FAST_CPU_COMPILE, Trainer, fit

    lm, _ = tiny
    pvp = get_pvp("yelp-polarity", 1)
    enc = t5_pet_encode(pvp, examples(), lm.tokenizer, SEQ)
    ids, mask = t5_label_targets(pvp, lm.tokenizer)
    arrays = {k: enc[k] for k in ("input_ids", "attention_mask", "labels")}
    mesh = make_mesh(data=-1)
    steps = 12
    trainer = Trainer(make_t5_pet_loss(lm.module.apply, ids, mask),
                      make_optimizer(3e-3, steps, weight_decay=0.0), mesh,
                      compiler_options=FAST_CPU_COMPILE)
    logged: dict[int, dict] = {}
    fit(trainer, trainer.init(lm.params), lambda step: arrays, steps, seed=0, log_every=1,
        metrics_writer=lambda s, m: logged.update({s: m}), progress=False)
    assert logged[steps]["loss"] < 0.5 * logged[1]["loss"]
    # argmax of the label scores picks every gold label by the last step
    assert logged[steps]["train_accuracy"] == 1.0


def test_parallel_member_loss_reads_padded_label_targets_from_the_batch(tiny):
    from jaxpet.pipelines.member import PatternData
    from jaxpet.pipelines.parallel_members import member_constants
    from jaxpet.scoring.seq2seq import T5_CONSTANT_KEYS, make_member_t5_pet_loss

    lm, _ = tiny
    one_word = get_pvp("yelp-polarity", 1)
    two_words = get_pvp("yelp-polarity", 1, verbalizer={"1": ["bad", "terrible"], "2": "good"})
    enc = t5_pet_encode(one_word, examples(), lm.tokenizer, SEQ)
    batch = {k: enc[k] for k in ("input_ids", "attention_mask", "labels")}
    targets = [t5_label_targets(pvp, lm.tokenizer) for pvp in (one_word, two_words)]
    patterns = [PatternData(i, None, None, {}, {}, None, label_targets=t)
                for i, t in enumerate(targets)]
    constants = member_constants(patterns, lm)  # padded to the most words and tokens
    shapes = {constants[m][key].shape for m in range(2) for key in T5_CONSTANT_KEYS}
    assert shapes == {(2, 2, max(ids.shape[2] for ids, _ in targets))}
    assert targets[0][0].shape[1] == 1  # the one-word pattern's targets were padded
    member_loss = make_member_t5_pet_loss(lm.module.apply)
    plain_loss = make_t5_pet_loss(lm.module.apply, *targets[0])

    @jax.jit
    def losses(params, padded):
        return (member_loss(params, {**batch, **padded}, jax.random.key(0))[0],
                plain_loss(params, batch, jax.random.key(0))[0])

    from_batch, plain = losses(lm.params, constants[0])
    # the same computation with padded targets; a padded target that counts changes the loss > 1e-3
    np.testing.assert_allclose(float(from_batch), float(plain), rtol=1e-6)
