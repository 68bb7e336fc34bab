"""`jaxpet init-model FAMILY OUT_DIR`: a random checkpoint of any family with a tokenizer, no torch.

The tokenizer is trained with the `tokenizers` package on the built-in sentences below (which
hold the demo's pattern and label words, so its single-token verbalizers work), wrapped in the
family's transformers tokenizer class; the weights come from jaxpet's own Flax initialisers and
are written with `jaxpet.models.save_pretrained`, so transformers (PyTorch) loads the folder too.
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, ByteLevelBPETokenizer, SentencePieceUnigramTokenizer

from jaxpet.models.config import EncoderConfig
from jaxpet.models.t5_config import T5Config

# transformers and JAX (with jaxpet's model code) are imported inside the functions that use
# them: each takes seconds to load, and `jaxpet init-model --help` runs this module's main.

FAMILIES = ("bert", "roberta", "xlm-roberta", "albert", "t5")
# Encoder sizes per --size: hidden width, layers, heads, MLP width, max positions.
ENCODER_SIZES = {"tiny": (32, 2, 4, 64, 128), "small": (128, 4, 4, 512, 512)}
# T5 sizes per --size: d_model, layers, heads, d_kv, d_ff.
T5_SIZES = {"tiny": (32, 2, 4, 8, 64), "small": (128, 4, 4, 32, 512)}

# What the tokenizer is trained on: the demo's AG News patterns and label words, PET's common
# verbalizer words, the text-to-text prefixes, and some plain text.
SENTENCES = [
    "World Sports Business Tech Science Health Politics Entertainment",
    "News: Question: Category: It was great. All in all, it was good. In summary, it was bad.",
    "Just terrible! Just okay. Yes No Maybe True False Right Wrong neither entailment",
    "A [Category: World] news story about the stock market, the match and the new phone.",
    "sentiment: positive negative. The food was great and the service was terrible.",
    "translate English to German: That is good. summarize: the team won the final game.",
    "question: What is the capital of France? context: Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog while the market rose and shares fell.",
    "Oil prices rise as the company reports record profits; the league opens its season.",
    "Scientists find water on a distant planet; a new chip makes computers twice as fast.",
]


def _words(lowercase: bool = False) -> list[str]:
    text = " ".join(SENTENCES)
    words = re.findall(r"\w+|[^\w\s]", text.lower() if lowercase else text)
    return list(dict.fromkeys(words))


def bert_tokenizer() -> Any:
    """Cased WordPiece: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, every corpus word whole,
    then single characters (word-initial and '##' continuations) for any other word. Built
    from the word list rather than trained, so the same command writes the same vocabulary."""
    from transformers import BertTokenizer  # deferred: seconds to load (see the top)

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = specials + _words() + list(chars) + ["##" + c for c in chars]
    return BertTokenizer(vocab={piece: i for i, piece in enumerate(dict.fromkeys(pieces))},
                         do_lower_case=False)


def roberta_tokenizer() -> Any:
    """Byte-level BPE: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4 (swallows the space before)."""
    from transformers import RobertaTokenizer  # deferred: seconds to load (see the top)

    # each word both sentence-initial and after a space, so both forms become one token
    lines = [form for word in _words() for form in (word, " " + word)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines * 2, vocab_size=3000, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder = tempfile.mkdtemp(prefix="jaxpet_bpe_")
    bpe.save_model(folder)
    return RobertaTokenizer(
        vocab=f"{folder}/vocab.json", merges=f"{folder}/merges.txt",
        mask_token=AddedToken("<mask>", lstrip=True, special=True, normalized=False))


def _unigram_pieces(lowercase: bool) -> list[tuple[str, float]]:
    """Whole words (word-initial '▁word' preferred), then characters as a fallback."""
    words = _words(lowercase)
    pieces = [("▁" + w, -1.0) for w in words] + [(w, -1.5) for w in words]
    letters = string.ascii_lowercase if lowercase else string.ascii_letters
    chars = [(c, -10.0) for c in letters + string.digits + string.punctuation]
    return pieces + chars + [("▁", -5.0)]


def xlm_roberta_tokenizer() -> Any:
    """SentencePiece Unigram: <s> 0, <pad> 1, </s> 2, <unk> 3, ..., <mask> last."""
    from transformers import XLMRobertaTokenizer  # deferred: seconds to load (see the top)

    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = list(dict(specials + _unigram_pieces(False) + [("<mask>", 0.0)]).items())
    return XLMRobertaTokenizer(vocab=vocab)


def albert_tokenizer() -> Any:
    """Lower-cased SentencePiece Unigram: <pad> 0, <unk> 1, [CLS] 2, [SEP] 3, [MASK] 4."""
    from transformers import AlbertTokenizer  # deferred: seconds to load (see the top)

    specials = [("<pad>", 0.0), ("<unk>", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    vocab = list(dict(specials + _unigram_pieces(True)).items())
    return AlbertTokenizer(vocab=vocab)


def t5_tokenizer(vocab_size: int = 160) -> Any:
    """SentencePiece Unigram trained on the sentences: <pad> 0, </s> 1, <unk> 2, then 100
    sentinels in T5's order (<extra_id_0> is the last id)."""
    from transformers import T5Tokenizer  # deferred: seconds to load (see the top)

    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(SENTENCES * 4, vocab_size=vocab_size,
                           special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    trained = [tuple(x) for x in json.loads(sp._tokenizer.to_str())["model"]["vocab"]]
    # the trainer orders (and scores) tied pieces differently in every process: keep its three
    # specials first, then the pieces by text with one score each, so that the same command
    # writes the same vocabulary and the same segmentation
    specials, pieces = trained[:3], sorted(piece for piece, _ in trained[3:])
    vocab = specials + [(piece, -float(len(piece) == 1) - 1.0) for piece in pieces]
    sentinels = [f"<extra_id_{i}>" for i in range(100)]
    return T5Tokenizer(vocab=vocab + [(s, 0.0) for s in reversed(sentinels)], extra_ids=0,
                       additional_special_tokens=sentinels)


TOKENIZERS = {"bert": bert_tokenizer, "roberta": roberta_tokenizer,
              "xlm-roberta": xlm_roberta_tokenizer, "albert": albert_tokenizer,
              "t5": t5_tokenizer}


def _encoder_config(family: str, size: str, tokenizer: Any) -> EncoderConfig:
    hidden, layers, heads, mlp, positions = ENCODER_SIZES[size]
    cumsum = family in ("roberta", "xlm-roberta")
    return EncoderConfig(
        model_type=family, vocab_size=len(tokenizer), hidden_size=hidden,
        embedding_size=hidden // 2 if family == "albert" else hidden,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
        # RoBERTa-style positions start after the pad id, as the real checkpoints' 514
        max_position_embeddings=positions + (tokenizer.pad_token_id + 1 if cumsum else 0),
        type_vocab_size=1 if cumsum else 2, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if cumsum else None,
        eos_token_id=tokenizer.eos_token_id if cumsum else None,
        hidden_act="gelu_new" if family == "albert" else "gelu")


def _t5_config(size: str, tokenizer: Any) -> T5Config:
    d_model, layers, heads, d_kv, d_ff = T5_SIZES[size]
    return T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_kv, d_ff=d_ff,
                    num_layers=layers, num_decoder_layers=layers, num_heads=heads,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)


