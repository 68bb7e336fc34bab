"""K-step multi-mask decoding: scoring multi-token candidates as the original PET evaluates them.

Every row and every step run in one compiled program: the K fill steps are a `lax.fori_loop`
with a fixed trip count and rows that have no mask left are masked. Scoring also shares the
first forward pass between identical candidate inputs (as PET's length groups do) and runs
later steps only on the rows that still have masks, padded to a few static sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# logits_fn(input_ids [M, S], attention_mask [M, S], positions [M, K]) -> [M, K, V]; called with
# token_type_ids=... as a keyword when the caller passes token type ids.
LogitsFn = Callable[..., Array]
STRATEGIES = ("max_first", "ltr", "parallel")


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {strategy!r}; expected one of {STRATEGIES}")


def call_at_masks(logits_fn: LogitsFn, ids_MxS, attn_MxS, pos_MxK, tt_MxS) -> Array:
    safe_pos_MxK = jnp.maximum(pos_MxK, 0)
    if tt_MxS is None:
        return logits_fn(ids_MxS, attn_MxS, safe_pos_MxK)
    return logits_fn(ids_MxS, attn_MxS, safe_pos_MxK, token_type_ids=tt_MxS)


def _target_log_probs(logits_MxKxV: Array, tgt_MxK: Array) -> Array:
    """log softmax over the full vocabulary, read at each slot's target token -> [M, K]."""
    logits_MxKxV = logits_MxKxV.astype(jnp.float32)
    log_z_MxK = jax.nn.logsumexp(logits_MxKxV, axis=-1)
    picked_MxK = jnp.take_along_axis(logits_MxKxV, jnp.maximum(tgt_MxK, 0)[..., None], -1)[..., 0]
    return picked_MxK - log_z_MxK


def _row_log_probs(logits_fn: LogitsFn, ids_MxS, attn_MxS, pos_MxK, tt_MxS, tok_MxK) -> Array:
    return _target_log_probs(call_at_masks(logits_fn, ids_MxS, attn_MxS, pos_MxK, tt_MxS), tok_MxK)


def _rows_equal(x_NxCxD: Array) -> Array:
    return jnp.all(x_NxCxD[:, :, None, :] == x_NxCxD[:, None, :, :], axis=-1)


