"""Seq2seq decoding: greedy and beam search vs transformers' generate and a plain Python beam
search; teacher-forced target scores vs PyTorch log-probabilities."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from tiny_t5 import make_tiny_t5

torch = pytest.importorskip("torch")

from jaxpet.decoding.seq2seq import generate, score_targets, shift_right  # noqa: E402
from jaxpet.models.t5_convert import load_t5  # noqa: E402

VOCAB = 224
STEPS = 7
PAD = 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("t5dec"))
    hf = make_tiny_t5(folder, "1.1", vocab_size=VOCAB, seed=3)
    module, params, config = load_t5(folder)
    lm = SimpleNamespace(module=module, params=params, config=config)
    rng = np.random.default_rng(5)
    ids = rng.integers(3, VOCAB, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = PAD
    forward = jax.jit(lambda dec: module.apply({"params": params}, ids, mask,
                                               decoder_input_ids=dec))
    return SimpleNamespace(hf=hf, lm=lm, ids=ids, mask=mask, forward=forward, folder=folder)


def frequent_token(tiny) -> int:
    """A token the model likes to produce first, used as EOS so some hypotheses end early."""
    # Same shape as the reference beam search's forward passes: no extra compile.
    first = np.asarray(tiny.forward(np.zeros((3, STEPS + 1), np.int64)))[:, 0]
    return int(np.argmax(first[0]))


def until_eos(row, eos: int) -> list[int]:
    row = list(row)
    return row[: row.index(eos) + 1] if eos in row else row


def hf_generate(tiny, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = tiny.hf.generate(input_ids=torch.tensor(tiny.ids),
                               attention_mask=torch.tensor(tiny.mask), max_new_tokens=STEPS,
                               do_sample=False, **kwargs)
    return out.numpy()[:, 1:]  # drop the decoder start token


def assert_pad_after_eos(tokens: np.ndarray, eos: int) -> None:
    for row in tokens.tolist():
        if eos in row:
            assert all(t == PAD for t in row[row.index(eos) + 1:]), row


@pytest.mark.parametrize("eos_kind", ["config", "frequent"])
def test_greedy_matches_transformers(tiny, eos_kind):
    eos = 1 if eos_kind == "config" else frequent_token(tiny)
    ours = np.asarray(generate(tiny.lm, tiny.ids, tiny.mask, max_new_tokens=STEPS,
                               eos_token_id=None if eos_kind == "config" else eos))
    ref = hf_generate(tiny, eos_token_id=eos)
    assert ours.shape == (3, STEPS)
    ref = np.pad(ref, ((0, 0), (0, STEPS - ref.shape[1])), constant_values=PAD)
    np.testing.assert_array_equal(ours, ref)
    assert_pad_after_eos(ours, eos)
    if eos_kind == "frequent":
        assert any(eos in row for row in ours.tolist())


def reference_beam_search(tiny, num_beams: int, length_penalty: float, eos: int) -> list:
    """HF's beam search (early_stopping=False) written plainly, one row at a time, with full
    forward passes and no cache."""
    results = []
    for b in range(tiny.ids.shape[0]):
        running = [([], 0.0)] + [([], -1e9)] * (num_beams - 1)
        finished: list[tuple[float, list[int]]] = []
        for t in range(STEPS):
            dec = np.zeros((3, STEPS + 1), np.int64)  # rows other than b are unused filler
            logp = []
            for tokens, _ in running:
                dec[b, 1:len(tokens) + 1] = tokens
                dec[b, len(tokens) + 1:] = 0
                logits = np.asarray(tiny.forward(dec))[b, len(tokens)].astype(np.float64)
                logp.append(logits - np.logaddexp.reduce(logits))
            cands = sorted(
                ((score + logp[i][v], i * VOCAB + v) for i, (_, score) in enumerate(running)
                 for v in range(VOCAB)), key=lambda c: -c[0])[: 2 * num_beams]
            new_running = []
            for rank, (score, flat) in enumerate(cands):
                i, v = divmod(flat, VOCAB)
                tokens = running[i][0] + [v]
                if v == eos or t == STEPS - 1:
                    if rank < num_beams:
                        finished.append((score / (t + 1) ** length_penalty, tokens))
                elif len(new_running) < num_beams:
                    new_running.append((tokens, score))
            finished = sorted(finished, key=lambda f: -f[0])[:num_beams]
            running = new_running
            best_possible = running[0][1] / (t + 1) ** length_penalty if running else -np.inf
            if len(finished) == num_beams and best_possible <= finished[-1][0]:
                break
        results.append(finished[0][1])
    return results


@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
def test_beam_search_matches_plain_python_and_transformers(tiny, length_penalty):
    eos = frequent_token(tiny)
    ours = np.asarray(generate(tiny.lm, tiny.ids, tiny.mask, max_new_tokens=STEPS, num_beams=3,
                               length_penalty=length_penalty, eos_token_id=eos))
    assert ours.shape == (3, STEPS)
    assert_pad_after_eos(ours, eos)
    if length_penalty == 0.5:  # a weak length reward lets a hypothesis that ended at once win
        assert any(row[0] == eos for row in ours.tolist())
    expected = reference_beam_search(tiny, 3, length_penalty, eos)
    assert [until_eos(r, eos) for r in ours.tolist()] == expected
    ref = hf_generate(tiny, num_beams=3, length_penalty=length_penalty, eos_token_id=eos)
    assert [until_eos(r, eos) for r in ours.tolist()] == [until_eos(r, eos) for r in ref.tolist()]


def test_score_targets_is_teacher_forced_sum_log_prob(tiny):
    rng = np.random.default_rng(9)
    targets = rng.integers(3, VOCAB, (3, 5))
    tmask = np.ones_like(targets)
    tmask[0, 3:] = 0
    tmask[2, 1:] = 0
    ours = np.asarray(score_targets(tiny.lm, tiny.ids, tiny.mask, targets, tmask))
    labels = torch.tensor(np.where(tmask > 0, targets, -100))
    with torch.no_grad():
        logits = tiny.hf(input_ids=torch.tensor(tiny.ids), attention_mask=torch.tensor(tiny.mask),
                         labels=labels).logits
    logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
    expected = (logp * torch.tensor(tmask)).sum(1).numpy()
    # fp32 parity with torch (~1e-6 per op); a shifted target or unmasked pad adds whole nats
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-5)
    # Changing a masked-out target token must not change the score.
    changed = targets.copy()
    changed[0, 4] = (changed[0, 4] + 1) % VOCAB
    again = np.asarray(score_targets(tiny.lm, tiny.ids, tiny.mask, changed, tmask))
    # the same program on the same inputs but one masked-out token: any change means it leaked
    np.testing.assert_allclose(again, ours, atol=1e-6)


def test_end_to_end_through_load_pretrained_and_tokenizer(tiny, tmp_path):
    """Task format -> tokenizer -> load_pretrained(head="seq2seq") -> generate -> text."""
    import shutil

    from tiny_t5 import make_t5_tokenizer

    from jaxpet.models import load_pretrained
    from jaxpet.text2text.tasks import mnli, summarization, translation

    folder = tmp_path / "with_tokenizer"
    shutil.copytree(tiny.folder, folder)
    make_t5_tokenizer(str(folder))
    lm = load_pretrained(str(folder), head="seq2seq")
    texts = [translation("That is good.", "en", "de").inputs,
             summarization("The quick brown fox jumps over the lazy dog.").inputs,
             mnli("A cat sat.", "The cat sat.").inputs]
    enc = lm.tokenizer(texts, padding="max_length", max_length=10, truncation=True,
                       return_tensors="np")
    ours = np.asarray(generate(lm, enc["input_ids"], enc["attention_mask"],
                               max_new_tokens=STEPS))
    with torch.no_grad():
        ref = tiny.hf.generate(input_ids=torch.tensor(enc["input_ids"]),
                               attention_mask=torch.tensor(enc["attention_mask"]),
                               max_new_tokens=STEPS, do_sample=False).numpy()[:, 1:]
    assert [until_eos(r, 1) for r in ours.tolist()] == [until_eos(r, 1) for r in ref.tolist()]
    decoded = lm.tokenizer.batch_decode(ours, skip_special_tokens=True)
    assert decoded == lm.tokenizer.batch_decode(ref, skip_special_tokens=True)


def test_shift_right_inserts_start_and_maps_negative_to_pad():
    out = np.asarray(shift_right(np.array([[5, 6, -100, -100]]), start_id=0, pad_id=0))
    np.testing.assert_array_equal(out, [[0, 5, 6, 0]])
