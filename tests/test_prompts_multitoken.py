"""Multi-mask training/decoding/generation encodings and priming, checked token by token."""

import pytest
from tiny_tokenizers import bpe_tokenizer, wordpiece_tokenizer

from jaxpet.data.example import Example
from jaxpet.prompts import get_pvp
from jaxpet.prompts.multitoken import (
    encode_generation,
    encode_multi_token,
    encode_multi_token_decoding,
)
from jaxpet.prompts.priming import encode_primed

COPA = Example("dev-9", "Rain fell.", label="1", meta={
    "choice1": "The sun rose.", "choice2": "Rain stopped.", "question": "cause"})
RECORD = Example("dev-11", "Obama visited Paris.", "@placeholder is the capital", label="1", meta={
    "candidates": ["France", "Paris", "London city"], "answers": ["Paris"]})


def _toks(tok, ids, mask):
    return tok.convert_ids_to_tokens(ids[mask > 0].tolist())


def _ids(tok, s):
    return tok.convert_tokens_to_ids(s.split())


def test_copa_training_and_decoding_encodings():
    tok = wordpiece_tokenizer()
    pvp = get_pvp("copa", 1)
    train = encode_multi_token(pvp, [COPA], tok, 32)
    head = "[CLS] the sun rose or rain stopped ? Rain fell because"
    assert _toks(tok, train["input_ids"][0], train["attention_mask"][0]) == \
        f"{head} [MASK] [MASK] [MASK] . [SEP]".split()
    assert train["mask_positions"].tolist() == [[11, 12, 13]]
    assert train["target_ids"].tolist() == [[_ids(tok, "the sun rose"),
                                             _ids(tok, "rain stopped") + [-1]]]
    assert train["candidate_mask"].tolist() == [[True, True]]
    assert train["labels"].tolist() == [1]

    dec = encode_multi_token_decoding(pvp, [COPA], tok, 32, num_candidates=3)
    assert dec["input_ids"].shape == (1, 3, 32)
    assert _toks(tok, dec["input_ids"][0, 0], dec["attention_mask"][0, 0]) == \
        f"{head} [MASK] [MASK] [MASK] . [SEP]".split()
    assert _toks(tok, dec["input_ids"][0, 1], dec["attention_mask"][0, 1]) == \
        f"{head} [MASK] [MASK] . [SEP]".split()
    assert dec["mask_positions"][0].tolist() == [[11, 12, 13], [11, 12, -1], [-1, -1, -1]]
    assert dec["target_ids"][0, 2].tolist() == [-1, -1, -1]
    assert dec["candidate_mask"].tolist() == [[True, True, False]]
    assert dec["labels"].tolist() == [1]


def test_record_candidates_and_gold_index_bpe():
    tok = bpe_tokenizer()
    pvp = get_pvp("record", 0)
    dec = encode_multi_token_decoding(pvp, [RECORD], tok, 24, num_candidates=4)
    assert _toks(tok, dec["input_ids"][0, 2], dec["attention_mask"][0, 2]) == \
        "<s> ĠObama Ġvisited ĠParis . <mask> <mask> Ġis Ġthe Ġcapital </s>".split()
    assert _toks(tok, dec["input_ids"][0, 0], dec["attention_mask"][0, 0]) == \
        "<s> ĠObama Ġvisited ĠParis . <mask> Ġis Ġthe Ġcapital </s>".split()
    assert dec["target_ids"][0].tolist() == [
        _ids(tok, "ĠFrance") + [-1], _ids(tok, "ĠParis") + [-1], _ids(tok, "ĠLondon Ġcity"),
        [-1, -1]]
    assert dec["candidate_mask"].tolist() == [[True, True, True, False]]
    assert dec["labels"].tolist() == [1]
    with pytest.raises(ValueError, match="dev-11"):
        encode_multi_token(pvp, [RECORD], tok, 24, num_candidates=2)