def _first_pass_shared(
    logits_fn, ids_NxCxS, attn_NxCxS, pos_NxCxK, tt_NxCxS, tgt_NxCxK, valid_NxC, num_groups: int
) -> Array:
    """Step-0 target log-probs computing one forward per distinct input row of each example.

    Rows of an example whose input ids, attention mask, mask positions (and token type ids)
    are identical share one forward pass. With G = num_groups forwards per example allowed
    statically, an example with more distinct inputs makes the whole batch fall back to one
    forward per row (lax.cond picks the branch at run time), so the result never changes.
    """
    num_ex, num_cand, _ = ids_NxCxS.shape
    num_masks = pos_NxCxK.shape[-1]
    same_NxCxC = _rows_equal(ids_NxCxS) & _rows_equal(attn_NxCxS) & _rows_equal(pos_NxCxK)
    if tt_NxCxS is not None:
        same_NxCxC = same_NxCxC & _rows_equal(tt_NxCxS)
    cand_C = jnp.arange(num_cand)
    earlier_CxC = cand_C[None, :] < cand_C[:, None]
    repeats_NxC = jnp.any(same_NxCxC & earlier_CxC[None] & valid_NxC[:, None, :], axis=-1)
    leader_NxC = valid_NxC & ~repeats_NxC
    rank_NxC = jnp.cumsum(leader_NxC, axis=-1) - 1
    overflow = jnp.any(jnp.sum(leader_NxC, axis=-1) > num_groups)
    # Each valid row's group is the rank of the (unique) leader it equals.
    leader_of_NxC = jnp.argmax(same_NxCxC & leader_NxC[:, None, :], axis=-1)
    group_NxC = jnp.maximum(jnp.take_along_axis(rank_NxC, leader_of_NxC, axis=-1), 0)
    group_G = jnp.arange(num_groups)
    is_rep_NxGxC = leader_NxC[:, None, :] & (rank_NxC[:, None, :] == group_G[None, :, None])
    rep_NxG = jnp.argmax(is_rep_NxGxC, axis=-1)

    def gather_rows(x_NxCxD):
        return jnp.take_along_axis(x_NxCxD, rep_NxG[..., None], axis=1).reshape(
            num_ex * num_groups, -1
        )

    def shared():
        tt = None if tt_NxCxS is None else gather_rows(tt_NxCxS)
        logits = call_at_masks(logits_fn, gather_rows(ids_NxCxS), gather_rows(attn_NxCxS),
                       gather_rows(pos_NxCxK), tt)
        logits_NxGxKxV = logits.astype(jnp.float32).reshape(num_ex, num_groups, num_masks, -1)
        log_z_NxGxK = jax.nn.logsumexp(logits_NxGxKxV, axis=-1)
        # Every group's logits at every row's targets, then each row keeps its own group's.
        tgt_Nx1xCxKx1 = jnp.maximum(tgt_NxCxK, 0)[:, None, :, :, None]
        picked_NxGxCxK = jnp.take_along_axis(
            logits_NxGxKxV[:, :, None], tgt_Nx1xCxKx1, axis=-1
        )[..., 0]
        lp_NxGxCxK = picked_NxGxCxK - log_z_NxGxK[:, :, None, :]
        lp_NxCxK = jnp.take_along_axis(lp_NxGxCxK, group_NxC[:, None, :, None], axis=1)[:, 0]
        return lp_NxCxK.reshape(-1, num_masks)

    def per_row():
        rows = [None if x is None else x.reshape(num_ex * num_cand, -1)
                for x in (ids_NxCxS, attn_NxCxS, pos_NxCxK, tt_NxCxS, tgt_NxCxK)]
        return _row_log_probs(logits_fn, *rows)

    return jax.lax.cond(overflow, per_row, shared)


def _pick(x_MxK: Array, choice_M: Array) -> Array:
    return jnp.take_along_axis(x_MxK, choice_M[:, None], axis=-1)[:, 0]


def write_tokens(ids_MxS: Array, pos_M: Array, tok_M: Array, write_M: Array) -> Array:
    """ids[m, pos[m]] = tok[m] where write[m]; elementwise, so row-sharded arrays stay local."""
    hit_MxS = (jnp.arange(ids_MxS.shape[1])[None, :] == pos_M[:, None]) & write_M[:, None]
    return jnp.where(hit_MxS, tok_M[:, None].astype(ids_MxS.dtype), ids_MxS)


def leftmost_slot(remaining_MxK: Array, pos_MxK: Array) -> Array:
    """The remaining slot with the smallest input position (slots need not be sorted)."""
    return jnp.argmin(jnp.where(remaining_MxK, pos_MxK, jnp.iinfo(jnp.int32).max), axis=-1)


def _fill_one(strategy: str, ids_MxS, remaining_MxK, score_M, lp_MxK, pos_MxK, tok_MxK):
    """Fill one mask per unfinished row; add its log p to the row's score."""
    if strategy == "max_first":
        choice_M = jnp.argmax(jnp.where(remaining_MxK, lp_MxK, -jnp.inf), axis=-1)
    else:
        choice_M = leftmost_slot(remaining_MxK, pos_MxK)
    active_M = jnp.any(remaining_MxK, axis=-1)
    score_M = score_M + jnp.where(active_M, _pick(lp_MxK, choice_M), 0.0)
    ids_MxS = write_tokens(ids_MxS, _pick(pos_MxK, choice_M), _pick(tok_MxK, choice_M), active_M)
    filled_MxK = jax.nn.one_hot(choice_M, lp_MxK.shape[-1], dtype=bool) & active_M[:, None]
    return ids_MxS, remaining_MxK & ~filled_MxK, score_M


