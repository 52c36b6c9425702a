"""Tree verification in one engine's V1 runner: installed by the tree proposer on its runner.

The wrappers are instance attributes of that runner, so other engines in the process (chains,
other methods, no speculation) run vLLM's methods. ``_prepare_inputs``: after vLLM computed
slots from linear positions, the scheduled trees' nodes move to root + depth (the proposer's
:class:`~vllm_vispec.tree.step.TreeStep`, which the target's attention hooks read). ``_sample``:
vLLM's rejection sampler runs as always, then each tree's rows are replaced by the tree walk's
and the accepted nodes' KV is moved next to the root. ``take_draft_token_ids``: each request's
draft list is cut to what the proposal drafted for it (a tree, a chain, or nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vllm_vispec.tree.proposal import Proposal
from vllm_vispec.tree.step import TreeStep

if TYPE_CHECKING:
    from vllm_vispec.runners.v1.tree_proposer import ViSpecTreeProposer


def _tree_step(runner: Any, proposal: Proposal | None, scheduler_output: Any) -> TreeStep | None:
    """The step verifying ``proposal``'s trees, as the scheduler kept them."""
    if proposal is None or not proposal.parents:
        return None
    batch = runner.input_batch
    scheduled = scheduler_output.scheduled_spec_decode_tokens
    rows, starts, bases, parents, tokens = [], [], [], [], []
    query_starts = runner.query_start_loc.np
    for row, req_id in enumerate(batch.req_ids):
        tree = proposal.parents.get(req_id)
        drafted = scheduled.get(req_id)
        if tree is None or not drafted:
            continue
        # The root (last sampled token) and the nodes are the request's last scheduled tokens.
        before_root = scheduler_output.num_scheduled_tokens[req_id] - len(drafted) - 1
        rows.append(row)
        starts.append(int(query_starts[row]) + before_root)
        bases.append(int(batch.num_computed_tokens_cpu[row]) + before_root)
        parents.append(np.asarray(tree[: len(drafted) + 1]))
        tokens.append(drafted)
    if not rows:
        return None
    return TreeStep(rows, starts, bases, parents, tokens, runner.positions.device)


def install(runner: Any, drafter: ViSpecTreeProposer) -> None:
    """Wrap ``runner``'s ``_prepare_inputs``, ``_sample`` and ``take_draft_token_ids``."""
    prepare_inputs = runner._prepare_inputs
    sample = runner._sample
    take_drafts = runner.take_draft_token_ids

    def _prepare_inputs(scheduler_output: Any, num_scheduled_tokens: np.ndarray) -> Any:
        out = prepare_inputs(scheduler_output, num_scheduled_tokens)
        proposal, drafter.proposal = drafter.proposal, None
        drafter.step = step = _tree_step(runner, proposal, scheduler_output)
        if step is not None:
            total = scheduler_output.total_num_scheduled_tokens
            step.set_positions(runner.positions[:total])
            if runner.uses_mrope:
                step.set_positions(runner.mrope_positions.gpu[:, :total])
        return out

    def _sample(logits: Any, spec_decode_metadata: Any) -> Any:
        step = drafter.step
        if step is None or spec_decode_metadata is None:
            return sample(logits, spec_decode_metadata)
        node_logits = step.node_logits(logits, spec_decode_metadata.num_draft_tokens)
        out = sample(logits, spec_decode_metadata)
        step.verify(node_logits, runner.input_batch.sampling_metadata, out.sampled_token_ids)
        if out.logprobs_tensors is not None:
            step.write_logprobs(node_logits, out.logprobs_tensors, runner.rejection_sampler)
        step.compact()
        return out

    def take_draft_token_ids() -> Any:
        out = take_drafts()
        proposal = drafter.proposal
        if out is not None and proposal is not None:
            for req_id, drafts in zip(out.req_ids, out.draft_token_ids, strict=True):
                del drafts[proposal.lengths.get(req_id, len(drafts)) :]
        return out

    runner._prepare_inputs = _prepare_inputs
    runner._sample = _sample
    runner.take_draft_token_ids = take_draft_token_ids
