"""Every built-in PVP encodes hand-written examples to the token sequence PET's pattern gives."""

import pytest
from tiny_tokenizers import (
    albert_tokenizer,
    bpe_tokenizer,
    unigram_tokenizer,
    wordpiece_tokenizer,
)

from jaxpet.data.example import Example
from jaxpet.prompts import get_pvp
from jaxpet.prompts.registry import available

PAIR = Example("dev-1", "Cats sleep", "Dogs bark", label="1")
YELP = Example("dev-2", "Good food.", label="2")
NLI = Example("dev-3", "Rain fell.", "The match.", label="neutral")
XST = Example("dev-4", "Who went", "Tom left.", label="FAVOR")
RTE = Example("dev-5", "Tom left.", "He ran.", label="entailment")
CB = Example("dev-5b", "Tom left.", "He ran.", label="neutral")
BOOLQ = Example("dev-6", "Rain fell.", "Who left", label="True")
MULTIRC = Example("dev-7", "Rain fell.", "Who left", label="1", meta={"answer": "Tom"})
WIC = Example("dev-8", "Rain fell.", "Tom left.", label="T", meta={"word": "bank"})
COPA_C = Example("dev-9", "Rain fell.", label="1", meta={
    "choice1": "The sun rose.", "choice2": "Rain stopped.", "question": "cause"})
COPA_E = Example("dev-9e", "Rain fell.", label="0", meta={
    "choice1": "The sun rose.", "choice2": "Rain stopped.", "question": "effect"})
WSC = Example("val-10", "Tom left because he ran", label="True", meta={
    "span1_text": "Tom", "span2_text": "he", "span2_index": 3})
RECORD = Example("dev-11", "Obama visited Paris.", "@placeholder is the capital", label="1", meta={
    "candidates": ["Paris", "France", "London city"], "answers": ["Paris"]})

