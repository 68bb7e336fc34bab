"""Decoding throughput: jaxpet's jitted cached greedy/beam T5 decoding vs transformers' PyTorch
`generate` on the same random weights and inputs.  python -m jaxpet.bench.generate [--options]"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np

from jaxpet.decoding.seq2seq import generate
from jaxpet.models.t5_convert import load_t5


def _build_checkpoint(folder: str, d_model: int, num_layers: int, num_heads: int, d_ff: int,
                      vocab_size: int, seed: int) -> Any:
    # torch is not a jaxpet dependency: only the PyTorch reference way needs it
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
                      num_layers=num_layers, num_heads=num_heads, dropout_rate=0.0,
                      feed_forward_proj="relu", decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    return model


def run_generate_benchmark(batch_size: int = 8, input_length: int = 64, max_new_tokens: int = 32,
                           num_beams: int = 4, d_model: int = 256, num_layers: int = 4,
                           num_heads: int = 4, d_ff: int = 1024, vocab_size: int = 32128,
                           seed: int = 0, torch_device: str = "cpu") -> dict[str, Any]:
    """One timed run per decoder after one warm-up (jax: compile; torch: allocator warm-up).

    EOS is disabled on both sides so every row decodes exactly max_new_tokens tokens and both
    do the same work; tokens/s counts batch_size * max_new_tokens generated tokens."""
    # torch is not a jaxpet dependency: only the PyTorch reference way needs it
    import torch

    folder = tempfile.mkdtemp(prefix="jaxpet-bench-t5-")
    hf = _build_checkpoint(folder, d_model, num_layers, num_heads, d_ff, vocab_size, seed)
    hf = hf.to(torch_device)
    hf.generation_config.eos_token_id = None
    module, params, config = load_t5(folder)
    lm = SimpleNamespace(module=module, params=params, config=config)
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab_size, (batch_size, input_length))
    mask = np.ones_like(ids)
    mask[::2, input_length // 2:] = 0  # half the rows padded, as real batches are
    ids[mask == 0] = 0
    tokens = batch_size * max_new_tokens
    never = -1  # no id equals -1, so rows never finish early

    def run_jax(beams: int) -> np.ndarray:
        out = generate(lm, ids, mask, max_new_tokens=max_new_tokens, num_beams=beams,
                       eos_token_id=never)
        return np.asarray(jax.block_until_ready(out))

    def run_torch(beams: int) -> np.ndarray:
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor(ids, device=torch_device),
                              attention_mask=torch.tensor(mask, device=torch_device),
                              max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                              num_beams=beams, do_sample=False, eos_token_id=None)
        return out.cpu().numpy()[:, 1:]

    result: dict[str, Any] = dict(
        model=dict(d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_ff=d_ff,
                   vocab_size=vocab_size),
        batch_size=batch_size, input_length=input_length, max_new_tokens=max_new_tokens,
        jax_backend=jax.default_backend(), torch_device=torch_device,
        torch_threads=torch.get_num_threads(),
    )
    for name, beams in (("greedy", 1), (f"beam{num_beams}", num_beams)):
        start = time.perf_counter()
        jax_out = run_jax(beams)
        first_call = time.perf_counter() - start
        start = time.perf_counter()
        jax_out = run_jax(beams)
        jax_s = time.perf_counter() - start
        run_torch(beams)
        start = time.perf_counter()
        torch_out = run_torch(beams)
        torch_s = time.perf_counter() - start
        result[name] = dict(
            jax_tokens_per_s=tokens / jax_s, torch_tokens_per_s=tokens / torch_s,
            jax_over_torch=(tokens / jax_s) / (tokens / torch_s), jax_compile_and_run_s=first_call,
            same_tokens=bool(np.array_equal(jax_out, torch_out)),
        )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-length", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--torch-device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    print(json.dumps(run_generate_benchmark(
        batch_size=args.batch_size, input_length=args.input_length,
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, d_model=args.d_model,
        num_layers=args.num_layers, torch_device=args.torch_device), indent=2))


if __name__ == "__main__":
    main()
