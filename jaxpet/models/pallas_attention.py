"""Fused flash attention in Pallas, with attention-probability dropout from an in-kernel hash."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# Scores of masked keys: finite (as the XLA path's mask), so an all-masked row stays finite.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)
_GOLDEN = 0x9E3779B9  # odd: multiplying by it is a bijection on uint32
_STEP_SALT = 0x7F4A7C15
_BLOCK = 64  # queries (and keys) per block; sequences are padded to a multiple of it


def _u32(x: int | jax.Array) -> jax.Array:
    if isinstance(x, int):
        return jnp.uint32(x)
    return jnp.asarray(x).astype(jnp.uint32)


def _fmix32(x_u32: jax.Array) -> jax.Array:
    """A 32-bit avalanche finaliser (xor-shift-multiply): every input bit flips ~half the
    output bits, and it is a bijection on uint32."""
    x_u32 = x_u32 ^ (x_u32 >> _u32(16))
    x_u32 = x_u32 * _u32(0x85EBCA6B)
    x_u32 = x_u32 ^ (x_u32 >> _u32(13))
    x_u32 = x_u32 * _u32(0xC2B2AE35)
    return x_u32 ^ (x_u32 >> _u32(16))


def stream_hash(seed: jax.Array | int, step: jax.Array | int) -> jax.Array:
    """The uint32 scalar that names one dropout stream: (seed, step) mixed."""
    return _fmix32(_u32(seed) ^ _fmix32(_u32(step) + _u32(_STEP_SALT)))


def _row_hash(stream_u32: jax.Array, head_index: jax.Array, query_index: jax.Array) -> jax.Array:
    """Per (batch * heads + head, query) hash; `query_index` may be an array of rows."""
    head_u32 = _fmix32(stream_u32 ^ (_u32(head_index) * _u32(_GOLDEN) + _u32(1)))
    return _fmix32(head_u32 + _u32(query_index) * _u32(_GOLDEN))


def _keep_bits(row_u32: jax.Array, key_index: jax.Array, threshold: int) -> jax.Array:
    """True where (row, key) keeps its probability: two finaliser rounds of row ^ key, kept
    when >= threshold, so P(keep) = 1 - threshold / 2**32."""
    bits_u32 = _fmix32(_fmix32(row_u32 ^ _u32(key_index)))
    return bits_u32 >= _u32(threshold)


def _threshold(rate: float) -> int:
    return min(int(round(rate * 2.0**32)), 2**32 - 1)


def dropout_keep_mask(seed: jax.Array | int, B: int, N: int, S: int, rate: float,
                      step: jax.Array | int = 0) -> jax.Array:
    """The kernel's dropout mask as plain jnp: bool [B, N, S, S], True where the
    probability of (batch, head, query, key) is kept (fraction ~ 1 - rate)."""
    stream_u32 = stream_hash(seed, step)
    head_BxN = (jnp.arange(B)[:, None] * N + jnp.arange(N)[None, :]).astype(jnp.uint32)
    row_BxNxS = _row_hash(stream_u32, head_BxN[:, :, None], jnp.arange(S)[None, None, :])
    return _keep_bits(row_BxNxS[..., None], jnp.arange(S)[None, None, None, :],
                      _threshold(rate))


def _scores(q_QxH: jax.Array, k_KxH: jax.Array, keymask_K: jax.Array, scale: float) -> jax.Array:
    s_QxK = jnp.dot(q_QxH, k_KxH.T, preferred_element_type=jnp.float32) * scale
    return jnp.where(keymask_K[None, :] > 0, s_QxK, _MASKED)


def _head_index() -> jax.Array:
    """batch * heads + head of this program (read outside loops: the CPU interpreter only
    binds program ids at the kernel's top level)."""
    return pl.program_id(0) * pl.num_programs(1) + pl.program_id(1)


def _keep_block(stream_ref, head: jax.Array, q_start: jax.Array, k_start: jax.Array, bq: int,
                bk: int, threshold: int) -> jax.Array:
    """The [bq, bk] keep mask of (batch, head) `head`'s block at (q_start, k_start)."""
    rows_Qx1 = q_start + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    cols_1xK = k_start + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    return _keep_bits(_row_hash(stream_ref[0], head, rows_Qx1), cols_1xK, threshold)


def _fwd_kernel(stream_ref, q_ref, k_ref, v_ref, keymask_ref, o_ref, lse_ref, *,
                scale: float, block: int, threshold: int, keep_scale: float) -> None:
    bq, head_dim = q_ref.shape
    seq = k_ref.shape[0]
    head = _head_index()
    q_start = pl.program_id(2) * bq
    q_QxH = q_ref[...]

    def body(j, carry):
        m_Q, l_Q, acc_QxH = carry
        k_start = j * block
        k_KxH = k_ref[pl.ds(k_start, block), :]
        v_KxH = v_ref[pl.ds(k_start, block), :]
        s_QxK = _scores(q_QxH, k_KxH, keymask_ref[pl.ds(k_start, block)], scale)
        m_new_Q = jnp.maximum(m_Q, s_QxK.max(axis=1))
        # Online softmax: rescale what was summed under the old maximum.
        alpha_Q = jnp.exp(m_Q - m_new_Q)
        p_QxK = jnp.exp(s_QxK - m_new_Q[:, None])
        l_Q = alpha_Q * l_Q + p_QxK.sum(axis=1)  # the normaliser counts dropped keys too
        if threshold:
            keep_QxK = _keep_block(stream_ref, head, q_start, k_start, bq, block, threshold)
            p_QxK = jnp.where(keep_QxK, p_QxK * keep_scale, 0.0)
        acc_QxH = alpha_Q[:, None] * acc_QxH + jnp.dot(
            p_QxK.astype(v_KxH.dtype), v_KxH, preferred_element_type=jnp.float32)
        return m_new_Q, l_Q, acc_QxH

    init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
            jnp.zeros((bq, head_dim), jnp.float32))
    m_Q, l_Q, acc_QxH = jax.lax.fori_loop(0, seq // block, body, init)
    o_ref[...] = (acc_QxH / l_Q[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m_Q + jnp.log(l_Q)


def _probs_and_grad(q_QxH, k_KxH, v_KxH, do_QxH, lse_Q, delta_Q, keymask_K, keep_QxK, *,
                    scale: float, keep_scale: float):
    """Recomputed probabilities P (kept ones scaled) and dS, the score gradient, of a block."""
    p_QxK = jnp.exp(_scores(q_QxH, k_KxH, keymask_K, scale) - lse_Q[:, None])
    dp_QxK = jnp.dot(do_QxH, v_KxH.T, preferred_element_type=jnp.float32)
    if keep_QxK is not None:
        pd_QxK = jnp.where(keep_QxK, p_QxK * keep_scale, 0.0)
        dp_QxK = jnp.where(keep_QxK, dp_QxK * keep_scale, 0.0)
    else:
        pd_QxK = p_QxK
    # delta = rowsum(dO * O) = rowsum(P * dP) also under dropout (O sums the dropped P).
    return pd_QxK, p_QxK * (dp_QxK - delta_Q[:, None])


def _bwd_kv_kernel(stream_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, keymask_ref,
                   dk_ref, dv_ref, *, scale: float, block: int, threshold: int,
                   keep_scale: float) -> None:
    bk, head_dim = k_ref.shape
    seq = q_ref.shape[0]
    head = _head_index()
    k_start = pl.program_id(2) * bk
    k_KxH, v_KxH = k_ref[...], v_ref[...]
    keymask_K = keymask_ref[pl.ds(k_start, bk)]

    def body(i, carry):
        dk_KxH, dv_KxH = carry
        q_start = i * block
        rows = pl.ds(q_start, block)
        q_QxH, do_QxH = q_ref[rows, :], do_ref[rows, :]
        keep = (_keep_block(stream_ref, head, q_start, k_start, block, bk, threshold)
                if threshold else None)
        pd_QxK, ds_QxK = _probs_and_grad(q_QxH, k_KxH, v_KxH, do_QxH, lse_ref[rows],
                                         delta_ref[rows], keymask_K, keep, scale=scale,
                                         keep_scale=keep_scale)
        dv_KxH = dv_KxH + jnp.dot(pd_QxK.T.astype(do_QxH.dtype), do_QxH,
                                  preferred_element_type=jnp.float32)
        dk_KxH = dk_KxH + jnp.dot(ds_QxK.T.astype(q_QxH.dtype), q_QxH,
                                  preferred_element_type=jnp.float32) * scale
        return dk_KxH, dv_KxH

    zeros = jnp.zeros((bk, head_dim), jnp.float32)
    dk_KxH, dv_KxH = jax.lax.fori_loop(0, seq // block, body, (zeros, zeros))
    dk_ref[...] = dk_KxH.astype(dk_ref.dtype)
    dv_ref[...] = dv_KxH.astype(dv_ref.dtype)


def _bwd_q_kernel(stream_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, keymask_ref,
                  dq_ref, *, scale: float, block: int, threshold: int,
                  keep_scale: float) -> None:
    bq, head_dim = q_ref.shape
    seq = k_ref.shape[0]
    head = _head_index()
    q_start = pl.program_id(2) * bq
    q_QxH, do_QxH, lse_Q, delta_Q = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

    def body(j, dq_QxH):
        k_start = j * block
        cols = pl.ds(k_start, block)
        k_KxH = k_ref[cols, :]
        keep = (_keep_block(stream_ref, head, q_start, k_start, bq, block, threshold)
                if threshold else None)
        _, ds_QxK = _probs_and_grad(q_QxH, k_KxH, v_ref[cols, :], do_QxH, lse_Q, delta_Q,
                                    keymask_ref[cols], keep, scale=scale,
                                    keep_scale=keep_scale)
        return dq_QxH + jnp.dot(ds_QxK.astype(k_KxH.dtype), k_KxH,
                                preferred_element_type=jnp.float32) * scale

    dq_QxH = jax.lax.fori_loop(0, seq // block, body, jnp.zeros((bq, head_dim), jnp.float32))
    dq_ref[...] = dq_QxH.astype(dq_ref.dtype)


def _specs(B: int, N: int, S: int, H: int, block: int):
    """Block specs over the grid (batch, head, block): a block of rows, a whole sequence,
    per-row vectors, a block's or a whole sequence's key mask, and the stream hash."""
    rows = pl.BlockSpec((None, None, block, H), lambda b, n, i: (b, n, i, 0))
    whole = pl.BlockSpec((None, None, S, H), lambda b, n, i: (b, n, 0, 0))
    row_vec = pl.BlockSpec((None, None, block), lambda b, n, i: (b, n, i))
    whole_vec = pl.BlockSpec((None, None, S), lambda b, n, i: (b, n, 0))
    keymask = pl.BlockSpec((None, S), lambda b, n, i: (b, 0))
    stream = pl.BlockSpec((1,), lambda b, n, i: (0,))
    return rows, whole, row_vec, whole_vec, keymask, stream


def _interpret() -> bool:
    """Compiled on GPUs (Triton); interpreted elsewhere (CPU). TPUs are refused up front."""
    return jax.default_backend() != "gpu"


def _call(kernel, **kwargs):
    """pl.pallas_call, interpreted off GPU/TPU; on GPUs through Triton, whose block programs
    (one block of rows, loops over whole-sequence refs) these kernels are written as."""
    params = None
    if jax.default_backend() == "gpu":
        from jax.experimental.pallas import triton as pltriton  # GPU only; 0.2 s to import

        params = pltriton.CompilerParams(num_warps=4, num_stages=2)
    return pl.pallas_call(kernel, interpret=_interpret(), compiler_params=params, **kwargs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q_BxNxSxH, k_BxNxSxH, v_BxNxSxH, keymask_BxS, stream_1, rate: float, block: int):
    return _flash_fwd(q_BxNxSxH, k_BxNxSxH, v_BxNxSxH, keymask_BxS, stream_1, rate, block)[0]


def _kernel_args(rate: float, block: int, head_dim: int) -> dict:
    return dict(scale=1.0 / math.sqrt(head_dim), block=block, threshold=_threshold(rate),
                keep_scale=1.0 / (1.0 - rate) if rate < 1.0 else 0.0)


def _flash_fwd(q, k, v, keymask, stream, rate, block):
    B, N, S, H = q.shape
    rows, whole, row_vec, _, keymask_spec, stream_spec = _specs(B, N, S, H, block)
    o, lse = _call(
        functools.partial(_fwd_kernel, **_kernel_args(rate, block, H)),
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((B, N, S), jnp.float32)),
        grid=(B, N, S // block),
        in_specs=[stream_spec, rows, whole, whole, keymask_spec],
        out_specs=(rows, row_vec),
        name="jaxpet_flash_fwd",
    )(stream, q, k, v, keymask)
    return o, (q, k, v, keymask, stream, o, lse)


def _flash_bwd(rate, block, residuals, do):
    q, k, v, keymask, stream, o, lse = residuals
    B, N, S, H = q.shape
    rows, whole, row_vec, whole_vec, keymask_spec, stream_spec = _specs(B, N, S, H, block)
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
    args = _kernel_args(rate, block, H)
    grid = (B, N, S // block)
    dk, dv = _call(
        functools.partial(_bwd_kv_kernel, **args),
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)),
        grid=grid,
        in_specs=[stream_spec, whole, rows, rows, whole, whole_vec, whole_vec, keymask_spec],
        out_specs=(rows, rows),
        name="jaxpet_flash_bwd_kv",
    )(stream, q, k, v, do, lse, delta, keymask)
    dq = _call(
        functools.partial(_bwd_q_kernel, **args),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=grid,
        in_specs=[stream_spec, rows, whole, whole, rows, row_vec, row_vec, keymask_spec],
        out_specs=rows,
        name="jaxpet_flash_bwd_q",
    )(stream, q, k, v, do, lse, delta, keymask)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def pallas_attention(q_BxSxNxH: jax.Array, k_BxSxNxH: jax.Array, v_BxSxNxH: jax.Array,
                     mask_BxS: jax.Array | None = None, *, dropout_rate: float = 0.0,
                     seed: jax.Array | int = 0, step: jax.Array | int = 0,
                     block: int = _BLOCK) -> jax.Array:
    """softmax(q k^T / sqrt(H) over unmasked keys, dropout) v as a fused Pallas kernel.

    Flash-attention style: each program holds one block of queries of one (batch, head) and
    walks the keys block by block with an online softmax, so no [S, S] score matrix is
    written to memory. Dropout (`dropout_rate` > 0) drops probability (b, n, q, k) where the
    counter-based hash of (seed, step, b, n, q, k) says so (`dropout_keep_mask` is the same
    mask in plain jnp) and scales the kept ones by 1 / (1 - rate); the softmax normaliser
    counts every unmasked key. The mask needs no random-number state and is the same on
    resume given the same seed and step.

    The backward pass is two Pallas kernels (dK/dV over key blocks, dQ over query blocks)
    that recompute the probabilities and the same hash mask from the saved log-sum-exp.
    Sequences are padded to a multiple of `block` inside (padding keys are masked). On GPUs
    the kernels compile through Triton (not yet timed there); on CPUs they run in Pallas
    interpret mode; TPUs are refused.
    """
    B, S, N, H = q_BxSxNxH.shape
    if jax.default_backend() == "tpu":
        # Mosaic TPU needs other block shapes than these Triton-style block programs.
        raise ValueError("attention 'pallas' runs on GPUs (and interpreted on CPUs), not on "
                         "TPUs: use model.attention 'xla' there")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if mask_BxS is None:
        mask_BxS = jnp.ones((B, S), jnp.int32)
    block = min(block, max(16, pl.next_power_of_2(S)))
    pad = -S % block
    keymask_BxS = jnp.pad(mask_BxS.astype(jnp.int32), ((0, 0), (0, pad)))

    def heads_first(x_BxSxNxH: jax.Array) -> jax.Array:
        return jnp.pad(x_BxSxNxH.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pad), (0, 0)))

    stream_1 = stream_hash(seed, step).reshape(1)
    o_BxNxSxH = _flash(heads_first(q_BxSxNxH), heads_first(k_BxSxNxH), heads_first(v_BxSxNxH),
                       keymask_BxS, stream_1, float(dropout_rate), block)
    return o_BxNxSxH[:, :, :S].transpose(0, 2, 1, 3)
