"""Encoding edge cases: tokenizer kinds, pad/mask ids, batches, guards and their messages."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import numpy as np
import pytest
from tiny_tokenizers import albert_tokenizer, bpe_tokenizer, unigram_tokenizer, wordpiece_tokenizer

from jaxpet.data.example import Example
from jaxpet.prompts import get_pvp
from jaxpet.prompts.encoding import (
    MASK,
    Part,
    assemble,
    cut_counts,
    encode_segments,
    tokenize_filled,
    tokenize_parts,
    truncate_pair,
)

# MNLI pattern 1 is `a ?` || `___ , b`; both text parts are shortenable.
PAIR = Example("dev-3", "one two three", "Mary John", label="entailment")


def _tokens(tok: Any, enc: dict[str, np.ndarray], i: int = 0) -> list[str]:
    n = int(enc["attention_mask"][i].sum())
    return tok.convert_ids_to_tokens(enc["input_ids"][i, :n].tolist())


def _bert(**kwargs: Any) -> Any:
    """The tiny cased WordPiece vocabulary with other special-token settings."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=wordpiece_tokenizer().get_vocab(), do_lower_case=False, **kwargs)


@lru_cache(maxsize=1)
def generic_byte_level() -> Any:
    """A byte-level BPE loaded as a bare tokenizer.json would be: the generic fast class (no
    GPT-2/RoBERTa class name) and a plain `<mask>` special token that does not swallow the space
    before it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    words = "Good food It was Rain fell".split()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([w for t in words for w in (t, " " + t)] * 2, vocab_size=400,
                            min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, mask_token="<mask>",
                                   pad_token="<pad>")


@lru_cache(maxsize=1)
def slow_wordpiece() -> Any:
    """transformers' pure-Python BERT tokenizer (no Rust backend) on the tiny vocabulary."""
    import tempfile

    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    wp = wordpiece_tokenizer()
    folder = tempfile.mkdtemp(prefix="jaxpet_slow_wp_")
    with open(f"{folder}/vocab.txt", "w") as f:
        f.write("\n".join(wp.convert_ids_to_tokens(list(range(len(wp))))) + "\n")
    return BertTokenizerLegacy(vocab_file=f"{folder}/vocab.txt", do_lower_case=False)


# -- tokenize_parts ---------------------------------------------------------------------------

def test_tokenizer_without_mask_token_is_refused_with_its_class_name():
    with pytest.raises(ValueError, match=(
        r"^BertTokenizer has no mask token; cloze patterns need a masked-LM tokenizer "
        r"\(BERT, RoBERTa, XLM-R, ALBERT\)$"
    )):
        tokenize_parts(_bert(mask_token=None), ["Good food"])


def test_mask_inside_a_text_part_is_the_mask_token_among_the_words():
    tok = wordpiece_tokenizer()
    # the mask marker becomes [MASK] in place, the words around it keep their own ids
    assert tokenize_parts(tok, ["It was " + MASK + " ."]) == [
        tok.convert_tokens_to_ids(["It", "was", "[MASK]", "."])]


def test_generic_byte_level_tokenizer_gets_the_prefix_space_and_bare_mask_ids():
    tok = generic_byte_level()
    ids = tokenize_parts(tok, ["Good food", MASK, MASK + MASK, "Rain fell"])
    # every word-initial part is encoded with a leading space (Ġ tokens), as PET's
    # add_prefix_space=True does for any byte-level BPE, whatever the tokenizer class is named
    assert [tok.convert_ids_to_tokens(p) for p in ids] == [
        ["ĠGood", "Ġfood"], ["<mask>"], ["<mask>", "<mask>"], ["ĠRain", "Ġfell"]]


