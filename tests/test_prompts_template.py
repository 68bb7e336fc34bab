"""Config-defined patterns: parsing, encodings equal to the built-in PET PVPs, errors."""

import re

import numpy as np
import pytest
from tiny_tokenizers import bpe_tokenizer, wordpiece_tokenizer

from jaxpet.data.example import Example
from jaxpet.prompts import get_pvp
from jaxpet.prompts.multitoken import encode_multi_token_decoding
from jaxpet.prompts.template import TemplateError, parse_template, pvp_from_config

MNLI = ["contradiction", "entailment", "neutral"]
# templates that restate built-in PET patterns: (task, pattern id, labels, template)
EQUIVALENT = [
    ("mnli", 0, MNLI, '" {text_a:shorten:nopunc} " ? || {mask} , " {text_b:shorten} "'),
    ("mnli", 1, MNLI, "{text_a:shorten:nopunc} ? || {mask} , {text_b:shorten}"),
    ("yelp-polarity", 1, ["1", "2"], "{text_a:shorten} . All in all, it was {mask} ."),
    ("yelp-polarity", 3, ["1", "2"], "{text_a:shorten} || In summary, the restaurant is {mask} ."),
    ("agnews", 4, ["1", "2", "3", "4"], "[ Category: {mask} ] {text_a:shorten} {text_b:shorten}"),
    ("wic", 0, ["F", "T"],
     '" {text_a:shorten} " / " {text_b:shorten} " Similar sense of "{meta.word}"? {mask} .'),
]
EXAMPLES = [
    Example("train-0", "one two three four five six seven eight nine ten.",
            "Mary John Kim Tom sun rain", label="2", meta={"word": "bank"}),
    Example("train-1", "Rain fell.", "Tom left.", label="1", meta={"word": "bank"}),
]


@pytest.mark.parametrize("task,pid,labels,template", EQUIVALENT, ids=[f"{t}-{p}" for t, p, *_ in
                                                                      EQUIVALENT])
@pytest.mark.parametrize("tok_fn", [wordpiece_tokenizer, bpe_tokenizer])
@pytest.mark.parametrize("max_len", [40, 18])
def test_template_equals_builtin(task, pid, labels, template, tok_fn, max_len):
    tok = tok_fn()
    builtin = get_pvp(task, pid)
    exs = [Example(e.guid, e.text_a, e.text_b, labels[int(e.label) - 1], e.meta) for e in EXAMPLES]
    (pvp,) = pvp_from_config("tmpl-" + task, labels, [template],
                             {lab: builtin.verbalize(lab) for lab in labels}, register=False)
    got, want = pvp.encode(exs, tok, max_len), builtin.encode(exs, tok, max_len)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(pvp.verbalizer_ids(tok), builtin.verbalizer_ids(tok))


def test_config_pvps_are_registered_with_per_pattern_verbalizers():
    pvps = pvp_from_config("my-sentiment", ["neg", "pos"],
                           ["{text_a:shorten} It was {mask} .", "Just {mask*2} ! || {text_a}"],
                           [{"neg": "bad", "pos": "good"}, {"neg": ["terrible", "bad"],
                                                            "pos": "great"}])
    assert get_pvp("my-sentiment", 1) is pvps[1]
    tok = wordpiece_tokenizer()
    assert get_pvp("my-sentiment", 1).verbalizer_ids(tok).tolist() == [
        tok.convert_tokens_to_ids(["terrible", "bad"]), [tok.convert_tokens_to_ids("great"), -1]]
    ex = Example("x-1", "Good food.", label="pos")
    enc = get_pvp("my-sentiment", 1).encode([ex], tok, 16)
    n = int(enc["attention_mask"][0].sum())
    assert tok.convert_ids_to_tokens(enc["input_ids"][0, :n].tolist()) == \
        "[CLS] Just [MASK] [MASK] ! [SEP] Good food . [SEP]".split()
    assert enc["mask_positions"].tolist() == [[2, 3]] and enc["labels"].tolist() == [1]
    override = get_pvp("my-sentiment", 0, verbalizer={"neg": "okay", "pos": "great"})
    assert override.verbalizer_ids(tok)[:, 0].tolist() == tok.convert_tokens_to_ids(
        ["okay", "great"])
    with pytest.raises(KeyError, match=r"\[0, 1\]"):
        get_pvp("my-sentiment", 2)


def test_mask_glued_to_text_and_multi_token_masks():
    tok = bpe_tokenizer()
    (pvp,) = pvp_from_config(
        "glued", ["0", "1"], ["{text_a:shorten} The pronoun refers to {mask}."],
        {"0": "Tom", "1": "London city"}, register=False)
    ex = Example("g-1", "Rain fell.", label="1")
    dec = encode_multi_token_decoding(pvp, [ex], tok, 20)
    row = dec["input_ids"][0, 1][dec["attention_mask"][0, 1] > 0]
    got = tok.convert_ids_to_tokens(row.tolist())
    assert got == "<s> ĠRain Ġfell . ĠThe Ġpronoun Ġrefers Ġto <mask> <mask> . </s>".split()
    assert dec["labels"].tolist() == [1]


def test_parse_parts_and_escapes():
    a, b = parse_template('{{x}} {text_a:shorten} said "{meta.word}"? || {mask}.')
    assert a[0] == ["{x}"] and a[2][0] == 'said "' and a[2][2] == '"?'
    assert a[1][0].shortenable and a[2][1].field == "word"
    assert len(b) == 1 and b[0][0].source == "mask" and b[0][1] == "."


@pytest.mark.parametrize("template,needle", [
    ("{text_c} {mask}", "{text_c}"),
    ("{text_a} It was .", "no {mask}"),
    ("{text_a:shorten}. {mask}", "separated"),
    ("a || b || {mask}", "3 segments"),
    ("{mask:shorten} x", "no modifiers"),
    ("{text_a:short} {mask}", "'short'"),
    ("{text_a} { {mask}", "unbalanced"),
    ("{mask*0}", "zero masks"),
    ("{meta.} {mask}", "{meta.}"),
])
def test_template_errors_name_template_and_slot(template, needle):
    with pytest.raises(TemplateError, match=re.escape(needle)) as err:
        parse_template(template)
    assert template in str(err.value) and needle in str(err.value)


def test_missing_fields_name_the_example():
    (pvp,) = pvp_from_config("needs-meta", ["0", "1"], ["{text_a} {meta.word} {mask} {text_b}"],
                             {"0": "No", "1": "Yes"}, register=False)
    tok = wordpiece_tokenizer()
    with pytest.raises(ValueError, match="m-1.*'word'"):
        pvp.encode([Example("m-1", "Rain fell.", "Tom left.")], tok, 32)
    with pytest.raises(ValueError, match="m-2.*text_b"):
        pvp.encode([Example("m-2", "Rain fell.", meta={"word": "bank"})], tok, 32)