# (task, pattern, example, WordPiece tokens, byte-level BPE tokens); `|` marks the segment
# boundary: the special tokens there and the token type ids are checked separately.
CASES = [
    ("yelp-polarity", 0, YELP, "It was [MASK] . Good food .", "ĠIt Ġwas <mask> Ġ. ĠGood Ġfood ."),
    ("yelp-polarity", 1, YELP, "Good food . . All in all , it was [MASK] .",
     "ĠGood Ġfood . Ġ. ĠAll Ġin Ġall , Ġit Ġwas <mask> Ġ."),
    ("yelp-polarity", 2, YELP, "Just [MASK] ! | Good food .", "ĠJust <mask> Ġ! | ĠGood Ġfood ."),
    ("yelp-polarity", 3, YELP, "Good food . | In summary , the restaurant is [MASK] .",
     "ĠGood Ġfood . | ĠIn Ġsummary , Ġthe Ġrestaurant Ġis <mask> Ġ."),
    ("agnews", 0, PAIR, "[MASK] : Cats sleep Dogs bark", "<mask> Ġ: ĠCats Ġsleep ĠDogs Ġbark"),
    ("agnews", 1, PAIR, "[MASK] News : Cats sleep Dogs bark",
     "<mask> ĠNews : ĠCats Ġsleep ĠDogs Ġbark"),
    ("agnews", 2, PAIR, "Cats sleep ( [MASK] ) Dogs bark",
     "ĠCats Ġsleep Ġ( <mask> Ġ) ĠDogs Ġbark"),
    ("agnews", 3, PAIR, "Cats sleep Dogs bark ( [MASK] )",
     "ĠCats Ġsleep ĠDogs Ġbark Ġ( <mask> Ġ)"),
    ("agnews", 4, PAIR, "[ Category : [MASK] ] Cats sleep Dogs bark",
     "Ġ[ ĠCategory : <mask> Ġ] ĠCats Ġsleep ĠDogs Ġbark"),
    ("agnews", 5, PAIR, "[MASK] - Cats sleep Dogs bark", "<mask> Ġ- ĠCats Ġsleep ĠDogs Ġbark"),
    ("yahoo", 1, PAIR, "[MASK] Question : Cats sleep Dogs bark",
     "<mask> ĠQuestion : ĠCats Ġsleep ĠDogs Ġbark"),
    ("mnli", 0, NLI, '" Rain fell " ? | [MASK] , " The match . "',
     'Ġ" ĠRain Ġfell Ġ" Ġ? | <mask> Ġ, Ġ" ĠThe Ġmatch . Ġ"'),
    ("mnli", 1, NLI, "Rain fell ? | [MASK] , The match .",
     "ĠRain Ġfell Ġ? | <mask> Ġ, ĠThe Ġmatch ."),
    ("xstance", 0, XST, '" Who went " | [MASK] . " Tom left . "',
     'Ġ" ĠWho Ġwent Ġ" | <mask> Ġ. Ġ" ĠTom Ġleft . Ġ"'),
    ("xstance", 1, XST, "Who went | [MASK] . Tom left .", "ĠWho Ġwent | <mask> Ġ. ĠTom Ġleft ."),
    ("rte", 0, RTE, '" He ran " ? | [MASK] , " Tom left . "',
     'Ġ" ĠHe Ġran Ġ" Ġ? | <mask> Ġ, Ġ" ĠTom Ġleft . Ġ"'),
    ("rte", 1, RTE, "He ran ? | [MASK] , Tom left .", "ĠHe Ġran Ġ? | <mask> Ġ, ĠTom Ġleft ."),
    ("rte", 2, RTE, '" He ran " ? | [MASK] . " Tom left . "',
     'Ġ" ĠHe Ġran Ġ" Ġ? | <mask> Ġ. Ġ" ĠTom Ġleft . Ġ"'),
    ("rte", 3, RTE, "He ran ? | [MASK] . Tom left .", "ĠHe Ġran Ġ? | <mask> Ġ. ĠTom Ġleft ."),
    ("rte", 4, RTE, "Tom left . question : He ran . True or False ? answer : [MASK]",
     "ĠTom Ġleft . Ġquestion : Ġ ĠHe Ġran . ĠTrue Ġor ĠFalse ? Ġanswer : <mask>"),
    ("cb", 4, CB, "Tom left . question : He ran . true , false or neither ? answer : [MASK]",
     "ĠTom Ġleft . Ġquestion : Ġ ĠHe Ġran . Ġtrue , Ġfalse Ġor Ġneither ? Ġanswer : <mask>"),
    ("boolq", 0, BOOLQ, "Rain fell . . Question : Who left ? Answer : [MASK] .",
     "ĠRain Ġfell . Ġ. ĠQuestion : Ġ ĠWho Ġleft Ġ? ĠAnswer : Ġ <mask> Ġ."),
    ("boolq", 2, BOOLQ, "Rain fell . . Based on the previous passage , Who left ? [MASK] .",
     "ĠRain Ġfell . Ġ. ĠBased Ġon Ġthe Ġprevious Ġpassage , Ġ ĠWho Ġleft Ġ? <mask> Ġ."),
    ("boolq", 4, BOOLQ, "Based on the following passage , Who left ? [MASK] . Rain fell .",
     "ĠBased Ġon Ġthe Ġfollowing Ġpassage , Ġ ĠWho Ġleft Ġ? <mask> Ġ. ĠRain Ġfell ."),
    ("multirc", 0, MULTIRC, "Rain fell . . Question : Who left ? Is it Tom ? [MASK] .",
     "ĠRain Ġfell . Ġ. ĠQuestion : Ġ ĠWho Ġleft Ġ? ĠIs Ġit Ġ ĠTom Ġ? <mask> Ġ."),
    ("multirc", 1, MULTIRC,
     'Rain fell . . Question : Who left ? Is the correct answer " Tom " ? [MASK] .',
     'ĠRain Ġfell . Ġ. ĠQuestion : Ġ ĠWho Ġleft Ġ? ĠIs Ġthe Ġcorrect Ġanswer Ġ" ĠTom Ġ"? '
     '<mask> Ġ.'),
    ("multirc", 2, MULTIRC,
     'Rain fell . . Based on the previous passage , Who left ? Is " Tom " a correct answer ? '
     '[MASK] .',
     'ĠRain Ġfell . Ġ. ĠBased Ġon Ġthe Ġprevious Ġpassage , Ġ ĠWho Ġleft Ġ? ĠIs Ġ" ĠTom Ġ" Ġa '
     'Ġcorrect Ġanswer ? <mask> Ġ.'),
    ("multirc", 3, MULTIRC, "Rain fell . Who left - [ [MASK] ] Tom",
     "ĠRain Ġfell . ĠWho Ġleft Ġ- Ġ[ <mask> Ġ] ĠTom"),
    ("wic", 0, WIC, '" Rain fell . " / " Tom left . " Similar sense of " bank " ? [MASK] .',
     'Ġ" ĠRain Ġfell . Ġ" Ġ/ Ġ" ĠTom Ġleft . Ġ" ĠSimilar Ġsense Ġof Ġ" bank "? <mask> Ġ.'),
    ("wic", 1, WIC, "Rain fell . Tom left . Does bank have the same meaning in both sentences ? "
     "[MASK]", "ĠRain Ġfell . ĠTom Ġleft . ĠDoes Ġbank Ġhave Ġthe Ġsame Ġmeaning Ġin Ġboth "
     "Ġsentences ? <mask>"),
    ("wic", 2, WIC, 'bank . Sense ( 1 ) ( a ) " Rain fell . " ( [MASK] ) " Tom left . "',
     'Ġbank Ġ. ĠSense Ġ( 1 ) Ġ( a ) Ġ" ĠRain Ġfell . Ġ" Ġ( <mask> Ġ) Ġ" ĠTom Ġleft . Ġ"'),
    ("copa", 0, COPA_C,
     '" the sun rose " or " rain stopped " ? Rain fell because [MASK] [MASK] [MASK] .',
     'Ġ" Ġthe Ġsun Ġrose Ġ" Ġor Ġ" Ġrain Ġstopped Ġ"? ĠRain Ġfell Ġbecause <mask> <mask> <mask> '
     'Ġ.'),
    ("copa", 1, COPA_E, "the sun rose or rain stopped ? Rain fell , so [MASK] [MASK] [MASK] .",
     "Ġthe Ġsun Ġrose Ġor Ġrain Ġstopped Ġ? ĠRain Ġfell Ġ, Ġso <mask> <mask> <mask> Ġ."),
    ("wsc", 0, WSC, "Tom left because * he * ran The pronoun ' * he * ' refers to [MASK] [MASK] .",
     "ĠTom Ġleft Ġbecause Ġ* he * Ġran ĠThe Ġpronoun Ġ'* he *' Ġrefers Ġto <mask> <mask> ."),
    ("wsc", 1, WSC, "Tom left because * he * ran In the previous sentence , the pronoun ' * he * ' "
     "refers to [MASK] [MASK] .", "ĠTom Ġleft Ġbecause Ġ* he * Ġran ĠIn Ġthe Ġprevious Ġsentence "
     ", Ġthe Ġpronoun Ġ'* he *' Ġrefers Ġto <mask> <mask> ."),
    ("wsc", 2, WSC, "Tom left because * he * ran Question : In the passage above , what does the "
     "pronoun ' * he * ' refer to ? Answer : [MASK] [MASK] .",
     "ĠTom Ġleft Ġbecause Ġ* he * Ġran ĠQuestion : ĠIn Ġthe Ġpassage Ġabove , Ġwhat Ġdoes Ġthe "
     "Ġpronoun Ġ'* he *' Ġrefer Ġto ? ĠAnswer : Ġ <mask> <mask> ."),
    ("record", 0, RECORD, "Obama visited Paris . [MASK] [MASK] is the capital",
     "ĠObama Ġvisited ĠParis . <mask> <mask> Ġis Ġthe Ġcapital"),
]
# Tasks that share another task's patterns: (task, pattern) -> the case to reuse.
ALIASES = {
    "yelp-full": "yelp-polarity", "yahoo": "agnews", "mnli-mm": "mnli", "xstance-de": "xstance",
    "xstance-fr": "xstance", "ax-b": "rte", "ax-g": "rte", "cb": "rte",
}