def random_model(family: str, size: str = "tiny", seed: int = 0) -> Any:
    """A randomly initialised `family` model of `size` with its tokenizer, as a
    `jaxpet.models.LoadedModel` (MLM head for encoders, seq2seq for T5); the same arguments
    give the same weights."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(ENCODER_SIZES)}")
    # deferred: JAX and the model code take seconds to load (see the top)
    import jax

    from jaxpet.models.pretrained import LoadedModel

    tokenizer = TOKENIZERS[family]()
    if family == "t5":
        from jaxpet.models.t5 import T5, init_t5_params  # deferred: loads JAX (see the top)

        config = _t5_config(size, tokenizer)
        return LoadedModel(T5(config), init_t5_params(config, jax.random.key(seed)), config,
                           tokenizer)
    from jaxpet.models.pretrained import init_model as random_encoder  # deferred: loads JAX

    lm = random_encoder(_encoder_config(family, size, tokenizer), head="mlm", seed=seed)
    lm.tokenizer = tokenizer
    return lm


def init_model(family: str, out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Writes `random_model(family, size, seed)` and its tokenizer to `out_dir` in Hugging Face
    layout; returns the folder."""
    from jaxpet.models.pretrained import save_pretrained  # deferred: loads JAX (see the top)

    return Path(save_pretrained(random_model(family, size, seed), out_dir))


def main(argv: Sequence[str]) -> int:
    """`jaxpet init-model FAMILY OUT_DIR [--size tiny] [--seed 0]`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="jaxpet init-model",
        description="Write a randomly initialised checkpoint with a small tokenizer, in Hugging "
                    "Face layout, for runs and tests without a network (model.name=OUT_DIR). "
                    "Needs no torch.")
    parser.add_argument("family", choices=FAMILIES, help="model family")
    parser.add_argument("out_dir", help="folder to write (config.json, model.safetensors, "
                                        "tokenizer files)")
    parser.add_argument("--size", choices=tuple(ENCODER_SIZES), default="tiny",
                        help="tiny: width 32, 2 layers; small: width 128, 4 layers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(list(argv))
    out = Path(args.out_dir)
    # the checkpoint replaces the folder whole: never a folder that holds something else
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        print(f"jaxpet init-model: {out} exists and holds no model (no config.json); it would "
              "be replaced whole. Name a new or empty folder.", file=sys.stderr)
        return 2
    folder = init_model(args.family, args.out_dir, args.size, args.seed)
    print(f"wrote a random {args.size} {args.family} checkpoint to {folder} "
          f"(use it with model.name={folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
