"""PyTorch reference PET train steps for the benchmark: the original PET's way and a fused one.

(a) `original`: what the original PET does each step: the labeled batch through the full MLM
    head at every position (scores read at the mask afterwards), then the unlabeled batch
    through a second forward/backward with the model's own MLM loss, fp32, fixed padding.
(b) `fused`: jaxpet's algorithm written in PyTorch: one forward/backward over labeled and
    unlabeled rows together, the MLM head only at the mask slots and the MLM targets.
Both compute the same loss as jaxpet's `pet_loss` on the same weights and batch, so the
benchmark compares equal work. Batches are dicts of torch tensors holding jaxpet's arrays plus
the materialised MLM masking (`unlabeled_mlm_positions/targets/weights` and the HF-style
`unlabeled_mlm_labels`). torch is imported lazily: it is only a test/bench dependency.
"""

from typing import Any

import numpy as np


def _torch():
    # torch is not a jaxpet dependency: only the PyTorch reference way needs it
    import torch

    return torch


def _label_scores(mask_logits_BxV, verbalizer_ids_LxW):
    """Mean raw logit of each label's words, ignoring -1 padding words."""
    torch = _torch()
    ids_LxW = torch.as_tensor(verbalizer_ids_LxW, dtype=torch.long, device=mask_logits_BxV.device)
    valid_LxW = (ids_LxW >= 0).to(mask_logits_BxV.dtype)
    gathered_BxLxW = mask_logits_BxV[:, ids_LxW.clamp(min=0)]
    return (gathered_BxLxW * valid_LxW).sum(-1) / valid_LxW.sum(-1)


def mlm_labels(
    positions_BxP: np.ndarray, targets_BxP: np.ndarray, weights_BxP: np.ndarray, seq_len: int
) -> np.ndarray:
    """HF-style MLM labels [B,S] (-100 = ignored) from jaxpet's target slots [B,P]."""
    labels_BxS = np.full((positions_BxP.shape[0], seq_len), -100, dtype=np.int64)
    rows, slots = np.nonzero(weights_BxP > 0)
    labels_BxS[rows, positions_BxP[rows, slots]] = targets_BxP[rows, slots]
    return labels_BxS


def original_pet_loss(model: Any, batch: dict[str, Any], verbalizer_ids_LxW, alpha: float):
    """Loss of the original PET's step; returns (total, cloze, mlm) with two separate graphs."""
    torch = _torch()
    t = batch.__getitem__
    logits_BxSxV = model(
        input_ids=t("input_ids"),
        attention_mask=t("attention_mask"),
        token_type_ids=t("token_type_ids"),
    ).logits
    rows = torch.arange(logits_BxSxV.shape[0], device=logits_BxSxV.device)
    mask_logits_BxV = logits_BxSxV[rows, t("mask_positions")[:, 0].long()]
    cloze = torch.nn.functional.cross_entropy(
        _label_scores(mask_logits_BxV, verbalizer_ids_LxW), t("labels").long()
    )
    mlm = model(
        input_ids=t("unlabeled_input_ids"),
        attention_mask=t("unlabeled_attention_mask"),
        token_type_ids=t("unlabeled_token_type_ids"),
        labels=t("unlabeled_mlm_labels"),
    ).loss
    return (1 - alpha) * cloze + alpha * mlm, cloze, mlm


def fused_pet_loss(model: Any, batch: dict[str, Any], verbalizer_ids_LxW, alpha: float):
    """The same loss from one forward pass with the head only where a loss reads it."""
    torch = _torch()
    t = batch.__getitem__
    encoder = getattr(model, model.base_model_prefix)
    hidden_BxSxD = encoder(
        input_ids=torch.cat([t("input_ids"), t("unlabeled_input_ids")]),
        attention_mask=torch.cat([t("attention_mask"), t("unlabeled_attention_mask")]),
        token_type_ids=torch.cat([t("token_type_ids"), t("unlabeled_token_type_ids")]),
    ).last_hidden_state
    num_labeled = batch["input_ids"].shape[0]
    mask_positions_Bx1 = t("mask_positions")[:, :1].long().clamp(min=0)
    mlm_positions_UxP = t("unlabeled_mlm_positions").long()
    head = model.cls if hasattr(model, "cls") else model.lm_head
    labeled_hidden_Bx1xD = torch.gather(
        hidden_BxSxD[:num_labeled],
        1,
        mask_positions_Bx1[..., None].expand(-1, -1, hidden_BxSxD.shape[-1]),
    )
    unlabeled_hidden_UxPxD = torch.gather(
        hidden_BxSxD[num_labeled:],
        1,
        mlm_positions_UxP[..., None].expand(-1, -1, hidden_BxSxD.shape[-1]),
    )
    mask_logits_BxV = head(labeled_hidden_Bx1xD)[:, 0]
    cloze = torch.nn.functional.cross_entropy(
        _label_scores(mask_logits_BxV, verbalizer_ids_LxW), t("labels").long()
    )
    mlm_logits_UxPxV = head(unlabeled_hidden_UxPxD)
    weights_UxP = t("unlabeled_mlm_weights").float()
    token_nll_UxP = torch.nn.functional.cross_entropy(
        mlm_logits_UxPxV.flatten(0, 1),
        t("unlabeled_mlm_targets").long().clamp(min=0).flatten(),
        reduction="none",
    ).view(weights_UxP.shape)
    mlm = (token_nll_UxP * weights_UxP).sum() / weights_UxP.sum().clamp(min=1.0)
    return (1 - alpha) * cloze + alpha * mlm, cloze, mlm


def make_torch_step(model: Any, way: str, verbalizer_ids_LxW, alpha: float, learning_rate: float):
    """A full train step (loss, backward, clip, AdamW) for way 'original' or 'fused'."""
    torch = _torch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, eps=1e-8, weight_decay=0.01)
    model.train()

    def step(batch: dict[str, Any]) -> float:
        optimizer.zero_grad(set_to_none=True)
        if way == "original":
            loss, _, _ = original_pet_loss(model, batch, verbalizer_ids_LxW, alpha)
        elif way == "fused":
            loss, _, _ = fused_pet_loss(model, batch, verbalizer_ids_LxW, alpha)
        else:
            raise ValueError(f"unknown torch way {way!r}; expected 'original' or 'fused'")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return float(loss.detach())

    return step
