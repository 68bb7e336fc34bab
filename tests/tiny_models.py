"""Tiny random HF checkpoints and tokenizers (BERT, RoBERTa, XLM-R, ALBERT) built offline."""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax

FAMILIES = ("bert", "roberta", "xlm-roberta", "albert")
HEADS = ("mlm", "classifier", "base")  # base: a bare *Model without head (like MiniLM)
NUM_LABELS = 3

CORPUS = [
    "The movie was great and the actors were wonderful.",
    "A terrible film with a boring plot and bad acting.",
    "The food at this restaurant is delicious, the service is slow.",
    "I would not recommend this hotel to anyone.",
    "What a fantastic experience, we will come back soon!",
    "The news reported that the stock market fell sharply today.",
    "Scientists discovered a new species of frog in the rain forest.",
    "The team won the championship after a thrilling final game.",
    "Is the sky blue? Yes, it is. No, it was grey yesterday.",
    "It was good. It was bad. It was okay. It was amazing.",
    "Sports, business, world and technology news every day.",
    "She said that the answer is true, but he said it is false.",
]

_TINY_SIZES: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)


def build_tokenizer(family: str, vocab_size: int = 200) -> Any:
    """A small tokenizer of the family's kind, trained on CORPUS (no network)."""
    from tokenizers import AddedToken

    if family == "bert":
        from tokenizers import BertWordPieceTokenizer
        from transformers import BertTokenizer

        wp = BertWordPieceTokenizer(lowercase=True)
        wp.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1,
                               special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        return BertTokenizer(vocab=wp.get_vocab())
    if family == "roberta":
        from tokenizers import ByteLevelBPETokenizer
        from transformers import RobertaTokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(CORPUS, vocab_size=vocab_size + 261, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        with tempfile.TemporaryDirectory() as files:
            bpe.save_model(files)
            return RobertaTokenizer(
                vocab=f"{files}/vocab.json",
                merges=f"{files}/merges.txt",
                mask_token=AddedToken("<mask>", lstrip=True, special=True, normalized=False),
            )
    from tokenizers import SentencePieceUnigramTokenizer

    specials = (["<s>", "<pad>", "</s>", "<unk>"] if family == "xlm-roberta"
                else ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"])
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(CORPUS, vocab_size=vocab_size, special_tokens=specials,
                           unk_token="<unk>")
    vocab = [tuple(x) for x in json.loads(sp._tokenizer.to_str())["model"]["vocab"]]
    if family == "xlm-roberta":
        from transformers import XLMRobertaTokenizer

        return XLMRobertaTokenizer(vocab=vocab + [("<mask>", 0.0)])
    if family == "albert":
        from transformers import AlbertTokenizer

        return AlbertTokenizer(vocab=vocab)
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def tiny_hf_config(family: str, vocab_size: int, tokenizer: Any = None) -> Any:
    """A tiny transformers config of the family (ALBERT: 3 layers over 2 shared groups)."""
    from transformers import AutoConfig

    sizes = dict(_TINY_SIZES, vocab_size=vocab_size)
    if tokenizer is not None:
        sizes.update(pad_token_id=tokenizer.pad_token_id)
        if tokenizer.bos_token_id is not None:
            sizes.update(bos_token_id=tokenizer.bos_token_id)
        if tokenizer.eos_token_id is not None:
            sizes.update(eos_token_id=tokenizer.eos_token_id)
    if family in ("roberta", "xlm-roberta"):
        sizes.update(max_position_embeddings=64 + sizes.get("pad_token_id", 1) + 1,
                     type_vocab_size=1, layer_norm_eps=1e-5)
    if family == "albert":
        sizes.update(embedding_size=16, num_hidden_layers=3, num_hidden_groups=2,
                     inner_group_num=1, hidden_act="gelu_new")
    return AutoConfig.for_model(family, **sizes)


def _model_class(family: str, head: str) -> Any:
    import transformers

    prefix = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta",
              "albert": "Albert"}[family]
    suffix = {"mlm": "ForMaskedLM", "classifier": "ForSequenceClassification", "base": "Model"}
    return getattr(transformers, prefix + suffix[head])


def build_tiny_checkpoint(family: str, head: str, root: str | os.PathLike) -> Path:
    """Builds (once per root) a tiny random HF checkpoint + tokenizer; returns its folder.

    Cached by path: a folder that already holds config.json is reused, so concurrent test
    processes sharing `root` build each checkpoint at most once each.
    """
    import torch

    folder = Path(root) / f"{family}-{head}"
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer(family)
    hf_config = tiny_hf_config(family, len(tokenizer), tokenizer)
    if head == "classifier":
        hf_config.num_labels = NUM_LABELS
    torch.manual_seed({"bert": 0, "roberta": 1, "xlm-roberta": 2, "albert": 3}[family])
    model = _model_class(family, head)(hf_config).eval()
    # Random (not zero) biases and LayerNorm params, so a mis-mapped tensor shows in logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{family}-{head}-", dir=root))
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    try:
        os.replace(staging, folder)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_torch_model(folder: str | os.PathLike, family: str, head: str) -> Any:
    """The transformers PyTorch model of a checkpoint folder, in eval mode (the reference)."""
    return _model_class(family, head).from_pretrained(str(folder)).eval()


def encode_batch(tokenizer: Any, pairs: bool = False, max_length: int = 24) -> dict[str, Any]:
    """A padded batch of 4 texts (pairs give BERT/ALBERT real token types) as numpy arrays."""
    texts_a = ["The movie was great.", "A terrible film.", "Is the sky blue?",
               "The team won the championship after a thrilling final game today."]
    texts_b = ["It was good.", "Bad.", "Yes, it is.", "No"] if pairs else None
    enc = tokenizer(texts_a, texts_b, padding="max_length", truncation=True,
                    max_length=max_length, return_tensors="np")
    if "token_type_ids" not in enc:
        import numpy as np

        enc["token_type_ids"] = np.zeros_like(enc["input_ids"])
    return dict(enc)


def shared_root(tmp_path_factory: Any) -> Path:
    """A folder shared by all pytest-xdist workers of one run (so each model is built once)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny-models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def jit_apply(
    module: Any,
    params: Any,
    input_ids: Any,
    attention_mask: Any,
    token_type_ids: Any = None,
    positions: Any = None,
    deterministic: bool = True,
    rngs: Any = None,
) -> Any:
    """module.apply under one shared jit cache: equal modules and shapes compile only once."""
    return _jit_apply(module, params, input_ids, attention_mask, token_type_ids, positions,
                      deterministic, rngs)


@functools.partial(jax.jit, static_argnames=("module", "deterministic"))
def _jit_apply(module, params, input_ids, attention_mask, token_type_ids, positions,
               deterministic, rngs):
    return module.apply({"params": params}, input_ids, attention_mask,
                        token_type_ids=token_type_ids, positions=positions,
                        deterministic=deterministic, rngs=rngs)