def test_parts_leave_the_tokenizers_own_truncation_and_padding_settings_alone():
    # a tokenizer.json may carry truncation/padding; encoding parts must neither cut a long part
    # nor drop these settings for the tokenizer's other users
    tok = copy.deepcopy(wordpiece_tokenizer())
    tok.backend_tokenizer.enable_truncation(max_length=2)
    tok.backend_tokenizer.enable_padding(length=6, pad_id=0, pad_token="[PAD]")
    before = (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding)
    assert tokenize_parts(tok, ["one two three four", "Good food"]) == [
        tok.convert_tokens_to_ids(["one", "two", "three", "four"]),
        tok.convert_tokens_to_ids(["Good", "food"])]
    assert (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding) == before


def test_pure_python_tokenizer_encodes_parts_without_special_tokens():
    tok = slow_wordpiece()
    assert getattr(tok, "backend_tokenizer", None) is None  # the slow path, not Rust
    assert tokenize_parts(tok, ["Good food", "It was " + MASK + " .", MASK]) == [
        tok.convert_tokens_to_ids(["Good", "food"]),
        tok.convert_tokens_to_ids(["It", "was", "[MASK]", "."]),
        tok.convert_tokens_to_ids(["[MASK]"])]


def test_pure_python_tokenizer_encodes_a_whole_pattern():
    tok = slow_wordpiece()
    # the layout comes from the slow tokenizer's own build_inputs_with_special_tokens
    enc = get_pvp("mnli", 1).encode([PAIR], tok, 16)
    assert _tokens(tok, enc) == ["[CLS]", "one", "two", "three", "?", "[SEP]", "[MASK]", ",",
                                 "Mary", "John", "[SEP]"]
    assert enc["token_type_ids"][0, :11].tolist() == [0] * 6 + [1] * 5


# -- special-token layouts read from the post-processor ---------------------------------------

def test_sentencepiece_pair_layouts_when_the_probe_text_is_two_tokens():
    # "x" is '▁' + 'x' for these vocabularies: the layout must still hold each segment once
    uni, alb = unigram_tokenizer(), albert_tokenizer()
    enc = get_pvp("mnli", 1).encode([PAIR], uni, 16)
    assert _tokens(uni, enc) == ["<s>", "▁one", "▁two", "▁three", "▁?", "</s>", "</s>",
                                 "<mask>", "▁,", "▁Mary", "▁John", "</s>"]
    assert enc["mask_positions"].tolist() == [[7]]
    enc = get_pvp("mnli", 1).encode([PAIR], alb, 16)
    assert _tokens(alb, enc) == ["[CLS]", "▁one", "▁two", "▁three", "▁?", "[SEP]", "[MASK]",
                                 "▁,", "▁mary", "▁john", "[SEP]"]
    assert enc["token_type_ids"][0, :11].tolist() == [0] * 6 + [1] * 5


# -- tokenize_filled / encode_segments --------------------------------------------------------

def test_filled_batch_keeps_each_examples_parts_apart():
    tok = wordpiece_tokenizer()

    def ids(*words: str) -> list[int]:
        return tok.convert_tokens_to_ids(list(words))

    filled = [
        ([Part("one two", True), Part("?")], [Part(MASK), Part("Mary", True)]),
        ([Part("three", True), Part("?")], [Part(MASK), Part("John Kim", True)]),
        ([Part("four five six", True), Part("")], [Part("")]),
    ]
    assert tokenize_filled(tok, filled) == [
        ([ids("one", "two"), ids("?")], [True, False], [ids("[MASK]"), ids("Mary")],
         [False, True]),
        ([ids("three"), ids("?")], [True, False], [ids("[MASK]"), ids("John", "Kim")],
         [False, True]),
        # empty parts are dropped and a second segment without text is absent, as in PET
        ([ids("four", "five", "six")], [True], None, None),
    ]


def test_guids_must_match_the_examples():
    # a missing guid would silently drop an example (and shift every error message's guid)
    filled = [([Part("Good food"), Part(MASK)], []), ([Part("Rain fell"), Part(MASK)], [])]
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        encode_segments(wordpiece_tokenizer(), filled, ["g-0"], 16)


