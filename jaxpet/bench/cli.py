"""`python -m jaxpet.bench train|decode|encode|generate|ensemble|peak`: throughput benchmarks.

Each subcommand prints a table and, with `--json PATH`, writes the full report as JSON.
Ratios compare ways measured in the same process on the same inputs and weights; absolute
times on a shared machine mean little on their own.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

# Each subcommand imports its benchmark module (JAX; torch for the reference ways) when it runs,
# so that `--help` answers at once and a subcommand never loads another's libraries.


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Plain fixed-width table of `columns` from each row."""
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _peak(dtype: str) -> dict[str, Any]:
    import jax.numpy as jnp

    from jaxpet.bench.peak import measure_matmul_peak

    return measure_matmul_peak(dtype=jnp.dtype(dtype))


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from jaxpet.bench.train import run_train_benchmark

    report = run_train_benchmark(
        size=args.size, seq_len=args.seq_len, batch_size=args.batch_size,
        unlabeled_batch_size=args.unlabeled_batch_size, dtype=args.dtype, steps=args.steps,
        warmup=args.warmup, compare_torch=args.compare == "torch",
        max_mlm_targets=args.max_mlm_targets, dropout=args.dropout, prng_impl=args.prng_impl,
        profile_steps=args.profile, attention_dropout=args.attention_dropout,
        attention=args.attention,
    )
    peak = _peak(args.dtype)
    report["measured_peak"] = peak
    for way in report["ways"]:
        way["fraction_of_measured_peak"] = way["achieved_flops_per_s"] / peak["flops_per_s"]
        if peak["datasheet_flops_per_s"]:
            way["fraction_of_datasheet_peak"] = (
                way["achieved_flops_per_s"] / peak["datasheet_flops_per_s"]
            )
    print(f"PET train step: size={report['size']} seq={report['seq_len']} "
          f"batch={report['labeled_batch']}+{report['unlabeled_batch']} dtype={report['dtype']} "
          f"dropout={report['dropout']}/{report['attention_dropout']} "
          f"attention={report['attention']} prng={report['prng_impl']} "
          f"device={report['device']} x{report['num_devices']}")
    print_table(report["ways"], ["name", "step_seconds", "examples_per_s", "tokens_per_s",
                                 "compile_seconds", "flops_per_step", "achieved_flops_per_s",
                                 "fraction_of_measured_peak", "peak_memory_bytes", "loss"])
    print(f"measured matmul peak: {peak['flops_per_s']:.3e} FLOP/s ({peak['dtype']}, "
          f"n={peak['size']})")
    if "speedup_vs_torch_original" in report:
        print(f"jaxpet speed-up over (a) the original PET way in PyTorch: "
              f"{report['speedup_vs_torch_original']:.2f}x")
        print(f"jaxpet speed-up over (b) jaxpet's algorithm in PyTorch:  "
              f"{report['speedup_vs_torch_fused']:.2f}x")
    if "jaxpet_profile" in report:
        print_profile(report["jaxpet_profile"])
    return report


def print_profile(profile: dict[str, Any]) -> None:
    """The jaxpet step's time by op category and its most expensive ops."""
    if "error" in profile:
        print(f"profile: {profile['error']}")
        return
    print(f"\njaxpet step profile ({profile['steps']} traced steps, "
          f"{profile['wall_seconds_per_step']:.4g} s wall and "
          f"{profile['op_seconds_per_step']:.4g} s of op time per step):")
    print_table(profile["categories"], ["category", "seconds_per_step", "share"])
    print()
    print_table(profile["top_ops"], ["op", "category", "seconds_per_step", "share", "source"])


def cmd_decode(args: argparse.Namespace) -> dict[str, Any]:
    from jaxpet.bench.decode import run_decode_benchmark

    reports = []
    for k_max in args.k_max:
        report = run_decode_benchmark(
            N=args.num_examples, C=args.num_candidates, K_max=k_max, seq_len=args.seq_len,
            strategy=args.strategy, repeats=args.repeats,
            reference_examples=args.reference_examples,
        )
        reports.append(report)
    print(f"multi-mask decoding: N={args.num_examples} C={args.num_candidates} "
          f"strategy={args.strategy} seq={args.seq_len}")
    print_table(reports, ["K_max", "compiled_examples_per_s", "reference_examples_per_s",
                          "speedup", "compile_seconds", "max_abs_score_diff"])
    return {"benchmark": "decode", "runs": reports}


def cmd_encode(args: argparse.Namespace) -> dict[str, Any]:
    from jaxpet.bench.encode import run_encode_benchmark

    report = run_encode_benchmark(num_examples=args.num_examples, max_seq_length=args.seq_len)
    print_table([report], ["examples_per_s", "examples_per_cpu_s", "seconds", "cpu_seconds",
                           "mean_tokens", "tokenizer"])
    return {"benchmark": "encode", **report}


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    from jaxpet.bench.generate import run_generate_benchmark

    report = run_generate_benchmark(
        batch_size=args.batch_size, input_length=args.input_length,
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, d_model=args.d_model,
        num_layers=args.num_layers, torch_device=args.torch_device,
    )
    rows = [dict(decoder=k, **v) for k, v in report.items() if isinstance(v, dict) and
            "jax_tokens_per_s" in v]
    print_table(rows, ["decoder", "jax_tokens_per_s", "torch_tokens_per_s", "jax_over_torch",
                       "same_tokens"])
    return {"benchmark": "generate", **report}


