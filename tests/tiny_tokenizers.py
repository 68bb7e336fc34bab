"""Tiny offline tokenizers (WordPiece, byte-level BPE, SentencePiece-Unigram) for prompt tests.

Every word of PET's patterns and verbalizers, and of the test texts, is one token, so the
expected encodings can be written by hand.
"""

from __future__ import annotations

import re
import string
import tempfile
from functools import lru_cache

# Fixed text of PET's patterns, its verbalizer words, and the words the tests use.
PET_TEXT = """
News: Question: [ Category: ] ( ) - : It was . All in all, it was Just ! In summary, the
restaurant is " ? , / Similar sense of Does have the same meaning in both sentences?
Sense (1) (a) question: True or False? answer: true, false or neither? answer:
Question: Answer: Based on the previous passage, Based on the following passage,
Is it Is the correct answer Is a correct answer? or because so The pronoun '* *' refers to
In the previous sentence, the pronoun what does refer Answer: in the passage above
bad good terrible okay great World Sports Business Tech Society Science Health Education
Computer Entertainment Relationship Politics Wrong Right Maybe No Yes Ja Nein Oui Non
true false neither 2 b False True
"""
TEST_TEXT = """
Good food Nice place Rain fell The match Cats sleep Dogs bark Tom left He ran She ran
the man he him it they went home sun rose rain stopped ate lunch a big cat sat mat Kim
bank river money deposit Paris France London capital city is of Who where Obama visited
one two three four five six seven eight nine ten Mary John long text here more words
"? *he* '*he*' .
"""


def corpus_words(extra: str = "") -> list[str]:
    """Words as BERT's pre-tokenizer splits them (punctuation separate), in first-seen order."""
    words = re.findall(r"\w+|[^\w\s]", PET_TEXT + TEST_TEXT + extra)
    return list(dict.fromkeys(words))


@lru_cache(maxsize=4)
def wordpiece_tokenizer(extra: str = ""):
    """Cased BERT WordPiece: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then words, chars."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_letters + string.digits + string.punctuation)
    pieces = specials + corpus_words(extra) + chars + ["##" + c for c in string.ascii_letters]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    return BertTokenizer(vocab=vocab, do_lower_case=False)


@lru_cache(maxsize=4)
def bpe_tokenizer(extra: str = ""):
    """RoBERTa-style byte-level BPE: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4 (lstrip)."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    text = PET_TEXT + TEST_TEXT + extra
    # Each pre-tokenized word both word-initial and attached, so both forms become one token.
    lines = [w for t in text.split() for w in (t, " " + t)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        lines * 2, vocab_size=5000, min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    folder = tempfile.mkdtemp(prefix="jaxpet_bpe_")
    bpe.save_model(folder)
    return RobertaTokenizer(
        vocab=f"{folder}/vocab.json", merges=f"{folder}/merges.txt",
        mask_token=AddedToken("<mask>", lstrip=True, special=True, normalized=False),
    )


@lru_cache(maxsize=4)
def unigram_tokenizer(extra: str = ""):
    """XLM-R-style SentencePiece Unigram: <s> 0, <pad> 1, </s> 2, <unk> 3, words as '▁word'."""
    from transformers import XLMRobertaTokenizer

    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    text = PET_TEXT + TEST_TEXT + extra
    words = list(dict.fromkeys(text.split()))
    pieces = [("▁" + w, -1.0) for w in words] + [(w, -1.5) for w in words]
    chars = [(c, -10.0) for c in string.ascii_letters + string.digits + string.punctuation]
    vocab = list(dict(specials + pieces + chars + [("▁", -5.0), ("<mask>", 0.0)]).items())
    return XLMRobertaTokenizer(vocab=vocab)


@lru_cache(maxsize=4)
def albert_tokenizer(extra: str = ""):
    """ALBERT-style SentencePiece Unigram (lower-cased): <pad> 0, <unk> 1, [CLS] 2, [SEP] 3,
    [MASK] 4."""
    from transformers import AlbertTokenizer

    specials = [("<pad>", 0.0), ("<unk>", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    words = list(dict.fromkeys(re.findall(r"\w+|[^\w\s]", (PET_TEXT + TEST_TEXT + extra).lower())))
    pieces = [("▁" + w, -1.0) for w in words] + [(w, -1.5) for w in words]
    chars = [(c, -10.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    vocab = list(dict(specials + pieces + chars + [("▁", -5.0)]).items())
    return AlbertTokenizer(vocab=vocab)
