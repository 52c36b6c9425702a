"""The target's pick at every tree node with V1's sampling state, and the logprobs it reports.

Tree verification (:class:`~vllm_vispec.tree.verify.TreeVerify`) needs one token per node, chosen
exactly as vLLM's V1 rejection sampler chooses at a chain's rows: the same penalties, allowed
tokens and bad words (each node with its own history: its ancestors, not the nodes before it in
the flat list), then the argmax or a draw from the target's distribution.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.ops.bad_words import apply_bad_words
from vllm.v1.sample.ops.penalties import apply_all_penalties
from vllm.v1.sample.ops.topk_topp_sampler import random_sample
from vllm.v1.sample.rejection_sampler import apply_sampling_constraints

from vllm_vispec.tree.verify import TreeVerify


def pick_nodes(
    verify: TreeVerify, node_logits: torch.Tensor, meta: SamplingMetadata
) -> torch.Tensor:
    """One token per node (flat order): the argmax for greedy requests, else a draw after
    temperature, top-k and top-p, with each seeded request's generator on its nodes."""
    logits = _constrain(verify, node_logits.clone(), meta)
    greedy = logits.argmax(dim=-1)
    if meta.all_greedy:
        return greedy
    counts = torch.zeros(meta.temperature.shape[0], dtype=torch.long, device=verify.device)
    counts[verify.batch_rows] = verify.num_nodes
    processed = apply_sampling_constraints(logits, counts.cumsum(0), meta)
    probs = processed.softmax(dim=-1, dtype=torch.float32)
    row_batch = verify.batch_rows[verify.tree_of]
    generators = {
        i: meta.generators[b] for i, b in enumerate(row_batch.tolist()) if b in meta.generators
    }
    drawn = random_sample(probs, generators)
    is_greedy = meta.temperature[row_batch] < 1e-5
    return torch.where(is_greedy, greedy, drawn)


def _constrain(verify: TreeVerify, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Penalties, allowed tokens and bad words at every node. min_tokens and thinking budgets
    take chains (the tree proposer never drafts a tree for them)."""
    rows = verify.batch_rows[verify.tree_of]
    history = None
    if not meta.no_penalties or meta.bad_words_token_ids:
        history = verify.histories(meta.output_token_ids)
    if not meta.no_penalties:
        assert meta.prompt_token_ids is not None and history is not None
        logits = apply_all_penalties(
            logits,
            meta.prompt_token_ids[rows],
            meta.presence_penalties[rows],
            meta.frequency_penalties[rows],
            meta.repetition_penalties[rows],
            history,
        )
    if meta.allowed_token_ids_mask is not None:
        logits.masked_fill_(meta.allowed_token_ids_mask[rows], float("-inf"))
    if meta.bad_words_token_ids:
        assert history is not None
        words = meta.bad_words_token_ids
        per_node = {i: words[b] for i, b in enumerate(rows.tolist()) if b in words}
        apply_bad_words(logits, per_node, history)
    return logits


def write_logprobs(
    verify: TreeVerify, node_logits: torch.Tensor, logprobs: Any, sampler: Any
) -> None:
    """Replace the tree requests' rows of vLLM's ``LogprobsTensors`` (request b's token j at
    row b * width + j) by the target's log-probabilities at the accepted path's nodes."""
    tree, j, node, tokens = verify.accepted()
    width = logprobs.selected_token_ranks.shape[0] // verify.sampling_rows
    rows = verify.batch_rows[tree] * width + j
    lp = node_logits[node]
    if not sampler.is_logits_logprobs_mode:
        lp = sampler.sampler.compute_logprobs(lp)
    k = logprobs.logprobs.shape[1] - 1
    mine = sampler.sampler.gather_logprobs(lp, k, tokens)
    logprobs.logprob_token_ids[rows] = mine.logprob_token_ids.to(logprobs.logprob_token_ids)
    logprobs.logprobs[rows] = mine.logprobs.to(logprobs.logprobs)
    logprobs.selected_token_ranks[rows] = mine.selected_token_ranks.to(
        logprobs.selected_token_ranks
    )