def _forward_active_rows(
    logits_fn: LogitsFn,
    row_buckets: int,
    row_blocks: int,
    ids_MxS,
    active_M,
    *,
    attn_MxS,
    pos_MxK,
    tt_MxS,
    tok_MxK,
) -> Array:
    """Target log-probs [M, K] of the rows that still have masks; other rows get 0.

    Rows finish at different steps (a candidate of n tokens needs n forwards), so the forward
    runs on the smallest of `row_buckets` static sizes R, R/2, R/4, ... per block of R = M /
    row_blocks rows that holds every block's active rows (gathered to the block's front), and
    is skipped when no row is active. Compaction never moves a row out of its block, so with
    one block per device of a row-sharded mesh no row crosses devices. Each size is one branch
    of a lax.switch, compiled once.
    """
    num_rows, num_masks = pos_MxK.shape
    block = num_rows // row_blocks

    def blocked(x):
        return x.reshape(row_blocks, block, *x.shape[1:])

    sizes = sorted({-(-block // 2**i) for i in range(max(row_buckets, 1))}, reverse=True)
    active_DxR = blocked(active_M)
    order_DxR = jnp.argsort(~active_DxR, axis=-1, stable=True)  # active rows first
    inverse_DxR = jnp.argsort(order_DxR, axis=-1)

    def run(size: int) -> Callable[[], Array]:
        def branch() -> Array:
            if size == block:
                return _row_log_probs(logits_fn, ids_MxS, attn_MxS, pos_MxK, tt_MxS, tok_MxK)
            rows_DxP = order_DxR[:, :size]

            def gather(x):
                if x is None:
                    return None
                x_DxRxF = blocked(x)
                idx = rows_DxP.reshape(*rows_DxP.shape, *([1] * (x_DxRxF.ndim - 2)))
                return jnp.take_along_axis(x_DxRxF, idx, axis=1).reshape(-1, *x.shape[1:])

            lp_PxK = _row_log_probs(logits_fn, *map(gather, (ids_MxS, attn_MxS, pos_MxK, tt_MxS,
                                                              tok_MxK)))
            lp_DxPxK = lp_PxK.reshape(row_blocks, size, num_masks)
            padded_DxRxK = jnp.pad(lp_DxPxK, ((0, 0), (0, block - size), (0, 0)))
            lp_DxRxK = jnp.take_along_axis(padded_DxRxK, inverse_DxR[..., None], axis=1)
            return lp_DxRxK.reshape(num_rows, num_masks)

        return branch

    def idle() -> Array:
        return jnp.zeros(pos_MxK.shape, jnp.float32)

    most_active = jnp.max(jnp.sum(active_DxR, axis=-1))
    # sizes are descending: the branch index is the last size that still holds every active row.
    index = jnp.sum(jnp.asarray(sizes) >= most_active) - 1
    index = jnp.where(most_active == 0, len(sizes), index)
    return jax.lax.switch(index, [run(size) for size in sizes] + [idle])


def _decode(
    logits_fn: LogitsFn,
    strategy: str,
    reuse_first_pass: bool,
    row_buckets: int,
    row_blocks: int,
    input_ids_NxCxS: Array,
    attention_mask_NxCxS: Array,
    mask_positions_NxCxK: Array,
    target_ids_NxCxK: Array,
    candidate_mask_NxC: Array | None,
    token_type_ids_NxCxS: Array | None,
) -> Array:
    num_ex, num_cand, _ = input_ids_NxCxS.shape
    num_masks = mask_positions_NxCxK.shape[-1]
    is_mask_NxCxK = mask_positions_NxCxK >= 0
    valid_NxC = jnp.any(is_mask_NxCxK, axis=-1)
    if candidate_mask_NxC is not None:
        valid_NxC = valid_NxC & candidate_mask_NxC.astype(bool)

    ids_MxS, attn_MxS, pos_MxK, tt_MxS, tgt_MxK = [
        None if x is None else x.reshape(num_ex * num_cand, -1)
        for x in (input_ids_NxCxS, attention_mask_NxCxS, mask_positions_NxCxK,
                  token_type_ids_NxCxS, target_ids_NxCxK)
    ]
    tok_MxK = jnp.maximum(tgt_MxK, 0)
    num_groups = min(num_cand, num_masks)
    if reuse_first_pass and num_groups < num_cand:
        lp0_MxK = _first_pass_shared(
            logits_fn, input_ids_NxCxS, attention_mask_NxCxS, mask_positions_NxCxK,
            token_type_ids_NxCxS, target_ids_NxCxK, valid_NxC, num_groups,
        )
    else:
        lp0_MxK = _row_log_probs(logits_fn, ids_MxS, attn_MxS, pos_MxK, tt_MxS, tok_MxK)

    remaining_MxK = is_mask_NxCxK.reshape(-1, num_masks)
    if strategy == "parallel":
        score_M = jnp.sum(jnp.where(remaining_MxK, lp0_MxK, 0.0), axis=-1)
    else:
        fill = partial(_fill_one, strategy, pos_MxK=pos_MxK, tok_MxK=tok_MxK)
        score_M = jnp.zeros(remaining_MxK.shape[0], jnp.float32)
        ids_MxS, remaining_MxK, score_M = fill(ids_MxS, remaining_MxK, score_M, lp0_MxK)
        forward = partial(_forward_active_rows, logits_fn, row_buckets, row_blocks,
                          attn_MxS=attn_MxS, pos_MxK=pos_MxK, tt_MxS=tt_MxS, tok_MxK=tok_MxK)

        def step(_, state):
            ids_MxS, remaining_MxK, score_M = state
            lp_MxK = forward(ids_MxS, jnp.any(remaining_MxK, axis=-1))
            return fill(ids_MxS, remaining_MxK, score_M, lp_MxK)

        _, _, score_M = jax.lax.fori_loop(1, num_masks, step, (ids_MxS, remaining_MxK, score_M))
    scores_NxC = score_M.reshape(num_ex, num_cand)
    return jnp.where(valid_NxC, scores_NxC, -jnp.inf)


_decode_jit = jax.jit(_decode, static_argnums=(0, 1, 2, 3, 4))


def _check_candidates(mask_positions_NxCxK, target_ids_NxCxK, input_ids_NxCxS) -> None:
    """Shape and consistency checks (values only when the arrays are concrete)."""
    if input_ids_NxCxS.ndim != 3 or mask_positions_NxCxK.ndim != 3:
        raise ValueError(
            "multi_mask_decode expects input_ids [N, C, S] and mask_positions [N, C, K], got "
            f"{input_ids_NxCxS.shape} and {mask_positions_NxCxK.shape}"
        )
    if target_ids_NxCxK.shape != mask_positions_NxCxK.shape:
        raise ValueError(
            f"target_ids shape {target_ids_NxCxK.shape} differs from mask_positions shape "
            f"{mask_positions_NxCxK.shape}"
        )
    for x in (mask_positions_NxCxK, target_ids_NxCxK):
        if isinstance(x, jax.core.Tracer) or (
            isinstance(x, jax.Array) and not x.is_fully_addressable
        ):
            return  # values are checked only where this process can read them all
    pos = np.asarray(mask_positions_NxCxK)
    tgt = np.asarray(target_ids_NxCxK)
    bad = np.argwhere((pos >= 0) != (tgt >= 0))
    if bad.size:
        n, c, k = bad[0]
        raise ValueError(
            f"row (example {n}, candidate {c}) slot {k}: mask position {pos[n, c, k]} and target "
            f"id {tgt[n, c, k]} disagree; every mask of a candidate row needs exactly one target "
            "token (use -1 for both in unused slots)"
        )


def _check_blocks(num_examples: int, row_blocks: int) -> None:
    if row_blocks < 1 or num_examples % row_blocks:
        raise ValueError(
            f"row_blocks={row_blocks} must be >= 1 and divide the number of examples "
            f"({num_examples})"
        )


def multi_mask_decode(
    logits_fn: LogitsFn,
    input_ids_NxCxS: Array,
    attention_mask_NxCxS: Array,
    mask_positions_NxCxK: Array,
    target_ids_NxCxK: Array,
    strategy: str = "max_first",
    candidate_mask_NxC: Array | None = None,
    token_type_ids: Array | None = None,
    reuse_first_pass: bool = True,
    row_buckets: int = 3,
    row_blocks: int = 1,
) -> Array:
    """Score each candidate by K-step mask filling, as the original PET's multi-mask evaluation.

    Row (n, c) is example n's input with exactly as many masks as candidate c has tokens;
    mask_positions_NxCxK lists them (-1 = unused slot) and target_ids_NxCxK the candidate's
    token for each. At every step the model is re-run on the row and one mask is filled with
    the candidate's own token: "max_first" picks the remaining mask where that token has the
    highest probability (softmax over the full vocabulary), "ltr" the leftmost remaining mask;
    "parallel" scores all masks from the first pass. The score is the sum of log p of each token
    at the step it was filled -> [N, C]; invalid candidates (no mask, or candidate_mask False)
    score -inf.

    reuse_first_pass computes the first forward pass once per distinct input row of an example
    (in PET, candidates of equal length share it) when C exceeds K; scores are identical.
    Later steps run the model only on rows that still have masks, padded to one of row_buckets
    static sizes (N*C, N*C/2, N*C/4, ...; 1 = always all rows); scores are identical. With
    row_blocks = D the rows are compacted within D equal blocks instead: on a mesh whose data
    axis splits N over D devices, pass D so that no row leaves its device.

    token_type_ids [N, C, S] (BERT/ALBERT segments; None for models without them) is passed to
    logits_fn as the keyword token_type_ids, the name the models and make_multi_mask_decoder use.

    logits_fn should be a stable object (created once): it is a static argument of the
    compiled program. To pass parameters as traced arguments use make_multi_mask_decoder or
    call this inside your own jax.jit. Inputs may be sharded along N (e.g. NamedSharding over a
    mesh's data axis); the program is compiled for that sharding.
    """
    check_strategy(strategy)
    _check_candidates(mask_positions_NxCxK, target_ids_NxCxK, input_ids_NxCxS)
    _check_blocks(input_ids_NxCxS.shape[0], row_blocks)
    return _decode_jit(
        logits_fn, strategy, reuse_first_pass, row_buckets, row_blocks, input_ids_NxCxS,
        attention_mask_NxCxS, mask_positions_NxCxK, target_ids_NxCxK, candidate_mask_NxC,
        token_type_ids,
    )


def make_multi_mask_decoder(
    apply_fn: Callable[..., Array],
    strategy: str = "max_first",
    reuse_first_pass: bool = True,
    row_buckets: int = 3,
    row_blocks: int = 1,
) -> Callable[..., Array]:
    """A jitted decode(params, input_ids, attention_mask, mask_positions, target_ids,
    candidate_mask=None, token_type_ids=None) -> [N, C], where apply_fn(params, ids, mask,
    positions, **kw) -> [M, K, V]. The parameters are traced, so new weights do not recompile.
    """
    check_strategy(strategy)

    @jax.jit
    def decode(params, input_ids, attention_mask, mask_positions, target_ids,
               candidate_mask=None, token_type_ids=None):
        _check_blocks(input_ids.shape[0], row_blocks)
        return _decode(partial(apply_fn, params), strategy, reuse_first_pass, row_buckets,
                       row_blocks, input_ids, attention_mask, mask_positions, target_ids,
                       candidate_mask, token_type_ids)

    return decode
