"""Distillation losses that pull the draft towards the frozen target, and the recipes using them.

Every loss is per row (one draft position) so the trainer can mask it to answer positions. The
recipes are the published ones (ViSpec, Kang et al., NeurIPS 2025; SpecVLM,
arXiv 2509.11815):

* ``specvlm``: online-logit distillation, ``0.1 * CE(teacher probs, draft) + 1.0 * SmoothL1``.
* ``vispec-stage1``: the EAGLE recipe ViSpec starts from, text-only data,
  ``SmoothL1 + 0.1 * (CE + 0.1 * ranking)``.
* ``vispec-stage2``: ``10 * mean |softmax(draft) - softmax(target)| + 0.1 * ranking`` over the
  target's top-10 tokens.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms; a zero weight skips the term's computation."""

    ce: float = 0.0
    feature: float = 0.0
    l1: float = 0.0
    rank: float = 0.0
    rank_k: int = 10


RECIPES: dict[str, LossWeights] = {
    "specvlm": LossWeights(ce=0.1, feature=1.0),
    "vispec-stage1": LossWeights(ce=0.1, feature=1.0, rank=0.01),
    "vispec-stage2": LossWeights(l1=10.0, rank=0.1),
}


def soft_cross_entropy(draft_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the draft against the teacher's whole distribution, per row."""
    teacher = teacher_logits.float().softmax(-1)
    return -(teacher * draft_logits.float().log_softmax(-1)).sum(-1)


def feature_loss(draft_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """SmoothL1 between the draft's output features and the target's next hidden state, per row."""
    return F.smooth_l1_loss(draft_hidden.float(), teacher_hidden.float(), reduction="none").mean(-1)


def distribution_l1(draft_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the two probability vectors, per row (ViSpec stage 2)."""
    return (draft_logits.float().softmax(-1) - teacher_logits.float().softmax(-1)).abs().mean(-1)


def topk_ranking(draft_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Pairwise logistic loss asking the draft to order the teacher's top-k tokens as it does.

    For consecutive teacher ranks ``i < j`` it penalises ``softplus(draft[j] - draft[i])``: small
    once the draft scores the better token higher, so greedy drafting picks the target's choice.
    """
    k = min(k, teacher_logits.shape[-1])
    top = teacher_logits.topk(k, dim=-1).indices
    ranked = draft_logits.float().gather(-1, top)
    return F.softplus(ranked[..., 1:] - ranked[..., :-1]).mean(-1)


def row_losses(
    draft_logits: torch.Tensor,
    draft_hidden: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss of every row [N], and each term's per-row values."""
    terms: dict[str, torch.Tensor] = {}
    if weights.ce:
        terms["ce"] = soft_cross_entropy(draft_logits, teacher_logits)
    if weights.feature:
        terms["feature"] = feature_loss(draft_hidden, teacher_hidden)
    if weights.l1:
        terms["l1"] = distribution_l1(draft_logits, teacher_logits)
    if weights.rank:
        terms["rank"] = topk_ranking(draft_logits, teacher_logits, weights.rank_k)
    if not terms:
        raise ValueError("every loss weight is zero; nothing to train")
    return sum(getattr(weights, name) * value for name, value in terms.items()), terms