def cmd_ensemble(args: argparse.Namespace) -> dict[str, Any]:
    from jaxpet.bench.ensemble import run_ensemble_benchmark

    report = run_ensemble_benchmark(
        size=args.size, vocab_size=args.vocab_size, members=args.members, seq_len=args.seq_len,
        labeled=args.labeled, unlabeled=args.unlabeled, steps=args.steps, repeats=args.repeats,
    )
    # the first call compiles the step, then runs it: compile time counts for a one-off run
    rows = [dict(way=way, first_call_s=round(report[f"{way}_first_s"], 3),
                 **{k: report[way][k] for k in ("median_wall_s", "median_cpu_s")})
            for way in ("sequential", "parallel")]
    print(f"ensemble members: {report['members']} x size={report['size']} "
          f"seq={report['seq_len']} batch={report['batch']}")
    print_table(rows, ["way", "first_call_s", "median_wall_s", "median_cpu_s"])
    print(f"parallel speed-up: {report['speedup_wall']:.2f}x wall, "
          f"{report['speedup_cpu']:.2f}x CPU")
    return {"benchmark": "ensemble", **report}


def cmd_peak(args: argparse.Namespace) -> dict[str, Any]:
    report = _peak(args.dtype)
    print_table([report], ["device", "dtype", "size", "flops_per_s", "datasheet_flops_per_s"])
    return {"benchmark": "peak", **report}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxpet.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="the PET train step (cloze + auxiliary MLM + AdamW)")
    train.add_argument("--size", default="small", choices=["tiny", "small", "base", "large"])
    train.add_argument("--seq-len", type=int, default=128)
    train.add_argument("--batch-size", type=int, default=8, help="labeled rows per step")
    train.add_argument("--unlabeled-batch-size", type=int, default=8)
    train.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    train.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    train.add_argument("--warmup", type=int, default=2)
    train.add_argument("--max-mlm-targets", type=int, default=None)
    train.add_argument("--compare", choices=["torch"], default=None,
                       help="also run the original PET way and jaxpet's way in PyTorch")
    train.add_argument("--dropout", type=float, default=0.1,
                       help="hidden and attention dropout of the benchmark model")
    train.add_argument("--attention-dropout", type=float, default=None,
                       help="attention-probability dropout (default: --dropout)")
    train.add_argument("--attention", default="xla", choices=["xla", "cudnn", "pallas"],
                       help="attention kernel of jaxpet's model (cudnn: NVIDIA GPUs, "
                            "no attention dropout; pallas: fused kernel with hashed "
                            "attention dropout, interpreted on CPU)")
    train.add_argument("--prng-impl", default=None,
                       choices=["threefry2x32", "rbg", "unsafe_rbg"],
                       help="key type of jaxpet's random bits (default: JAX's, threefry2x32)")
    train.add_argument("--profile", type=int, default=0, metavar="STEPS",
                       help="trace this many extra jaxpet steps and print time per op category")
    train.set_defaults(func=cmd_train)

    decode = sub.add_parser("decode", help="K-step multi-mask decoding vs PET's loop")
    decode.add_argument("--num-examples", type=int, default=64)
    decode.add_argument("--num-candidates", type=int, default=5)
    decode.add_argument("--k-max", type=int, nargs="+", default=[1, 2, 3, 4])
    decode.add_argument("--seq-len", type=int, default=64)
    decode.add_argument("--strategy", default="max_first", choices=["max_first", "ltr", "parallel"])
    decode.add_argument("--repeats", type=int, default=3)
    decode.add_argument("--reference-examples", type=int, default=16)
    decode.set_defaults(func=cmd_decode)

    encode = sub.add_parser("encode", help="pattern encoding of Yahoo-length examples")
    encode.add_argument("--num-examples", type=int, default=20000)
    encode.add_argument("--seq-len", type=int, default=256)
    encode.set_defaults(func=cmd_encode)

    generate = sub.add_parser("generate", help="T5 cached greedy/beam decoding vs PyTorch")
    generate.add_argument("--batch-size", type=int, default=8)
    generate.add_argument("--input-length", type=int, default=64)
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.add_argument("--num-beams", type=int, default=4)
    generate.add_argument("--d-model", type=int, default=256)
    generate.add_argument("--num-layers", type=int, default=4)
    generate.add_argument("--torch-device", default="cpu")
    generate.set_defaults(func=cmd_generate)

    ensemble = sub.add_parser("ensemble", help="parallel (member axis) vs sequential members")
    ensemble.add_argument("--size", default="small", choices=["tiny", "small", "base", "large"])
    ensemble.add_argument("--vocab-size", type=int, default=None)
    ensemble.add_argument("--members", type=int, default=4)
    ensemble.add_argument("--seq-len", type=int, default=64)
    ensemble.add_argument("--labeled", type=int, default=4, help="labeled rows per member step")
    ensemble.add_argument("--unlabeled", type=int, default=4)
    ensemble.add_argument("--steps", type=int, default=3, help="member updates per timed repeat")
    ensemble.add_argument("--repeats", type=int, default=3)
    ensemble.set_defaults(func=cmd_ensemble)

    peak = sub.add_parser("peak", help="measured dense matmul FLOP/s")
    peak.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    peak.set_defaults(func=cmd_peak)

    for p in (train, decode, encode, generate, ensemble, peak):
        p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = args.func(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