def _all_cases():
    direct = {(t, p): (ex, w, b) for t, p, ex, w, b in CASES}
    cases = []
    for task, pids in available().items():
        for pid in pids:
            if (task, pid) in direct:
                cases.append((task, pid, *direct[(task, pid)]))
                continue
            base = ALIASES.get(task, task)
            # a pattern id with the same parts as another id of the task (mnli 2 = 0, ...)
            twins = {"mnli": {2: 0, 3: 1}, "xstance": {2: 0, 4: 0, 3: 1, 5: 1},
                     "boolq": {1: 0, 3: 2, 5: 4}}.get(base, {})
            ex, w, b = direct.get((base, pid)) or direct[(base, twins[pid])]
            if task == "cb" and pid < 4:
                ex = CB
            if task == "yahoo" and pid == 1:
                w, b = direct[("yahoo", 1)][1:]
            cases.append((task, pid, ex, w, b))
    return cases


ALL_CASES = _all_cases()
CASE_IDS = [f"{c[0]}-{c[1]}" for c in ALL_CASES]


def _specials(tok, pair: bool):
    if tok.cls_token == "[CLS]":
        return ["[CLS]"], ["[SEP]"] if pair else [], ["[SEP]"]
    return ["<s>"], ["</s>", "</s>"] if pair else [], ["</s>"]


def _check(tok, task, pid, ex, expected, bert_types):
    pvp = get_pvp(task, pid)
    seq = 40
    enc = pvp.encode([ex], tok, seq)
    n = int(enc["attention_mask"][0].sum())
    got = tok.convert_ids_to_tokens(enc["input_ids"][0, :n].tolist())
    seg_a, _, seg_b = expected.partition(" | ")
    pair = "|" in expected
    pre, mid, suf = _specials(tok, pair)
    want = pre + seg_a.split() + mid + (seg_b.split() if pair else []) + suf
    assert got == want, f"{task} pattern {pid}"
    assert (enc["input_ids"][0, n:] == tok.pad_token_id).all()
    types = enc["token_type_ids"][0, :n].tolist()
    if bert_types and pair:
        len_a = len(pre) + len(seg_a.split()) + len(mid)
        assert types == [0] * len_a + [1] * (n - len_a)
    else:
        assert types == [0] * n
    masks = [i for i, t in enumerate(want) if t == tok.mask_token]
    k = enc["mask_positions"].shape[1]
    assert enc["mask_positions"][0].tolist() == masks + [-1] * (k - len(masks))
    assert enc["labels"][0] == pvp.labels.index(ex.label)


