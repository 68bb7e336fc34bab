"""Truncation as PET's token-by-token loop, special-token layouts, verbalizers, error cases."""

import random

import numpy as np
import pytest
from tiny_tokenizers import bpe_tokenizer, wordpiece_tokenizer

from jaxpet.data.example import Example
from jaxpet.prompts import get_pvp
from jaxpet.prompts.encoding import cut_counts, tokenize_parts, truncate_pair
from jaxpet.prompts.verbalizer import parse_pet_verbalizer_file


def pet_truncate(parts_a, parts_b, max_length):
    """The original PET loop (pvp.py `truncate`), one token per iteration."""
    parts_a = [(list(p), s) for p, s in parts_a]
    parts_b = [(list(p), s) for p, s in parts_b]

    def seq_len(parts, only_shortenable=False):
        return sum(len(x) for x, s in parts if not only_shortenable or s) if parts else 0

    def remove_last(parts):
        last = max(i for i, (seq, s) in enumerate(parts) if s and seq)
        parts[last] = (parts[last][0][:-1], parts[last][1])

    for _ in range(seq_len(parts_a) + seq_len(parts_b) - max_length):
        if seq_len(parts_a, True) > seq_len(parts_b, True):
            remove_last(parts_a)
        else:
            remove_last(parts_b)
    return [t for p, _ in parts_a for t in p], [t for p, _ in parts_b for t in p]


def test_truncation_equals_pet_loop_on_random_parts():
    rng = random.Random(0)
    tid = iter(range(10**6))
    for _ in range(400):
        def parts(k):
            return [([next(tid) for _ in range(rng.randint(0, 12))], rng.random() < 0.6)
                    for _ in range(k)]
        pa, pb = parts(rng.randint(1, 4)), parts(rng.randint(0, 4))
        total = sum(len(p) for p, _ in pa + pb)
        fixed = sum(len(p) for p, s in pa + pb if not s)
        max_len = rng.randint(fixed, total + 3)
        got_a, got_b = truncate_pair(
            [p for p, _ in pa], [s for _, s in pa], [p for p, _ in pb] if pb else None,
            [s for _, s in pb] if pb else None, max_len, "g")
        want_a, want_b = pet_truncate(pa, pb, max_len)
        assert got_a == want_a
        assert (got_b or []) == want_b


@pytest.mark.parametrize("sa,sb,r", [(10, 3, 4), (10, 3, 9), (3, 3, 1), (3, 3, 4), (2, 7, 6),
                                     (0, 5, 5), (6, 0, 2)])
def test_cut_counts_small(sa, sb, r):
    a, b = sa, sb
    for _ in range(r):
        if a > b:
            a -= 1
        else:
            b -= 1
    assert cut_counts(sa, sb, r) == (sa - a, sb - b)


def _tokens(tok, enc, i=0):
    n = int(enc["attention_mask"][i].sum())
    return tok.convert_ids_to_tokens(enc["input_ids"][i, :n].tolist())


def test_long_texts_on_both_segments_wordpiece():
    tok = wordpiece_tokenizer()
    # premise 10 tokens (shortenable), hypothesis 6 tokens (shortenable), MNLI pattern 1:
    # [CLS] a ? [SEP] [MASK] , b [SEP] = 4 specials + 2 fixed + 16 text tokens = 22
    ex = Example("train-7", "one two three four five six seven eight nine ten",
                 "Mary John Kim Tom sun rain", label="entailment")
    enc = get_pvp("mnli", 1).encode([ex], tok, 17)  # cut 5: a loses 4 (10->6), then b loses 1
    assert _tokens(tok, enc) == ["[CLS]", "one", "two", "three", "four", "five", "six", "?",
                                 "[SEP]", "[MASK]", ",", "Mary", "John", "Kim", "Tom", "sun",
                                 "[SEP]"]
    enc = get_pvp("mnli", 1).encode([ex], tok, 12)  # cut 10: a 6->... equal at 6, then b,a,b,a
    assert _tokens(tok, enc) == ["[CLS]", "one", "two", "three", "?", "[SEP]", "[MASK]", ",",
                                 "Mary", "John", "Kim", "[SEP]"]
    assert enc["mask_positions"].tolist() == [[6]]
    assert enc["token_type_ids"][0].tolist() == [0] * 6 + [1] * 6


def test_long_texts_byte_level_bpe_agnews():
    tok = bpe_tokenizer()
    ex = Example("train-1", "one two three four five", "six seven eight nine ten Mary", label="3")
    # <s> <mask> : a(5) b(6) </s> = 15; max 10 -> cut 5 from the last shortenable part (b)
    enc = get_pvp("agnews", 0).encode([ex], tok, 10)
    assert _tokens(tok, enc) == ["<s>", "<mask>", "Ġ:", "Ġone", "Ġtwo", "Ġthree", "Ġfour",
                                 "Ġfive", "Ġsix", "</s>"]
    # 2 more: b is used up, then a is cut from its end
    enc = get_pvp("agnews", 0).encode([ex], tok, 8)
    assert _tokens(tok, enc) == ["<s>", "<mask>", "Ġ:", "Ġone", "Ġtwo", "Ġthree", "Ġfour", "</s>"]
    assert enc["labels"].tolist() == [2]


