"""Tree verification in one engine's V1 runner: the owner of each step's verification, and the
hooks that hand it the runner's state.

:class:`TreeVerifier` is the one object through which trees travel. Its named operations run in
the order vLLM's runner sets: the proposer :meth:`~TreeVerifier.offer`\\ s a
:class:`~vllm_vispec.tree.proposal.Proposal`; vLLM takes the drafts (:meth:`~TreeVerifier.cut`:
each request's list cut to its length); the next step's inputs are prepared
(:meth:`~TreeVerifier.begin`: a :class:`~vllm_vispec.tree.verify.TreeVerify` from what the
scheduler kept, nodes moved to root + depth); the target's attention layers run
(:meth:`~TreeVerifier.attend`: tree rows recomputed over their ancestors); vLLM samples
(:meth:`~TreeVerifier.verify`: the tree walk's rows, logprobs, KV compaction); the proposer's
next first pass takes the verified step (:meth:`~TreeVerifier.take_verified`: linear positions
back, the accepted paths read as chains).

The hooks are instance attributes of one runner and its target's attention implementations,
installed after the runner loads its model when its drafter drafts trees
(:mod:`~vllm_vispec.runners.v1.tree_hooks`): every other engine in the process runs vLLM's
methods. The CPU and Triton
attention backends are wrapped (their KV layouts are the ones
:func:`vllm_vispec.kernels.split_kv_cache` knows); start-up validation refuses trees with any
other backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.model_executor.layers.attention import Attention

from vllm_vispec.kernels.attention import layer_kv_cache
from vllm_vispec.runners.v1.tree_sampling import pick_nodes, write_logprobs
from vllm_vispec.tree.proposal import Proposal
from vllm_vispec.tree.verify import TreeVerify

# The backend implementations whose forward is wrapped (module, class); see the ledger.
BACKENDS = (
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackendImpl"),
    ("vllm.v1.attention.backends.triton_attn", "TritonAttentionImpl"),
)


class TreeVerifier:
    """Owns one engine's tree verification: the last proposal and the step verifying it."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self._proposal: Proposal | None = None  # until the next step's inputs are prepared
        self._step: TreeVerify | None = None  # from begin() until the proposer takes it

    def offer(self, proposal: Proposal) -> None:
        """The proposer's drafts of this step (a tree, a chain or nothing per request)."""
        self._proposal = proposal

    def cut(self, draft_token_ids: Any) -> Any:
        """vLLM's ``DraftTokenIds``, each request's list cut to what it drafted."""
        proposal = self._proposal
        if draft_token_ids is not None and proposal is not None:
            for req_id, drafts in zip(
                draft_token_ids.req_ids, draft_token_ids.draft_token_ids, strict=True
            ):
                del drafts[proposal.lengths.get(req_id, len(drafts)) :]
        return draft_token_ids

    def begin(self, scheduler_output: Any) -> None:
        """After vLLM computed slots from linear positions: this step's trees, as the
        scheduler kept them, with their nodes moved to root + depth."""
        proposal, self._proposal = self._proposal, None
        self._step = step = self._tree_step(proposal, scheduler_output)
        if step is not None:
            runner, total = self.runner, scheduler_output.total_num_scheduled_tokens
            step.set_positions(runner.positions[:total])
            if runner.uses_mrope:
                step.set_positions(runner.mrope_positions.gpu[:, :total])

    def attend(
        self,
        layer: torch.nn.Module,
        num_heads: int,
        scale: float,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: Any,
        output: torch.Tensor,
    ) -> None:
        """After a target attention layer's backend ran: its tree rows, tree-masked."""
        step = self._step
        if step is None or attn_metadata is None:
            return
        k_cache, v_cache = layer_kv_cache(layer, kv_cache)
        step.attend(
            query.view(query.shape[0], num_heads, -1),
            k_cache,
            v_cache,
            attn_metadata.block_table,
            attn_metadata.slot_mapping,
            output.view(output.shape[0], num_heads, -1),
            scale,
        )

    def verify(self, sample: Any, logits: torch.Tensor, spec_decode_metadata: Any) -> Any:
        """vLLM's sampling (``sample``) as always, then each tree's rows from the tree walk,
        their logprobs, and the accepted nodes' KV moved next to the root."""
        step = self._step
        if step is None or spec_decode_metadata is None:
            return sample(logits, spec_decode_metadata)
        runner = self.runner
        node_logits = step.node_logits(logits, spec_decode_metadata.num_draft_tokens)
        out = sample(logits, spec_decode_metadata)
        meta = runner.input_batch.sampling_metadata
        step.accept(pick_nodes(step, node_logits, meta), out.sampled_token_ids)
        if out.logprobs_tensors is not None:
            write_logprobs(step, node_logits, out.logprobs_tensors, runner.rejection_sampler)
        step.compact()
        return out

    def take_verified(self) -> TreeVerify | None:
        """The step that verified the last proposal's trees, its positions linear again (the
        draft's first pass reads them); None when no tree was verified."""
        step, self._step = self._step, None
        if step is not None:
            step.restore_positions()
        return step

    def _tree_step(self, proposal: Proposal | None, scheduler_output: Any) -> TreeVerify | None:
        if proposal is None or not proposal.parents:
            return None
        runner = self.runner
        batch = runner.input_batch
        scheduled = scheduler_output.scheduled_spec_decode_tokens
        rows, starts, bases, parents, tokens = [], [], [], [], []
        query_starts = runner.query_start_loc.np
        for row, req_id in enumerate(batch.req_ids):
            tree = proposal.parents.get(req_id)
            drafted = scheduled.get(req_id)
            if tree is None or not drafted:
                continue
            # The root (last sampled token) and the nodes are the request's last scheduled ones.
            before_root = scheduler_output.num_scheduled_tokens[req_id] - len(drafted) - 1
            rows.append(row)
            starts.append(int(query_starts[row]) + before_root)
            bases.append(int(batch.num_computed_tokens_cpu[row]) + before_root)
            parents.append(np.asarray(tree[: len(drafted) + 1]))
            tokens.append(drafted)
        if not rows:
            return None
        return TreeVerify(rows, starts, bases, parents, tokens, runner.positions.device)


