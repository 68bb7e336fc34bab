"""The PET, classifier and MLM train-step losses against numpy, on a lookup-table 'model'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet.data.masking import mask_tokens_positions
from jaxpet.scoring import cloze_step as pet_step

V, L, S = 13, 3, 24
MASK, PAD, CLS = 12, 0, 1
RNG = np.random.default_rng(0)
PARAMS = {"emb": jnp.asarray(RNG.normal(size=(V, V)), jnp.float32),
          "tt": jnp.asarray(RNG.normal(size=(2, V)), jnp.float32)}
VERBALIZER_LxW = np.array([[3, -1], [4, 5], [0, -1]])


class TableModel:
    """logits[b, p] = emb[input_ids[b, positions[b, p]]] (+ tt[token_type]); records each call.

    The classifier head (positions=None) returns the first token's first L logits.
    """

    def __init__(self):
        self.calls = []

    def apply(self, variables, input_ids, attention_mask, token_type_ids=None,
              deterministic=True, rngs=None, positions=None):
        self.calls.append(dict(input_ids=np.asarray(input_ids), deterministic=deterministic,
                               rngs=rngs, token_type_ids=token_type_ids, positions=positions))
        p = variables["params"]
        x_BxSxV = p["emb"][input_ids] * attention_mask[..., None]
        if token_type_ids is not None:
            x_BxSxV = x_BxSxV + p["tt"][token_type_ids]
        if positions is None:
            return x_BxSxV[:, 0, :L]
        return jnp.take_along_axis(x_BxSxV, positions[..., None], axis=1)


def _np_table_logits(ids_BxS, tt_BxS=None):
    x = np.asarray(PARAMS["emb"], np.float64)[ids_BxS]
    return x if tt_BxS is None else x + np.asarray(PARAMS["tt"], np.float64)[tt_BxS]


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_cloze(ids_BxS, tt_BxS, mask_pos_B, labels_B):
    """PET's cloze loss: mean of the raw logits over each label's words, CE over labels."""
    logits_BxV = _np_table_logits(ids_BxS, tt_BxS)[np.arange(len(ids_BxS)), mask_pos_B]
    scores_BxL = np.stack([logits_BxV[:, [w for w in words if w >= 0]].mean(-1)
                           for words in VERBALIZER_LxW], -1)
    lp_BxL = _log_softmax(scores_BxL)
    keep = labels_B >= 0
    return -lp_BxL[keep, labels_B[keep]].mean()


def _labeled_batch(with_tt=True):
    ids_BxS = RNG.integers(2, MASK, size=(3, S)).astype(np.int32)
    ids_BxS[:, 0] = CLS
    mask_pos_B = np.array([5, 7, 2])
    ids_BxS[np.arange(3), mask_pos_B] = MASK
    batch = {"input_ids": ids_BxS, "attention_mask": np.ones((3, S), np.int32),
             "mask_positions": np.stack([mask_pos_B, np.full(3, -1)], -1),
             "labels": np.array([2, -1, 1])}
    if with_tt:
        batch["token_type_ids"] = (np.arange(S)[None] >= 10).astype(np.int32).repeat(3, 0)
    return batch


def _unlabeled(batch, special_mask=False):
    ids_UxS = RNG.integers(2, MASK, size=(2, S)).astype(np.int32)
    ids_UxS[:, 0] = CLS
    ids_UxS[:, -3:] = PAD
    attn_UxS = (ids_UxS != PAD).astype(np.int32)
    out = dict(batch, unlabeled_input_ids=ids_UxS, unlabeled_attention_mask=attn_UxS)
    if special_mask:
        out["unlabeled_special_tokens_mask"] = np.isin(ids_UxS, [CLS, PAD]).astype(np.int32)
    return out


def _np_mlm(rng_mask, ids_UxS, attn_UxS, specials, tt=False, probability=0.15, targets=20):
    """MLM loss at the masked targets (the masking itself is jaxpet.data's, tested elsewhere)."""
    inputs, positions, targets_UxP, weights = (np.asarray(a) for a in mask_tokens_positions(
        rng_mask, ids_UxS, np.isin(ids_UxS, specials), vocab_size=V, mask_token_id=MASK,
        probability=probability, max_targets=targets, attention_mask=attn_UxS))
    assert weights.sum() > 0  # the check below needs real MLM targets
    if tt is True:  # the labeled rows have token types and the unlabeled rows none: zeros
        tt = np.zeros_like(inputs)
    logits = _np_table_logits(inputs, tt if isinstance(tt, np.ndarray) else None)
    lp_UxPxV = _log_softmax(np.take_along_axis(logits, positions[..., None], 1))
    ce_UxP = -np.take_along_axis(lp_UxPxV, np.maximum(targets_UxP, 0)[..., None], -1)[..., 0]
    return (ce_UxP * weights).sum() / weights.sum()


def test_cloze_only_loss_is_pets_cloze_loss_with_dropout_on():
    model, batch = TableModel(), _labeled_batch()
    loss_fn = pet_step.make_pet_loss(model.apply, VERBALIZER_LxW, mask_token_id=MASK,
                                     vocab_size=V)
    rng = jax.random.PRNGKey(3)
    loss, aux = loss_fn(PARAMS, batch, rng)
    expected = _np_cloze(batch["input_ids"], batch["token_type_ids"],
                         batch["mask_positions"][:, 0], batch["labels"])
    # float32 forward; a wrong slot, word or label moves the loss by O(0.1)
    np.testing.assert_allclose([loss, aux["cloze"]], [expected, expected], rtol=1e-5)
    assert float(aux["mlm"]) == 0.0
    (call,) = model.calls
    assert call["deterministic"] is False  # PET trains with dropout
    np.testing.assert_array_equal(jax.random.key_data(call["rngs"]["dropout"]),
                                  jax.random.key_data(jax.random.split(rng)[1]))


@pytest.mark.parametrize("special_mask", [False, True])
def test_pet_loss_mixes_cloze_and_mlm_in_one_forward(special_mask):
    model = TableModel()
    batch = _unlabeled(_labeled_batch(), special_mask)
    alpha = 0.25
    loss_fn = pet_step.make_pet_loss(model.apply, VERBALIZER_LxW, alpha=alpha,
                                     mask_token_id=MASK, vocab_size=V, pad_id=PAD,
                                     special_token_ids=[CLS])
    rng = jax.random.PRNGKey(11)
    loss, aux = loss_fn(PARAMS, batch, rng)
    cloze = _np_cloze(batch["input_ids"], batch["token_type_ids"],
                      batch["mask_positions"][:, 0], batch["labels"])
    mlm = _np_mlm(jax.random.split(rng)[0], batch["unlabeled_input_ids"],
                  batch["unlabeled_attention_mask"], [CLS, PAD, MASK], tt=True)
    # float32 forward; swapping alpha's sides or dropping a term moves the loss by >= 0.1
    np.testing.assert_allclose([aux["cloze"], aux["mlm"], loss],
                               [cloze, mlm, (1 - alpha) * cloze + alpha * mlm], rtol=1e-5)
    (call,) = model.calls  # labeled and unlabeled rows share one forward pass
    assert call["input_ids"].shape == (5, S) and call["positions"].shape == (5, 20)
    np.testing.assert_array_equal(np.asarray(call["token_type_ids"])[3:], 0)


def test_the_mlm_term_reads_the_unlabeled_rows_token_types_and_probability():
    # The pipeline's unlabeled rows are pattern-encoded pairs: BERT must see their segments.
    model = TableModel()
    batch = _unlabeled(_labeled_batch())
    batch["unlabeled_token_type_ids"] = (np.arange(S)[None] >= 8).astype(np.int32).repeat(2, 0)
    loss_fn = pet_step.make_pet_loss(model.apply, VERBALIZER_LxW, mask_token_id=MASK,
                                     vocab_size=V, pad_id=PAD, special_token_ids=[CLS],
                                     mlm_probability=0.4)
    rng = jax.random.PRNGKey(3)
    _, aux = loss_fn(PARAMS, batch, rng)
    mlm = _np_mlm(jax.random.split(rng)[0], batch["unlabeled_input_ids"],
                  batch["unlabeled_attention_mask"], [CLS, PAD, MASK],
                  tt=batch["unlabeled_token_type_ids"], probability=0.4)
    # float32 forward; zero token types or the default 0.15 draw move the MLM term by O(0.1)
    np.testing.assert_allclose(aux["mlm"], mlm, rtol=1e-5)


def test_pet_loss_defaults_are_the_papers():
    # alpha = 1e-4, 20 MLM targets at probability 0.15, pad id 0 never a target.
    model = TableModel()
    batch = _unlabeled(_labeled_batch(with_tt=False))
    loss_fn = pet_step.make_pet_loss(model.apply, VERBALIZER_LxW, mask_token_id=MASK,
                                     vocab_size=V, special_token_ids=[CLS])
    rng = jax.random.PRNGKey(5)
    loss, aux = loss_fn(PARAMS, batch, rng)
    cloze = _np_cloze(batch["input_ids"], None, batch["mask_positions"][:, 0], batch["labels"])
    mlm = _np_mlm(jax.random.split(rng)[0], batch["unlabeled_input_ids"],
                  batch["unlabeled_attention_mask"], [CLS, PAD, MASK])
    # float32 forward; alpha 1e-4 vs other weights differs by > 1e-4 * |mlm - cloze| ~ 1e-4
    np.testing.assert_allclose([aux["mlm"], loss], [mlm, 0.9999 * cloze + 1e-4 * mlm],
                               rtol=1e-6)
    assert "token_type_ids" not in model.calls[0] or model.calls[0]["token_type_ids"] is None


def test_labeled_and_unlabeled_lengths_must_match():
    batch = _unlabeled(_labeled_batch())
    batch["unlabeled_input_ids"] = batch["unlabeled_input_ids"][:, :-2]
    batch["unlabeled_attention_mask"] = batch["unlabeled_attention_mask"][:, :-2]
    loss_fn = pet_step.make_pet_loss(TableModel().apply, VERBALIZER_LxW, mask_token_id=MASK,
                                     vocab_size=V)
    with pytest.raises(ValueError, match=r"^labeled and unlabeled arrays must have the same "
                                         r"sequence length, got 24 and 22$"):
        loss_fn(PARAMS, batch, jax.random.PRNGKey(0))


def test_mlm_only_loss():
    model = TableModel()
    batch = _unlabeled({})
    plain = {"input_ids": batch["unlabeled_input_ids"],
             "attention_mask": batch["unlabeled_attention_mask"]}
    loss_fn = pet_step.make_mlm_loss(model.apply, mask_token_id=MASK, vocab_size=V,
                                     special_token_ids=[CLS])
    rng = jax.random.PRNGKey(8)
    loss, aux = loss_fn(PARAMS, plain, rng)
    expected = _np_mlm(jax.random.split(rng)[0], plain["input_ids"], plain["attention_mask"],
                       [CLS, PAD, MASK])
    # float32 forward; a different masking draw or target changes the loss by O(0.1)
    np.testing.assert_allclose([loss, aux["mlm"]], [expected, expected], rtol=1e-5)
    (call,) = model.calls
    assert call["deterministic"] is False and call["positions"].shape == (2, 20)


def test_classifier_losses_hard_and_distilled():
    model = TableModel()
    ids_BxS = RNG.integers(2, V, size=(4, 6)).astype(np.int32)
    logits_BxL = np.asarray(PARAMS["emb"], np.float64)[ids_BxS[:, 0], :L]
    batch = {"input_ids": ids_BxS, "attention_mask": np.ones((4, 6), np.int32),
             "labels": np.array([0, 2, 1, -1]), "weights": np.array([1.0, 0.5, 2.0, 1.0])}
    loss, _ = pet_step.make_classifier_loss(model.apply)(PARAMS, batch, jax.random.PRNGKey(0))
    ce_B = -_log_softmax(logits_BxL)[np.arange(4), np.maximum(batch["labels"], 0)]
    w_B = batch["weights"] * (batch["labels"] >= 0)
    # float32 forward; ignoring the weights or the -1 label moves the mean by O(0.1)
    np.testing.assert_allclose(loss, (ce_B * w_B).sum() / w_B.sum(), rtol=1e-5)
    assert model.calls[0]["deterministic"] is False
    teacher_BxL = RNG.normal(size=(4, L)) * 3
    soft = dict(batch, logits=teacher_BxL)
    loss, _ = pet_step.make_classifier_loss(model.apply, soft_labels=True)(
        PARAMS, soft, jax.random.PRNGKey(0))
    t = 2.0  # the default temperature, PET's
    p_BxL = np.exp(_log_softmax(teacher_BxL / t))
    kl_B = (p_BxL * (_log_softmax(teacher_BxL / t) - _log_softmax(logits_BxL / t))).sum(-1)
    w_B = batch["weights"]
    # float32 forward; T=1 or hard labels change it by O(0.1)
    np.testing.assert_allclose(loss, (kl_B * w_B).sum() / w_B.sum() * t**2, rtol=1e-5)


def test_predict_functions_score_the_first_mask_without_dropout():
    model = TableModel()
    batch = _labeled_batch()
    batch["mask_positions"][:, 1] = 9  # a second slot must not be read
    got_BxL = pet_step.make_label_logits_fn(model.apply, VERBALIZER_LxW)(PARAMS, batch)
    logits_BxV = _np_table_logits(batch["input_ids"], batch["token_type_ids"])[
        np.arange(3), batch["mask_positions"][:, 0]]
    expected_BxL = np.stack([logits_BxV[:, [w for w in words if w >= 0]].mean(-1)
                             for words in VERBALIZER_LxW], -1)
    # float32 forward; a wrong slot or word gives O(1) differences
    np.testing.assert_allclose(got_BxL, expected_BxL, rtol=1e-5, atol=1e-6)
    assert model.calls[0]["deterministic"] is True and model.calls[0]["rngs"] is None
    got_BxL = pet_step.make_classifier_logits_fn(model.apply)(PARAMS, batch)
    assert got_BxL.dtype == jnp.float32
    # float32 forward
    np.testing.assert_allclose(
        got_BxL, _np_table_logits(batch["input_ids"], batch["token_type_ids"])[:, 0, :L],
        rtol=1e-5, atol=1e-6)
    assert model.calls[1]["deterministic"] is True and model.calls[1]["rngs"] is None