# -- truncation -------------------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb,r", [(4, 2, 0), (2, 4, 0), (3, 3, 0), (5, 1, -3)])
def test_cut_counts_nothing_to_remove(sa, sb, r):
    # PET's loop runs max(r, 0) times: nothing fits the budget already, so nothing is cut
    assert cut_counts(sa, sb, r) == (0, 0)


def test_shortenable_flags_must_match_the_parts():
    # a flag list shorter than the parts would silently treat the last parts as fixed
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        truncate_pair([[1, 2], [3]], [True], None, None, 1, "g")
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        truncate_pair([[1, 2]], [True], [[3, 4], [5]], [True], 2, "g")


def test_unfittable_pattern_message_counts_fixed_and_shortenable_tokens():
    # a: 3 shortenable + 1 fixed, b: 2 shortenable + 2 fixed -> 3 fixed tokens, 5 shortenable
    with pytest.raises(ValueError, match=(
        r"^example 'g-1': the pattern's fixed parts need 3 tokens and only 2 fit "
        r"\(max_seq_length minus special tokens\) even after cutting all 5 shortenable tokens; "
        r"raise max_seq_length or shorten the fixed text$"
    )):
        truncate_pair([[1, 2, 3], [4]], [True, False], [[5, 6], [7, 8]], [True, False], 2, "g-1")


# -- assemble / mask positions ----------------------------------------------------------------

def test_assemble_pads_with_the_tokenizers_pad_id():
    tok = bpe_tokenizer()  # <pad> is 1, not 0
    enc = assemble(tok, [([5, 4], None)], 6, ["g"], 1)
    assert enc["input_ids"].tolist() == [[0, 5, 4, 2, 1, 1]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0]]


def test_assemble_pads_with_zero_when_the_tokenizer_has_no_pad_token():
    tok = _bert(pad_token=None)
    assert tok.pad_token_id is None
    enc = assemble(tok, [([5, 4], None)], 6, ["g"], 1)
    assert enc["input_ids"].tolist() == [[2, 5, 4, 3, 0, 0]]  # [CLS] 5 [MASK] [SEP] pad pad


def test_padding_with_the_mask_token_is_not_a_mask():
    # PET's GPT-2 setup reuses one token as mask and pad: only attended positions are masks
    tok = _bert(pad_token="[MASK]")
    assert tok.pad_token_id == tok.mask_token_id == 4
    enc = assemble(tok, [([5, 4], None)], 7, ["g"], 1)
    assert enc["input_ids"].tolist() == [[2, 5, 4, 3, 4, 4, 4]]
    assert enc["mask_positions"].tolist() == [[2]]


def test_mask_positions_of_a_batch_in_order_and_minus_one_padded():
    tok = wordpiece_tokenizer()  # [CLS] 2, [SEP] 3, [MASK] 4
    # rows with 2, 1 and 1 masks: positions in text order per row, -1 where a row has fewer
    enc = assemble(tok, [([5, 4, 4, 6], None), ([4, 7], None), ([8, 4], [9])], 8,
                   ["a", "b", "c"], 2)
    assert enc["input_ids"].tolist() == [[2, 5, 4, 4, 6, 3, 0, 0], [2, 4, 7, 3, 0, 0, 0, 0],
                                         [2, 8, 4, 3, 9, 3, 0, 0]]
    assert enc["token_type_ids"].tolist() == [[0] * 8, [0] * 8, [0, 0, 0, 0, 1, 1, 0, 0]]
    assert enc["mask_positions"].tolist() == [[2, 3], [1, -1], [2, -1]]


def test_assemble_refuses_ids_longer_than_max_seq_length():
    # 4 ids + [CLS] [SEP] in 5 slots: an error naming the example, not a silent cut
    with pytest.raises(ValueError, match=r"^example 'g-2': 6 tokens do not fit max_seq_length=5$"):
        assemble(wordpiece_tokenizer(), [([5, 4], None), ([5, 6, 7, 4], None)], 5,
                 ["g-1", "g-2"], 1)