@pytest.mark.parametrize("task,pid,ex,wp,_bpe", ALL_CASES, ids=CASE_IDS)
def test_wordpiece_matches_pet(task, pid, ex, wp, _bpe):
    _check(wordpiece_tokenizer(), task, pid, ex, wp, bert_types=True)


@pytest.mark.parametrize("task,pid,ex,_wp,bpe", ALL_CASES, ids=CASE_IDS)
def test_byte_level_bpe_matches_pet(task, pid, ex, _wp, bpe):
    _check(bpe_tokenizer(), task, pid, ex, bpe, bert_types=False)


def test_sentencepiece_unigram_pair_layout():
    tok = unigram_tokenizer()
    enc = get_pvp("mnli", 1).encode([NLI], tok, 20)
    n = int(enc["attention_mask"][0].sum())
    got = tok.convert_ids_to_tokens(enc["input_ids"][0, :n].tolist())
    assert got == ["<s>", "▁Rain", "▁fell", "▁?", "</s>", "</s>", "<mask>", "▁,", "▁The", "▁match",
                   ".", "</s>"]
    assert enc["token_type_ids"][0].tolist() == [0] * 20


def test_albert_pair_layout_and_part_whitespace():
    tok = albert_tokenizer()
    enc = get_pvp("rte", 3).encode([RTE], tok, 20)
    n = int(enc["attention_mask"][0].sum())
    assert tok.convert_ids_to_tokens(enc["input_ids"][0, :n].tolist()) == [
        "[CLS]", "▁he", "▁ran", "▁?", "[SEP]", "[MASK]", "▁.", "▁tom", "▁left", ".", "[SEP]"]
    assert enc["token_type_ids"][0, :n].tolist() == [0] * 5 + [1] * 6
    # parts with surrounding spaces (" question: ") add no stray "▁" pieces
    enc = get_pvp("rte", 4).encode([RTE], tok, 24)
    n = int(enc["attention_mask"][0].sum())
    assert tok.convert_ids_to_tokens(enc["input_ids"][0, :n].tolist()) == [
        "[CLS]", "▁tom", "▁left", ".", "▁question", ":", "▁he", "▁ran", ".", "▁true", "▁or",
        "▁false", "?", "▁answer", ":", "[MASK]", "[SEP]"]


VERBALIZERS = {
    ("agnews", 0): ["World", "Sports", "Business", "Tech"],
    ("yahoo", 3): ["Society", "Science", "Health", "Education", "Computer", "Sports", "Business",
                   "Entertainment", "Relationship", "Politics"],
    ("yelp-polarity", 0): ["bad", "good"],
    ("yelp-full", 2): ["terrible", "bad", "okay", "good", "great"],
    ("mnli", 0): ["Wrong", "Right", "Maybe"], ("mnli", 3): ["No", "Yes", "Maybe"],
    ("xstance", 1): ["Ja", "Nein"], ("xstance", 2): ["Yes", "No"], ("xstance", 5): ["Oui", "Non"],
    ("rte", 0): ["Yes", "No"], ("rte", 4): ["true", "false"], ("ax-g", 3): ["Yes", "No"],
    ("cb", 1): ["Yes", "No", "Maybe"], ("cb", 4): ["true", "false", "neither"],
    ("boolq", 0): ["No", "Yes"], ("boolq", 5): ["false", "true"],
    ("multirc", 2): ["No", "Yes"], ("multirc", 3): ["False", "True"],
    ("wic", 1): ["No", "Yes"], ("wic", 2): ["2", "b"],
}


@pytest.mark.parametrize("key", list(VERBALIZERS), ids=[f"{t}-{p}" for t, p in VERBALIZERS])
def test_verbalizer_ids(key):
    pvp = get_pvp(*key)
    for tok, prefix in ((wordpiece_tokenizer(), ""), (bpe_tokenizer(), "Ġ")):
        ids = pvp.verbalizer_ids(tok)
        want = tok.convert_tokens_to_ids([prefix + w for w in VERBALIZERS[key]])
        assert ids.dtype.name == "int32" and ids.shape == (len(want), 1)
        assert ids[:, 0].tolist() == want
