"""Builders of tiny random T5 v1.0 / v1.1 HF checkpoints and an offline T5 tokenizer (tests)."""

from __future__ import annotations

import json
import os

TOKENIZER_TEXTS = [
    "translate English to German: That is good.",
    "summarize: studies have shown that owning a dog is good for you",
    "mnli hypothesis: The cat sat. premise: A cat was sitting on the mat.",
    "stsb sentence1: A man is playing a guitar. sentence2: A person plays an instrument.",
    "question: What is the capital of France? context: Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "entailment neutral contradiction positive negative great terrible",
] * 4


def make_t5_tokenizer(out_dir: str, vocab_size: int = 120):
    """A SentencePiece-Unigram T5 tokenizer (pad=0, eos=1, unk=2) with 100 sentinels in real-T5
    order (<extra_id_0> is the last id); saved to out_dir and returned."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Tokenizer

    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(TOKENIZER_TEXTS, vocab_size=vocab_size,
                           special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    vocab = [tuple(x) for x in json.loads(sp._tokenizer.to_str())["model"]["vocab"]]
    sentinels = [f"<extra_id_{i}>" for i in range(100)]
    tok = T5Tokenizer(vocab=vocab + [(s, 0.0) for s in reversed(sentinels)], extra_ids=0,
                      additional_special_tokens=sentinels)
    tok.save_pretrained(out_dir)
    return tok


def t5_config_kwargs(version: str, vocab_size: int) -> dict:
    """Tiny sizes; few buckets and a short max distance so the log-spaced buckets are used."""
    base = dict(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                relative_attention_max_distance=12, dropout_rate=0.0, decoder_start_token_id=0,
                pad_token_id=0, eos_token_id=1)
    if version == "1.0":
        return dict(base, feed_forward_proj="relu")
    if version == "1.1":
        return dict(base, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    raise ValueError(f"unknown T5 version {version!r}")


def make_tiny_t5(out_dir: str, version: str = "1.0", vocab_size: int = 224, seed: int = 0):
    """Random HF T5ForConditionalGeneration saved to out_dir; returns the torch model (eval).

    v1.0: ReLU MLP, LM head tied to `shared`, decoder output rescaled by d_model**-0.5.
    v1.1: gated-GELU MLP, separate `lm_head.weight`, no rescale."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**t5_config_kwargs(version, vocab_size)))
    if version == "1.1":
        # transformers 5 ties lm_head to shared at construction; give the head its own weights
        # as real v1.1 / mT5 checkpoints have.
        head = torch.randn(vocab_size, model.config.d_model) * model.config.d_model**-0.5
        model.lm_head.weight = torch.nn.Parameter(head)
    model.eval()
    model.save_pretrained(out_dir)
    if version == "1.1":
        from safetensors.numpy import load_file

        if "lm_head.weight" not in load_file(os.path.join(out_dir, "model.safetensors")):
            raise RuntimeError("tiny v1.1 T5 was saved without its own lm_head.weight")
    return model
