"""The step profiler: HLO instructions sorted into op categories, and a traced run summed by op."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet.bench.profile import CONTAINER, op_categories, profile_steps_by_op, summarize

HLO = """\
HloModule jit_step, entry_computation_layout={(f32[8,8]{1,0})->f32[8,8]{1,0}}

%fused_dot (p0: f32[8,8], p1: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_bits (p0: u32[8]) -> u32[8] {
  %p0 = u32[8]{0} parameter(0)
  %shift = u32[8]{0} shift-right-logical(%p0, %p0)
  ROOT %xor.1 = u32[8]{0} xor(%shift, %p0)
}

%fused_move (p0: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  ROOT %transpose.1 = f32[8,8]{0,1} transpose(%p0), dimensions={1,0}
}

%fused_exp (p0: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  ROOT %exp.1 = f32[8,8]{1,0} exponential(%p0)
}

%body (t: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %t = (s32[], /*index=1*/f32[8,8]{1,0}) parameter(0)
  ROOT %t2 = (s32[], /*index=1*/f32[8,8]{1,0}) tuple(%t, %t)
}

ENTRY %main (x: f32[8,8]) -> f32[8,8] {
  %x = f32[8,8]{1,0} parameter(0)
  %matmul_fusion = f32[8,8]{1,0} fusion(%x, %x), calls=%fused_dot, metadata={op_name="jit(s)/dot"}
  %bits_fusion = u32[8]{0} fusion(%x), kind=kLoop, calls=%fused_bits
  %uniform_add = f32[8,8]{1,0} add(%x, %x), metadata={op_name="jit(_uniform)/add"}
  %move_fusion = f32[8,8]{0,1} fusion(%x), kind=kLoop, calls=%fused_move
  %exp_fusion = f32[8,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_exp
  %all-reduce.1 = f32[8,8]{1,0} all-reduce(%x), to_apply=%fused_exp
  %gemm = f32[8,8]{1,0} custom-call(%x, %x), custom_call_target="__cublas$gemm"
  %while.1 = (s32[], /*index=1*/f32[8,8]{1,0}) while(%t0), condition=%body, body=%body
  ROOT %reduce.1 = f32[8,8]{1,0} reduce(%x, %x), dimensions={0}, to_apply=%fused_exp
}
"""


def test_instructions_fall_into_their_categories():
    categories = op_categories(HLO)
    expected = {
        "matmul_fusion": "matmul", "gemm": "matmul", "bits_fusion": "random bits",
        "uniform_add": "random bits", "move_fusion": "data movement",
        "exp_fusion": "elementwise", "all-reduce.1": "collective", "reduce.1": "reduction",
        "while.1": CONTAINER,
    }
    assert {name: categories[name][0] for name in expected} == expected
    assert categories["matmul_fusion"][1] == "jit(s)/dot"


def test_summary_skips_loop_events_and_adds_up_per_step():
    categories = op_categories(HLO)
    events = [("matmul_fusion", 3_000_000), ("matmul_fusion", 1_000_000),
              ("exp_fusion", 2_000_000), ("while.1", 9_000_000), ("nvjet_gemm_kernel", 2_000_000)]
    summary = summarize(iter(events), categories, steps=2)
    # 8 ms of ops over 2 steps: the loop's event is not counted on top of its body's
    assert summary["op_seconds_per_step"] == 4e-3
    by_category = {c["category"]: c for c in summary["categories"]}
    assert by_category["matmul"]["seconds_per_step"] == 3e-3  # the unnamed gemm kernel counts too
    assert by_category["elementwise"]["share"] == 0.25
    assert [op["op"] for op in summary["top_ops"]] == [
        "matmul_fusion", "exp_fusion", "nvjet_gemm_kernel"]


def test_traced_cpu_step_finds_its_matmuls():
    x_NxN = jnp.asarray(np.random.default_rng(0).normal(size=(256, 256)), jnp.float32)
    step_fn = jax.jit(lambda x: jnp.tanh(x @ x) @ x)

    def step(_):
        return jax.block_until_ready(step_fn(x_NxN))

    step(None)
    profile = profile_steps_by_op(step, 3, step_fn.lower(x_NxN).compile().as_text())
    shares = {c["category"]: c["share"] for c in profile["categories"]}
    assert shares.get("matmul", 0) > 0.3, profile
    assert abs(sum(shares.values()) - 1) < 1e-6
    assert profile["steps"] == 3 and profile["wall_seconds_per_step"] > 0


def test_bench_train_profile_option(tmp_path, capsys):
    from jaxpet.bench.cli import main

    out = tmp_path / "train.json"
    args = ["train", "--size", "tiny", "--seq-len", "16", "--batch-size", "2",
            "--unlabeled-batch-size", "2", "--steps", "1", "--warmup", "0", "--profile", "1",
            "--prng-impl", "unsafe_rbg", "--attention-dropout", "0"]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prng_impl"] == "unsafe_rbg" and report["attention_dropout"] == 0.0
    categories = {c["category"] for c in report["jaxpet_profile"]["categories"]}
    assert "matmul" in categories
    assert "jaxpet step profile" in capsys.readouterr().out
