"""The vision-aware proposer: vLLM's V1 EAGLE proposer plus ViSpec's image handling.

vLLM's EAGLE loop (first pass over the scheduled tokens, then K-1 single-token steps) is reused
as it is. Around it this class

* builds, once per ``propose()``, the draft's vision inputs for both kinds of pass
  (:class:`~vllm_vispec.vision_inputs.VisionInputsBuilder`: each request's images from its
  multimodal features, the adaptor run once per image on the whole encoder output, kept in a
  byte-bounded cache keyed by the image hash so that prefix-cache hits still find it),
* feeds the draft raw 1-D positions, also on M-RoPE targets, so that RoPE and KV slots follow
  the raw token index (vLLM's default would use the M-RoPE temporal row),
* pairs a partial prefill chunk's last position with the true next prompt token,
* with ``vispec.tree`` on, drafts EAGLE-2 trees (:mod:`vllm_vispec.tree`) where the step's K
  (vLLM's, by its batch-size schedule when set) is a tree's size and the request's
  a tree step the draft's first pass reads each request's accepted path as a chain.

Every base method overridden here and every runner attribute read here is listed in the
ledger of :mod:`vllm_vispec.patches`, which a fast test checks against the installed vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.config import VllmConfig
from vllm.forward_context import set_forward_context
from vllm.logger import init_logger
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.spec_decode.eagle import EagleProposer

from vllm_vispec.draft.attention import TreePass
from vllm_vispec.draft.model import EagleViSpecForCausalLM
from vllm_vispec.feature_cache import FeatureCache
from vllm_vispec.settings import vispec_settings
from vllm_vispec.tree.expand import Expansion
from vllm_vispec.vision_inputs import Intervals, VisionInputsBuilder

if TYPE_CHECKING:
    from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

logger = init_logger(f"vllm.{__name__}")


class ViSpecProposer(EagleProposer):
    """EagleProposer for ViSpec drafts; installed by the plugin only for those drafts."""

    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, runner: GPUModelRunner | None = None
    ) -> None:
        super().__init__(vllm_config, device, runner)
        self.runner = runner
        self.target_uses_mrope = vllm_config.model_config.uses_mrope
        # Images reach the draft through its adaptor (VisionInputs) only: vLLM's merge of the
        # chunk's image embeddings into the draft's input embeddings would never be used.
        self.supports_mm_inputs = False
        self.settings = vispec_settings(vllm_config)
        self.tree = self.settings.tree
        # Read by the tree patches before the next step: the parents of each request's tree
        # (root first) and how many of each request's drafts are real.
        self.trees: dict[str, np.ndarray] = {}
        self.draft_lengths: dict[str, int] = {}
        # Tree rows get log-probabilities of the raw logits; processed modes take chains.
        self._raw_logprobs = vllm_config.model_config.logprobs_mode.startswith("raw")
        self._capture_root = False  # keep the first pass's sampled hidden states (trees)
        self._root_hidden: torch.Tensor | None = None
        if self.tree is not None:
            logger.info(
                "ViSpec: tree drafting on (%s): steps whose K is %d or more draft trees of K "
                "nodes, smaller K chains (K: num_speculative_tokens %d, or vLLM's batch-size "
                "schedule %s)",
                self.tree,
                self.tree.min_nodes,
                self.num_speculative_tokens,
                vllm_config.speculative_config.num_speculative_tokens_per_batch_size,
            )

    def load_model(self, target_model: torch.nn.Module) -> None:
        super().load_model(target_model)
        if self.tree is not None and self.device.type == "cuda":
            self._check_tree_kernel()
        draft = self.model.unwrap() if hasattr(self.model, "unwrap") else self.model
        assert isinstance(draft, EagleViSpecForCausalLM)
        self.draft = draft
        features = FeatureCache(self.settings.feature_cache_bytes)
        per_image = draft.num_q * self.hidden_size * self.dtype.itemsize
        logger.info(
            "ViSpec: adaptor outputs of up to %d MiB of images are kept for prefix-cache hits "
            "(%d bytes an image, about %d images; vispec.feature_cache_mib)",
            features.capacity_bytes >> 20,
            per_image,
            features.capacity_bytes // per_image,
        )
        self.vision = VisionInputsBuilder(
            draft.num_q,
            self.hidden_size,
            self.dtype,
            self.device,
            draft.adapt_images,
            features,
            draft.attends_by_intervals,
        )

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

    # -- hooks into vLLM's EAGLE loop -------------------------------------------------------

    def _run_eagerly(self) -> None:
        """Undo vLLM's opt-in breakable CUDA-graph wrapper (VLLM_USE_BREAKABLE_CUDAGRAPH), which
        captures the whole draft call: the skipping attentions run their kernel from Python, and
        a capture of the vision buffers' per-pass copies has not been checked on a GPU yet."""
        if isinstance(self.model, BreakableCUDAGraphWrapper):
            logger.info_once("ViSpec: the draft runs outside breakable CUDA graphs")
            self.model = self.model.unwrap()

    def dummy_run(
        self,
        num_tokens: int,
        use_cudagraphs: bool = True,
        is_graph_capturing: bool = False,
        slot_mappings: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self._run_eagerly()
        self.draft.set_vision_inputs(None)
        super().dummy_run(num_tokens, use_cudagraphs, is_graph_capturing, slot_mappings)

    def propose(
        self,
        num_speculative_tokens: int,
        target_token_ids: torch.Tensor,
        target_positions: torch.Tensor,
        target_hidden_states: torch.Tensor,
        next_token_ids: torch.Tensor,
        token_indices_to_sample: torch.Tensor | None,
        common_attn_metadata: CommonAttentionMetadata,
        sampling_metadata: SamplingMetadata,
        mm_embed_inputs: tuple[list[torch.Tensor], torch.Tensor] | None = None,
        num_rejected_tokens_gpu: torch.Tensor | None = None,
        slot_mappings: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """vLLM's propose, with the vision inputs of this step handed to the draft first."""
        self._run_eagerly()
        runner = self.runner
        batch = runner.input_batch
        step = getattr(runner, "_vispec_tree_step", None)
        if step is not None:
            # Linear positions back, and each tree's accepted path read as a chain.
            step.restore_positions()
            order = step.draft_order(target_token_ids.shape[0])
            target_token_ids = target_token_ids[order]
            target_hidden_states = target_hidden_states[order]
        self.vision.forget_finished(runner.requests)
        self.draft.set_vision_inputs(
            self.vision.build(
                batch.req_ids,
                batch.num_computed_tokens_cpu,
                common_attn_metadata.query_start_loc_cpu.numpy(),
                target_token_ids.shape[0],
                lambda req_id: runner.requests[req_id].mm_features,
                runner.encoder_cache,
            )
        )
        args = (
            target_token_ids,
            target_positions,
            target_hidden_states,
            next_token_ids,
            token_indices_to_sample,
            common_attn_metadata,
            sampling_metadata,
            mm_embed_inputs,
            num_rejected_tokens_gpu,
            slot_mappings,
        )
        try:
            if self.tree is None:
                return super().propose(num_speculative_tokens, *args)
            return self._propose_trees(num_speculative_tokens, args)
        finally:
            self.draft.set_vision_inputs(None)

    # -- trees ------------------------------------------------------------------------------

    def _propose_trees(self, num_nodes: int, args: tuple) -> torch.Tensor:
        """A step of vLLM's K = ``num_nodes``: trees of K nodes for the requests that can take
        one when K is a tree's size, chains for the rest (of K tokens when K is too small for a
        tree, else of ``chain``), nothing at K = 0; [B, K], cut per request by
        :attr:`draft_lengths`."""
        assert self.tree is not None
        cad: CommonAttentionMetadata = args[5]
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
        rejected = args[8] if args[8] is not None else 0
        last_pos = (cad.seq_lens[: len(req_ids)] - 1 - rejected).long()
        block_table = cad.block_table_tensor[: len(req_ids)]
        self._capture_root = bool(tree_rows)
        chains = super().propose(chain, *args)
        out = chains.new_zeros(len(req_ids), num_nodes)
        out[:, :chain] = chains
        self.draft_lengths = dict.fromkeys(req_ids, chain)
        self.trees = {}
        if tree_rows:
            rows = torch.tensor(tree_rows, device=out.device)
            tokens, parents = self._expand(rows, last_pos[rows], block_table[rows], num_nodes)
            out[rows] = torch.from_numpy(tokens).to(out)
            for i, r in enumerate(tree_rows):
                self.trees[req_ids[r]] = parents[i]
                self.draft_lengths[req_ids[r]] = num_nodes
        return out

    def _tree_ok(self, req_id: str) -> bool:
        """Whether a tree can be verified for this request with every sampling option kept.

        Penalties, bad words and allowed tokens are applied per node (TreeStep); vLLM refuses
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
            and not self._seeded(req_id)
        )
        if not ok:
            logger.info_once(
                "ViSpec: requests with a seed, min_tokens, a thinking budget, structured output "
                "or processed logprobs draft chains, not trees"
            )
        return ok

    def _seeded(self, req_id: str) -> bool:
        params = self.runner.requests[req_id].sampling_params
        return params is not None and params.seed is not None

    def _sample_draft_tokens(
        self, hidden_states: torch.Tensor, sampling_metadata: SamplingMetadata
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """vLLM's, keeping the first pass's sampled hidden states for a tree expansion."""
        if self._capture_root:
            self._root_hidden, self._capture_root = hidden_states, False
        return super()._sample_draft_tokens(hidden_states, sampling_metadata)

    def _expand(
        self, rows: torch.Tensor, last_pos: torch.Tensor, block_table: torch.Tensor, num_nodes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """EAGLE-2 expansion for the batch rows ``rows``; tokens [R, num_nodes] and parents
        [R, num_nodes + 1] (root first), depth-first."""
        assert self.tree is not None and self._root_hidden is not None
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
        attention = draft.model.layers[0].self_attn
        cu = torch.arange(r + 1, device=rows.device, dtype=torch.int32) * k
        hidden_context = self._tree_hidden(rows)
        for p in range(depth):
            tokens, masks = expansion.next_pass()
            draft.vision_buffers.tree_rows(rows, k)
            attention.tree_pass = TreePass(
                slots=slots[:, p * k : (p + 1) * k].reshape(-1),
                query_start_loc=cu,
                block_table=block_table,
                context_lens=last_pos + 1,
                node_pos=slot_index,
                row_masks=masks.reshape(-1),
                hidden=hidden_context,
            )
            try:
                with set_forward_context(None, self.vllm_config, skip_compiled=True):
                    out, _ = draft(
                        input_ids=tokens.reshape(-1).int(),
                        positions=(last_pos + 1 + p).repeat_interleave(k),
                        hidden_states=hidden.repeat_interleave(k, 0) if p == 0 else hidden,
                    )
            finally:
                attention.tree_pass = None
            expansion.grow(self._logprobs(out))
            # The next frontier's inputs: each node's parent's output.
            hidden = out.view(r, k, -1)[
                torch.arange(r, device=rows.device)[:, None], expansion.frontier_parent
            ].reshape(r * k, -1)
        return expansion.select(num_nodes)

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.draft.compute_logits(hidden).float().log_softmax(dim=-1)

    def _tree_hidden(self, rows: torch.Tensor) -> Intervals:
        """The hidden context positions of the rows' requests (none with the mark)."""
        intervals = self.draft.vision_buffers.hidden_intervals
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

    def prepare_next_token_ids_padded(
        self,
        sampled_token_ids: torch.Tensor,
        requests: dict[str, CachedRequestState],
        gpu_input_batch: InputBatch,
        discard_request_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair a partial prefill chunk's last position with the next prompt token.

        vLLM pairs it with the prompt's last token: harmless for the output (that draft is
        discarded) but the draft KV written there then differs from a whole-prompt pass, and
        every later position attends to it. ViSpec's semantics (and the reference) need the
        true next token.
        """
        next_ids, valid = super().prepare_next_token_ids_padded(
            sampled_token_ids, requests, gpu_input_batch, discard_request_mask
        )
        partial = np.nonzero(self.runner.discard_request_mask.np[: gpu_input_batch.num_reqs])[0]
        if len(partial):
            seq_lens = self.runner.optimistic_seq_lens_cpu
            tokens = [
                requests[gpu_input_batch.req_ids[i]].get_token_id(int(seq_lens[i])) for i in partial
            ]
            next_ids[torch.from_numpy(partial).to(next_ids.device)] = torch.tensor(
                tokens, dtype=next_ids.dtype
            ).to(next_ids.device)
        return next_ids, valid

    def set_inputs_first_pass(
        self,
        target_token_ids: torch.Tensor,
        next_token_ids: torch.Tensor,
        target_positions: torch.Tensor,
        target_hidden_states: torch.Tensor,
        token_indices_to_sample: torch.Tensor | None,
        cad: CommonAttentionMetadata,
        num_rejected_tokens_gpu: torch.Tensor | None,
    ) -> tuple[int, torch.Tensor, CommonAttentionMetadata]:
        out = super().set_inputs_first_pass(
            target_token_ids,
            next_token_ids,
            target_positions,
            target_hidden_states,
            token_indices_to_sample,
            cad,
            num_rejected_tokens_gpu,
        )
        if self.target_uses_mrope:
            # The runner's 1-D positions are the raw token index; vLLM would take M-RoPE row 0.
            num_tokens = out[0]
            self.positions[:num_tokens] = self.runner.positions[:num_tokens]
        return out
