"""Tree verification in vLLM's V1 runner (``vispec.tree``): no effect on chain steps.

``_prepare_inputs``: after vLLM computed slots from linear positions, the tree requests' nodes
move to root + depth (:class:`~vllm_vispec.tree.step.TreeStep`). ``_model_forward``: the
target's attention layers mask tree rows (``tree_attention``). ``_sample``: vLLM's rejection
sampler runs as always, then each tree's rows are replaced by the tree walk's and the accepted
nodes' KV is moved next to the root. ``take_draft_token_ids``: each request's draft list is
cut to what the proposer drafted for it (a tree, a chain, or nothing).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vllm_vispec.tree.step import TreeStep


def _tree_step(runner: Any, scheduler_output: Any) -> TreeStep | None:
    from vllm_vispec.tree.step import TreeStep

    trees = getattr(runner.drafter, "trees", None)
    if not trees:
        return None
    batch = runner.input_batch
    scheduled = scheduler_output.scheduled_spec_decode_tokens
    rows, starts, bases, parents, tokens = [], [], [], [], []
    query_starts = runner.query_start_loc.np
    for row, req_id in enumerate(batch.req_ids):
        tree = trees.get(req_id)
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
    trees.clear()
    if not rows:
        return None
    return TreeStep(rows, starts, bases, parents, tokens, runner.positions.device)


def apply(module: ModuleType) -> None:
    from vllm_vispec.tree.step import verifying

    runner_cls = module.GPUModelRunner
    prepare_inputs = runner_cls._prepare_inputs
    model_forward = runner_cls._model_forward
    sample = runner_cls._sample
    take_drafts = runner_cls.take_draft_token_ids

    @functools.wraps(prepare_inputs)
    def _prepare_inputs(self: Any, scheduler_output: Any, num_scheduled_tokens: np.ndarray) -> Any:
        out = prepare_inputs(self, scheduler_output, num_scheduled_tokens)
        step = _tree_step(self, scheduler_output) if self.speculative_config else None
        if step is not None:
            total = scheduler_output.total_num_scheduled_tokens
            step.set_positions(self.positions[:total])
            if self.uses_mrope:
                step.set_positions(self.mrope_positions.gpu[:, :total])
        self._vispec_tree_step = step
        return out

    @functools.wraps(model_forward)
    def _model_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        with verifying(getattr(self, "_vispec_tree_step", None)):
            return model_forward(self, *args, **kwargs)

    @functools.wraps(sample)
    def _sample(self: Any, logits: Any, spec_decode_metadata: Any) -> Any:
        step = getattr(self, "_vispec_tree_step", None)
        if step is None or spec_decode_metadata is None:
            return sample(self, logits, spec_decode_metadata)
        node_logits = step.node_logits(logits, spec_decode_metadata.num_draft_tokens)
        out = sample(self, logits, spec_decode_metadata)
        step.verify(node_logits, self.input_batch.sampling_metadata, out.sampled_token_ids)
        if out.logprobs_tensors is not None:
            step.write_logprobs(node_logits, out.logprobs_tensors, self.rejection_sampler)
        step.compact()
        return out

    @functools.wraps(take_drafts)
    def take_draft_token_ids(self: Any) -> Any:
        out = take_drafts(self)
        lengths = getattr(getattr(self, "drafter", None), "draft_lengths", None)
        if out is not None and lengths:
            for req_id, drafts in zip(out.req_ids, out.draft_token_ids, strict=True):
                del drafts[lengths.get(req_id, len(drafts)) :]
        return out

    runner_cls._prepare_inputs = _prepare_inputs
    runner_cls._model_forward = _model_forward
    runner_cls._sample = _sample
    runner_cls.take_draft_token_ids = take_draft_token_ids