def test_generic_multi_token_verbalizer():
    tok = wordpiece_tokenizer()
    pvp = get_pvp("yelp-polarity", 0, verbalizer={"1": "badly", "2": "good"})
    ex = Example("dev-1", "Good food.", label="1")
    dec = encode_multi_token_decoding(pvp, [ex], tok, 16)
    assert _toks(tok, dec["input_ids"][0, 0], dec["attention_mask"][0, 0]) == \
        "[CLS] It was [MASK] [MASK] [MASK] . Good food . [SEP]".split()
    assert _toks(tok, dec["input_ids"][0, 1], dec["attention_mask"][0, 1]) == \
        "[CLS] It was [MASK] . Good food . [SEP]".split()
    assert dec["target_ids"][0].tolist() == [_ids(tok, "bad ##l ##y"), _ids(tok, "good") + [-1, -1]]
    assert dec["labels"].tolist() == [0]


def test_wsc_generation_encoding():
    tok = wordpiece_tokenizer()
    pvp = get_pvp("wsc", 0)
    ex = Example("val-10", "Tom left because he ran", label="True",
                 meta={"span1_text": "Tom", "span2_text": "he", "span2_index": 3})
    gen = encode_generation(pvp, [ex], tok, 32)
    assert _toks(tok, gen["input_ids"][0], gen["attention_mask"][0])[-5:] == \
        "to [MASK] [MASK] . [SEP]".split()
    # the target, then [PAD] on the extra mask (what PET trains it to predict)
    assert gen["target_ids"].tolist() == [[tok.convert_tokens_to_ids("Tom"), tok.pad_token_id]]
    assert gen["labels"].tolist() == [1]
    train = [Example(f"train-{i}", ex.text_a, label="True", meta=ex.meta) for i in range(40)]
    counts = [int((m >= 0).sum()) for m in encode_generation(pvp, train, tok, 32)["mask_positions"]]
    again = [int((m >= 0).sum())
             for m in encode_generation(pvp, train[::-1], tok, 32)["mask_positions"]][::-1]
    assert counts == again  # seeded per example, not by call order
    assert set(counts) == {1, 2, 3, 4}  # 1 target token + 0..3 extra masks


@pytest.mark.parametrize("tok_fn,want", [
    (wordpiece_tokenizer,
     "[CLS] It was good . Good food . It was bad . Rain fell . It was [MASK] . Tom left . [SEP]"),
    (bpe_tokenizer, "<s> ĠIt Ġwas Ġgood Ġ. ĠGood Ġfood . ĠIt Ġwas Ġbad Ġ. ĠRain Ġfell . ĠIt Ġwas "
                    "<mask> Ġ. ĠTom Ġleft . </s>"),
])
def test_priming(tok_fn, want):
    tok = tok_fn()
    demos = [Example("d1", "Good food.", label="2"), Example("d2", "Rain fell.", label="1")]
    query = Example("q1", "Tom left.", label="1")
    enc = encode_primed(get_pvp("yelp-polarity", 0), [query], tok, 40, demonstrations=demos)
    got = _toks(tok, enc["input_ids"][0], enc["attention_mask"][0])
    assert got == want.split()
    assert enc["mask_positions"].tolist() == [[got.index(tok.mask_token)]]
    assert enc["token_type_ids"].sum() == 0 and enc["labels"].tolist() == [0]


def test_priming_two_segment_pattern_from_meta():
    tok = wordpiece_tokenizer()
    query = Example("q1", "Tom left.", meta={"priming_data": [
        Example("d1", "Good food.", label="2")]})
    enc = encode_primed(get_pvp("yelp-polarity", 2), [query], tok, 24)
    assert _toks(tok, enc["input_ids"][0], enc["attention_mask"][0]) == \
        "[CLS] Just good ! Good food . Just [MASK] ! Tom left . [SEP]".split()
    with pytest.raises(ValueError, match="q1"):
        encode_primed(get_pvp("yelp-polarity", 2), [query], tok, 12)
