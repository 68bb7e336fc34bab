"""make_scorer picks the Scorer by backbone and answer shape; each scores_fn matches a reference.

The references are recomputed from the models' full outputs: the MLM's logits over the whole
sequence (numpy, masks filled left to right by hand for multi-token candidates), and the
transformers T5's decoder logits for the label targets.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxpet.data import Example
from jaxpet.prompts import get_pvp

# word-level vocab: "greatness" splits into two pieces, every other word is one token
PIECES = ["great", "##ness"]
WORDS = ("the food was good bad terrible nice staff it rained so because we stayed home went out "
         "a cake is ? , . \" or : yelp review it was restaurant in summary all in all just")
COPA = [("It rained", "cause", "we stayed home", "we went out"),
        ("The food was good", "effect", "we loved the staff", "the cake was bad")]
REVIEWS = [("the food was good", "2"), ("the staff was terrible", "1"),
           ("nice food", "2"), ("bad cake", "1")]
SEQ = 32


def _config(model: str, strategy: str = "ltr"):
    from jaxpet.config import load_config

    return load_config({"output_dir": "unused", "model": {"name": model},
                        "task": {"name": "yelp-polarity", "data_dir": "unused"},
                        "pet": {"max_seq_length": SEQ, "decoding_strategy": strategy},
                        "mesh": {"data": 1}})


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BERT masked LM whose word-level vocab holds the test's words."""
    import torch
    from tiny_models import tiny_hf_config
    from transformers import BertForMaskedLM, BertTokenizer

    from jaxpet.models import load_pretrained

    folder = tmp_path_factory.mktemp("scorer-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS.split())), *PIECES]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    torch.manual_seed(0)
    BertForMaskedLM(tiny_hf_config("bert", len(tokenizer), tokenizer)).eval().save_pretrained(
        str(folder))
    tokenizer.save_pretrained(str(folder))
    return load_pretrained(str(folder), head="mlm"), _config(str(folder))


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    from tiny_t5 import make_t5_tokenizer, make_tiny_t5

    from jaxpet.models import load_pretrained

    folder = str(tmp_path_factory.mktemp("scorer-t5"))
    make_t5_tokenizer(folder)
    hf = make_tiny_t5(folder, "1.0", vocab_size=224, seed=1)
    return load_pretrained(folder, head="seq2seq"), hf, _config(folder)


def reviews() -> list[Example]:
    return [Example(f"r{i}", text, None, label) for i, (text, label) in enumerate(REVIEWS)]


def copa() -> list[Example]:
    return [Example(f"c{i}", premise, None, "0",
                    {"question": question, "choice1": right, "choice2": wrong})
            for i, (premise, question, right, wrong) in enumerate(COPA)]


_APPLY: dict[int, object] = {}


def full_logits(lm, ids_NxS, attn_NxS, types_NxS) -> np.ndarray:
    """The MLM head's logits [N, S, V] at every position (float64); compiled once per model."""
    import jax

    apply = _APPLY.setdefault(id(lm.module), jax.jit(lambda p, i, a, t: lm.module.apply(
        {"params": p}, i, a, token_type_ids=t, deterministic=True)))
    return np.asarray(apply(lm.params, ids_NxS, attn_NxS, types_NxS), np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_make_scorer_picks_by_backbone_and_answer_shape(bert, t5):
    from jaxpet.scoring.candidates import CandidatesScorer
    from jaxpet.scoring.cloze import ClozeScorer
    from jaxpet.scoring.scorer import make_scorer
    from jaxpet.scoring.seq2seq import Seq2SeqScorer

    lm, config = bert
    single = get_pvp("yelp-polarity", 1, verbalizer={"1": ["bad", "terrible"], "2": "good"})
    pieces = get_pvp("yelp-polarity", 1, verbalizer={"1": "bad", "2": "greatness"})
    picks = {
        "single-token words": (make_scorer(single, lm, config), ClozeScorer, "cloze"),
        "a two-piece word": (make_scorer(pieces, lm, config), CandidatesScorer, "candidates"),
        "COPA choices": (make_scorer(get_pvp("copa", 1), lm, config), CandidatesScorer,
                         "candidates"),
        # T5 scores words of any length in one decoder pass: never the K-step path
        "T5, a two-piece word": (make_scorer(pieces, t5[0], t5[2]), Seq2SeqScorer, "seq2seq"),
        "T5, single words": (make_scorer(single, t5[0], t5[2]), Seq2SeqScorer, "seq2seq"),
    }
    for case, (scorer, expected, kind) in picks.items():
        assert type(scorer) is expected and scorer.kind == kind, case
    flags = {kind: (scorer.supports_mlm, scorer.supports_parallel_members)
             for scorer, _, kind in picks.values()}
    # PET's auxiliary MLM loss needs a masked LM with one mask; members train together when
    # they share one forward layout (not per-example candidates)
    assert flags == {"cloze": (True, True), "candidates": (False, False),
                     "seq2seq": (False, True)}
    with pytest.raises(ValueError, match="scores per-example answer candidates"):
        make_scorer(get_pvp("copa", 1), t5[0], t5[2])


def test_cloze_scores_are_the_mask_logits_averaged_over_verbalizer_ids(bert):
    import jax

    from jaxpet.scoring.scorer import make_scorer

    lm, config = bert
    pvp = get_pvp("yelp-polarity", 1, verbalizer={"1": ["bad", "terrible"], "2": "good"})
    scorer = make_scorer(pvp, lm, config)
    arrays = scorer.encode(reviews(), "eval")
    raw = jax.jit(scorer.scores_fn())(lm.params, scorer.scoring_inputs(arrays))
    got_NxL, texts = scorer.finalize(np.asarray(raw), reviews())
    logits_NxSxV = full_logits(lm, arrays["input_ids"], arrays["attention_mask"],
                               arrays.get("token_type_ids"))
    rows = np.arange(len(REVIEWS))
    mask_NxV = logits_NxSxV[rows, arrays["mask_positions"][:, 0]]
    ids = {w: lm.tokenizer.convert_tokens_to_ids(w) for w in ("bad", "terrible", "good")}
    expected_NxL = np.stack([(mask_NxV[:, ids["bad"]] + mask_NxV[:, ids["terrible"]]) / 2,
                             mask_NxV[:, ids["good"]]], axis=-1)
    assert texts is None and got_NxL.shape == (4, 2)
    # float32 model against the float64 recomputation; dropping label 1's second word moves 0.1
    np.testing.assert_allclose(got_NxL, expected_NxL, atol=1e-5)
    np.testing.assert_array_equal(scorer.gold(arrays, None), [1, 0, 1, 0])


@pytest.mark.slow  # ~35 s on 2 shared cores: one model pass per mask of every candidate
def test_candidate_scores_are_left_to_right_log_likelihoods(bert):
    import jax

    from jaxpet.scoring.scorer import make_scorer

    lm, config = bert
    scorer = make_scorer(get_pvp("copa", 1), lm, config)  # decoding_strategy ltr
    examples = copa()
    arrays = scorer.encode(examples, "eval")
    raw = jax.jit(scorer.scores_fn())(lm.params, scorer.scoring_inputs(arrays))
    got_NxC, _ = scorer.finalize(np.asarray(raw), examples)
    ids_NxCxS, pos_NxCxK = arrays["input_ids"], arrays["mask_positions"]
    expected_NxC = np.zeros(got_NxC.shape)
    for n in range(len(examples)):
        for c in range(ids_NxCxS.shape[1]):
            ids_S = ids_NxCxS[n, c].copy()
            slots = sorted((p, t) for p, t in zip(pos_NxCxK[n, c], arrays["target_ids"][n, c],
                                                   strict=True) if p >= 0)
            for position, token in slots:  # fill the masks left to right, one pass each
                lp_V = log_softmax(full_logits(
                    lm, ids_S[None], arrays["attention_mask"][n, c][None],
                    arrays["token_type_ids"][n, c][None])[0, position])
                expected_NxC[n, c] += lp_V[token]
                ids_S[position] = token
    assert got_NxC.shape == (2, 2) and (pos_NxCxK >= 0).sum(-1).max() >= 2  # K-step answers
    # float32 decoding against float64 passes; filling the masks in one parallel pass instead of
    # left to right moves a score by 5e-4 on this tiny model
    np.testing.assert_allclose(got_NxC, expected_NxC, atol=1e-5)
    np.testing.assert_array_equal(scorer.gold(arrays, examples), [0, 0])


def test_t5_scores_are_summed_target_log_probs_of_the_torch_decoder(t5):
    import jax
    import torch

    from jaxpet.scoring.scorer import make_scorer
    from jaxpet.scoring.seq2seq import SENTINEL

    lm, hf, config = t5
    pvp = get_pvp("yelp-polarity", 1, verbalizer={"1": ["bad", "terrible"], "2": "good"})
    scorer = make_scorer(pvp, lm, config)
    examples = [Example(f"t{i}", text, None, label) for i, (text, label) in enumerate(REVIEWS)]
    arrays = scorer.encode(examples, "eval")
    raw = jax.jit(scorer.scores_fn())(lm.params, scorer.scoring_inputs(arrays))
    got_NxL, _ = scorer.finalize(np.asarray(raw), examples)

    def log_likelihood(n: int, word: str) -> float:
        target = lm.tokenizer.encode(f"{SENTINEL} {word}", add_special_tokens=False)
        attended = arrays["attention_mask"][n] > 0
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor(arrays["input_ids"][n][attended][None]),
                        labels=torch.tensor([target])).logits[0].double().numpy()
        return float(log_softmax(logits)[np.arange(len(target)), target].sum())

    expected_NxL = np.asarray([[(log_likelihood(n, "bad") + log_likelihood(n, "terrible")) / 2,
                                log_likelihood(n, "good")] for n in range(len(examples))])
    # float32 JAX against torch; leaving out each target's last token moves a score by 6.5
    np.testing.assert_allclose(got_NxL, expected_NxL, atol=1e-5)
