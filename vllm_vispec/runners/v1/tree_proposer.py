"""The ViSpec proposer that drafts EAGLE-2 trees (``vispec.tree``).

Chosen instead of :class:`~vllm_vispec.runners.v1.proposer.ViSpecProposer` when trees are
configured. A step whose K (vLLM's, by its batch-size schedule when set) is a tree's size drafts
trees of K nodes for the requests that can take one and chains for the rest; a smaller K drafts
chains of K. Each propose() offers one :class:`~vllm_vispec.tree.proposal.Proposal` to the
engine's :class:`~vllm_vispec.runners.v1.tree_verifier.TreeVerifier` (attached by the adapter's
``tree_hooks`` once the runner has loaded its model), and the next propose() takes the verified
step from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.config import VllmConfig
from vllm.forward_context import set_forward_context
from vllm.logger import init_logger
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.sample.metadata import SamplingMetadata

from vllm_vispec.draft.inputs import Intervals, TreePass
from vllm_vispec.runners.v1.proposer import ViSpecProposer
from vllm_vispec.tree.expand import Expansion
from vllm_vispec.tree.proposal import Proposal
from vllm_vispec.tree.settings import TreeSettings

if TYPE_CHECKING:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_vispec.runners.v1.tree_verifier import TreeVerifier

logger = init_logger(f"vllm.{__name__}")


class ViSpecTreeProposer(ViSpecProposer):
    """ViSpecProposer whose steps draft trees where vLLM's K allows one."""

    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, runner: GPUModelRunner | None = None
    ) -> None:
        super().__init__(vllm_config, device, runner)
        assert self.settings.tree is not None
        self.tree: TreeSettings = self.settings.tree
        self.verifier: TreeVerifier | None = None  # the engine's, from attach()
        # Tree rows get log-probabilities of the raw logits; processed modes take chains.
        self._raw_logprobs = vllm_config.model_config.logprobs_mode.startswith("raw")
        # The first pass's sampled hidden states of the current propose(): the trees' roots.
        self._root_hidden: torch.Tensor | None = None
        logger.info(
            "ViSpec: tree drafting on (%s): steps whose K is %d or more draft trees of K "
            "nodes, smaller K chains (K: num_speculative_tokens %d, or vLLM's batch-size "
            "schedule %s)",
            self.tree,
            self.tree.min_nodes,
            self.num_speculative_tokens,
            vllm_config.speculative_config.num_speculative_tokens_per_batch_size,
        )

    def attach(self, verifier: TreeVerifier) -> None:
        """The engine's tree verification, which takes each proposal and gives back the
        verified step."""
        self.verifier = verifier

    def load_model(self, target_model: torch.nn.Module) -> None:
        super().load_model(target_model)
        if self.device.type == "cuda":
            self._check_tree_kernel()

    def _check_tree_kernel(self) -> None:
        """Run the Triton tree attention once for the target's and the draft's head layouts
        against its PyTorch reference: a kernel that cannot compile or disagrees stops the
        engine now, not at the first tree."""
        from vllm_vispec.kernels.tree.selfcheck import check_triton_tree_attention

        model, parallel = self.vllm_config.model_config, self.vllm_config.parallel_config
        attention = self.draft.model.layers[0].self_attn
        layouts = {
            (model.get_num_attention_heads(parallel), model.get_num_kv_heads(parallel),
             model.get_head_size()),
            (attention.num_heads, attention.num_kv_heads, attention.padded_dim),
        }  # fmt: skip
        block_size = self.vllm_config.cache_config.block_size or 16
        for heads, kv_heads, head_dim in sorted(layouts):
            problem = check_triton_tree_attention(
                heads, kv_heads, head_dim, block_size, model.dtype, self.device
            )
            if problem:
                raise RuntimeError(
                    f"ViSpec tree verification: {problem}; set vispec.tree to false to draft chains"
                )

    # -- one propose() ----------------------------------------------------------------------

    def _draft_inputs(
        self, token_ids: torch.Tensor, hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each verified tree's accepted path read as a chain."""
        assert self.verifier is not None, "the tree hooks were not installed on this runner"
        step = self.verifier.take_verified()
        if step is None:
            return token_ids, hidden_states
        order = step.draft_order(token_ids.shape[0])
        return token_ids[order], hidden_states[order]

    def _draft(
        self,
        num_nodes: int,
        *,
        common_attn_metadata: CommonAttentionMetadata,
        num_rejected_tokens_gpu: torch.Tensor | None,
        **inputs: Any,
    ) -> torch.Tensor:
        """A step of vLLM's K = ``num_nodes``: trees of up to K nodes (by confidence) for the
        requests that can take one when K is a tree's size, chains for the rest (of K tokens
        when K is too small for a tree, else of ``chain``); [B, K], cut per request by the
        proposal."""
        cad = common_attn_metadata
        batch = self.runner.input_batch
        req_ids = batch.req_ids[: batch.num_reqs]
        mode = self.tree.mode(num_nodes)
        # Rows mid-prefill draft nothing vLLM keeps: no tree for them.
        partial = self.runner.discard_request_mask.np[: len(req_ids)].astype(bool)
        tree_rows = [
            i
            for i, r in enumerate(req_ids)
            if mode == "tree" and not partial[i] and self._tree_ok(r)
        ]
        # K = 0: vLLM's first pass still runs (the draft's KV stays in step), no logits.
        chain = min(self.tree.chain, num_nodes) if mode == "tree" else num_nodes
        if tree_rows and len(tree_rows) == int((~partial).sum()):
            chain = 1  # every request drafts a tree: only the first pass's hidden states
        # The draft's last row per request (where its first pass samples): the tree's root.
        rejected = num_rejected_tokens_gpu if num_rejected_tokens_gpu is not None else 0
        last_pos = (cad.seq_lens[: len(req_ids)] - 1 - rejected).long()
        block_table = cad.block_table_tensor[: len(req_ids)]
        self._root_hidden = None
        chains = super()._draft(
            chain,
            common_attn_metadata=cad,
            num_rejected_tokens_gpu=num_rejected_tokens_gpu,
            **inputs,
        )
        out = chains.new_zeros(len(req_ids), num_nodes)
        out[:, :chain] = chains
        lengths = dict.fromkeys(req_ids, chain)
        parents: dict[str, np.ndarray] = {}
        if tree_rows:
            rows = torch.tensor(tree_rows, device=out.device)
            expanded = self._expand(rows, last_pos[rows], block_table[rows], num_nodes)
            tokens, tree_parents, sizes = expanded
            out[rows] = torch.from_numpy(tokens).to(out)
            for i, r in enumerate(tree_rows):
                parents[req_ids[r]] = tree_parents[i]
                lengths[req_ids[r]] = int(sizes[i])
        self.verifier.offer(Proposal(lengths, parents))
        return out

    def _tree_ok(self, req_id: str) -> bool:
        """Whether a tree can be verified for this request with every sampling option kept.

        Penalties, bad words and allowed tokens are applied per node (tree_sampling); vLLM refuses
        min_p and logit bias per request under any speculation. Chains for:
        min_tokens not yet reached, thinking budgets and structured output (vLLM's state
        machines walk the drafts as a chain), processed-logprobs modes, and seeded requests,
        whose text must not depend on whether the step's load allowed a tree.
        """
        request = self.runner.requests[req_id]
        params = request.sampling_params
        if params is None:
            return False
        ok = (
            (params.logprobs is None or self._raw_logprobs)
            and params.min_tokens <= len(request.output_token_ids)
            and params.structured_outputs is None
            and params.thinking_token_budget is None
            and params.seed is None
        )
        if not ok:
            logger.info_once(
                "ViSpec: requests with a seed, min_tokens, a thinking budget, structured output "
                "or processed logprobs draft chains, not trees"
            )
        return ok

    def _sample_draft_tokens(
        self, hidden_states: torch.Tensor, sampling_metadata: SamplingMetadata
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """vLLM's; the first call of a propose() (its first pass) keeps its hidden states: the
        roots of the step's tree expansions."""
        if self._root_hidden is None:
            self._root_hidden = hidden_states
        return super()._sample_draft_tokens(hidden_states, sampling_metadata)

    # -- the expansion ----------------------------------------------------------------------

    def _expand(
        self, rows: torch.Tensor, last_pos: torch.Tensor, block_table: torch.Tensor, num_nodes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """EAGLE-2 expansion for the batch rows ``rows``; tokens [R, num_nodes], parents
        [R, num_nodes + 1] (root first), depth-first, and each tree's size [R] (``min_prob``)."""
        assert self._root_hidden is not None
        k, depth, draft = self.tree.top_k, self.tree.depth, self.draft
        hidden = self._root_hidden[rows]
        self._root_hidden = None
        expansion = Expansion(self._logprobs(hidden), k)
        r = rows.shape[0]
        # Pass p writes its k nodes at the k raw indices after the previous pass's. Near the
        # model's length limit some fall past the request's blocks: not written (slot -1) and
        # read from its last slot instead (their drafts are cut by the scheduler anyway).
        bs = self.block_size
        limit = min(block_table.shape[1] * bs, self.vllm_config.model_config.max_model_len)
        slot_index = last_pos[:, None] + 1 + torch.arange(depth * k, device=rows.device)
        in_range = slot_index < limit
        slot_index = slot_index.clamp(max=limit - 1)
        blocks = torch.gather(block_table, 1, (slot_index // bs).to(block_table.dtype))
        slots = torch.where(in_range, blocks * bs + slot_index % bs, -1).long()
        cu = torch.arange(r + 1, device=rows.device, dtype=torch.int32) * k
        unseen_context = self._tree_unseen(rows)
        for p in range(depth):
            if not expansion.can_reach(self.tree.min_logprob):
                break  # no deeper node would be kept: the draft stops here
            tokens, masks = expansion.next_pass()
            tree_pass = TreePass(
                slots=slots[:, p * k : (p + 1) * k].reshape(-1),
                query_start_loc=cu,
                block_table=block_table,
                context_lens=last_pos + 1,
                node_pos=slot_index,
                row_masks=masks.reshape(-1),
                unseen=unseen_context,
            )
            draft.inputs.begin_tree_pass(rows, k, tree_pass)
            try:
                with set_forward_context({}, self.vllm_config, skip_compiled=True):
                    out, _ = draft(
                        input_ids=tokens.reshape(-1).int(),
                        positions=(last_pos + 1 + p).repeat_interleave(k),
                        hidden_states=hidden.repeat_interleave(k, 0) if p == 0 else hidden,
                    )
            finally:
                draft.inputs.end_tree_pass()
            expansion.grow(self._logprobs(out))
            # The next frontier's inputs: each node's parent's output.
            hidden = out.view(r, k, -1)[
                torch.arange(r, device=rows.device)[:, None], expansion.frontier_parent
            ].reshape(r * k, -1)
        return expansion.select(num_nodes, self.tree.min_logprob)

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.draft.compute_logits(hidden).float().log_softmax(dim=-1)

    def _tree_unseen(self, rows: torch.Tensor) -> Intervals:
        """The unseen context positions of the rows' requests (none with the mark)."""
        intervals = self.draft.inputs.unseen_intervals
        if intervals is None:
            empty = rows.new_zeros(0, dtype=torch.int32)
            return empty, empty, rows.new_zeros(rows.shape[0] + 1, dtype=torch.int32)
        start, end, cu = intervals
        first, counts = cu[rows].long(), (cu[rows + 1] - cu[rows]).long()
        new_cu = torch.zeros(rows.shape[0] + 1, dtype=torch.long, device=rows.device)
        new_cu[1:] = counts.cumsum(0)
        within = torch.arange(int(new_cu[-1]), device=rows.device)
        within -= torch.repeat_interleave(new_cu[:-1], counts)
        picked = torch.repeat_interleave(first, counts) + within
        return start[picked], end[picked], new_cu.int()