def test_too_long_fixed_text_names_the_example():
    ex = Example("dev-42", "Good food.", label="1")
    with pytest.raises(ValueError, match="dev-42"):
        get_pvp("yelp-polarity", 1).encode([ex], wordpiece_tokenizer(), 8)


def test_unknown_label_names_guid_and_labels():
    ex = Example("train-3", "Good food.", label="7")
    with pytest.raises(ValueError, match=r"train-3.*\['1', '2'\]"):
        get_pvp("yelp-polarity", 0).encode([ex], wordpiece_tokenizer(), 16)


def test_batch_padding_and_unlabeled():
    tok = wordpiece_tokenizer()
    exs = [Example("u-0", "Good food."), Example("u-1", "Rain fell . Tom left .", label="2")]
    enc = get_pvp("yelp-polarity", 0).encode(exs, tok, 16)
    assert {k: v.shape for k, v in enc.items()} == {
        "input_ids": (2, 16), "attention_mask": (2, 16), "token_type_ids": (2, 16),
        "mask_positions": (2, 1), "labels": (2,)}
    assert all(v.dtype == np.int32 for v in enc.values())
    assert enc["labels"].tolist() == [-1, 1]
    assert enc["attention_mask"].sum(1).tolist() == [9, 12]
    assert (enc["input_ids"][enc["attention_mask"] == 0] == tok.pad_token_id).all()


def test_unknown_task_and_pattern_list_valid_ones():
    with pytest.raises(KeyError, match="agnews"):
        get_pvp("no-such-task", 0)
    with pytest.raises(KeyError, match=r"\[0, 1, 2, 3, 4, 5\]"):
        get_pvp("agnews", 6)


def test_verbalizer_override_mapping_with_several_words():
    pvp = get_pvp("yelp-polarity", 0, verbalizer={"1": ["bad", "terrible"], "2": "good"})
    tok = wordpiece_tokenizer()
    ids = pvp.verbalizer_ids(tok)
    assert ids.tolist() == [tok.convert_tokens_to_ids(["bad", "terrible"]),
                            [tok.convert_tokens_to_ids("good"), -1]]


def test_pet_verbalizer_file_and_yaml(tmp_path):
    pet = tmp_path / "verbalizer.txt"
    pet.write_text("0\n1 bad okay\n2 good\n1\n1 terrible\n2 great\n")
    assert parse_pet_verbalizer_file(pet) == {0: {"1": ["bad", "okay"], "2": ["good"]},
                                              1: {"1": ["terrible"], "2": ["great"]}}
    tok = bpe_tokenizer()
    ids = get_pvp("yelp-polarity", 1, verbalizer=pet).verbalizer_ids(tok)
    assert ids.tolist() == [[tok.convert_tokens_to_ids("Ġterrible")],
                            [tok.convert_tokens_to_ids("Ġgreat")]]
    yml = tmp_path / "v.yaml"
    yml.write_text("'1': [okay]\n'2': great\n")
    ids = get_pvp("yelp-polarity", 0, verbalizer=yml).verbalizer_ids(tok)
    assert ids[:, 0].tolist() == tok.convert_tokens_to_ids(["Ġokay", "Ġgreat"])
    with pytest.raises(ValueError, match="pattern 3"):
        get_pvp("yelp-polarity", 3, verbalizer=pet)
    with pytest.raises(ValueError, match="labels"):
        get_pvp("yelp-polarity", 0, verbalizer={"1": "bad"})


def test_multi_token_word_error_names_word_tokens_and_alternative():
    pvp = get_pvp("yelp-polarity", 0, verbalizer={"1": "badly", "2": "good"})
    with pytest.raises(ValueError, match=r"'badly'.*\['bad', '##l', '##y'\].*multi-token"):
        pvp.verbalizer_ids(wordpiece_tokenizer())


def test_mask_in_text_is_an_error():
    ex = Example("dev-9", "Good [MASK] food.", label="1")
    with pytest.raises(ValueError, match="dev-9"):
        get_pvp("yelp-polarity", 0).encode([ex], wordpiece_tokenizer(), 32)


@pytest.mark.parametrize("part", [" question: ", "question: ", " question:", "question",
                                  "  two spaces", "\tTab", ' . Sense (1) (a) "'])
def test_byte_level_parts_get_a_prefix_space_only_without_leading_whitespace(part):
    # PET's RoBERTa tokenizer prepends " " only when the part does not start with whitespace:
    # " question: " (RTE/CB pattern 4) must not become "  question: " (an extra Ġ token)
    tok = bpe_tokenizer()
    expected = part if part[:1].isspace() else " " + part
    assert tokenize_parts(tok, [part]) == [tok.encode(expected, add_special_tokens=False)]


@pytest.mark.parametrize("part", [" question: ", "question: ", "  two spaces"])
def test_wordpiece_parts_are_encoded_as_written(part):
    # WordPiece splits on whitespace: leading and trailing spaces change no token
    tok = wordpiece_tokenizer()
    assert tokenize_parts(tok, [part]) == [tok.encode(part.strip(), add_special_tokens=False)]