def install(runner: Any) -> TreeVerifier:
    """Wrap ``runner``'s ``_prepare_inputs``, ``_sample`` and ``take_draft_token_ids`` and its
    target's decoder attention implementations around one :class:`TreeVerifier`."""
    verifier = TreeVerifier(runner)
    prepare_inputs, sample = runner._prepare_inputs, runner._sample
    take_drafts = runner.take_draft_token_ids

    def _prepare_inputs(scheduler_output: Any, num_scheduled_tokens: np.ndarray) -> Any:
        out = prepare_inputs(scheduler_output, num_scheduled_tokens)
        verifier.begin(scheduler_output)
        return out

    def _sample(logits: Any, spec_decode_metadata: Any) -> Any:
        return verifier.verify(sample, logits, spec_decode_metadata)

    def take_draft_token_ids() -> Any:
        return verifier.cut(take_drafts())

    runner._prepare_inputs = _prepare_inputs
    runner._sample = _sample
    runner.take_draft_token_ids = take_draft_token_ids
    for layer in runner.model.modules():
        if isinstance(layer, Attention) and layer.impl.attn_type == "decoder":
            impl = layer.impl
            name = (type(impl).__module__, type(impl).__name__)
            if name not in BACKENDS:
                raise RuntimeError(
                    f"ViSpec tree verification cannot mask {name[1]}; set vispec.tree to false"
                )
            impl.forward = _tree_forward(impl.forward, impl, verifier)
    return verifier


def _tree_forward(forward: Any, impl: Any, verifier: TreeVerifier) -> Any:
    def tree_forward(
        layer: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: Any,
        output: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        result = forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        verifier.attend(layer, impl.num_heads, impl.scale, query, kv_cache, attn_metadata, output)
        return result

    return tree_forward
