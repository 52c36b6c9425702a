"""The vision-aware proposer: vLLM's V1 EAGLE proposer plus ViSpec's image handling.

vLLM's EAGLE loop (first pass over the scheduled tokens, then K-1 single-token steps) is reused
as it is. Around it this class

* builds, once per ``propose()``, the draft's vision inputs for both kinds of pass
  (:mod:`vllm_vispec.vision`, one strategy per draft kind: each request's images from its
  multimodal features, the adaptor run once per image on the whole encoder output, kept in a
  byte-bounded cache keyed by the image hash so that prefix-cache hits still find it),
* feeds the draft raw 1-D positions, also on M-RoPE targets, so that RoPE and KV slots follow
  the raw token index (vLLM's default would use the M-RoPE temporal row),
* pairs a partial prefill chunk's last position with the true next prompt token.

With ``vispec.tree`` on, :class:`~vllm_vispec.runners.v1.tree_proposer.ViSpecTreeProposer` (a
subclass) drafts EAGLE-2 trees instead.

Every base method overridden here and every runner attribute read here is listed in the V1
adapter's ledger section (:mod:`vllm_vispec.runners.v1.ledger`), which a fast test checks
against the installed vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.config import VllmConfig
from vllm.forward_context import set_forward_context
from vllm.logger import init_logger
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.spec_decode.eagle import EagleProposer

from vllm_vispec.draft.model import EagleViSpecForCausalLM
from vllm_vispec.feature_cache import FeatureCache
from vllm_vispec.settings import vispec_settings
from vllm_vispec.skipped_rows import SkippedRows, ranges
from vllm_vispec.vision import image_strategy

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
        # Steps of K = 0 (vLLM's batch-size schedule) keep their rows for one later pass.
        self.skipped = SkippedRows(self.max_num_tokens, self.hidden_size * self.dtype.itemsize)
        if vllm_config.speculative_config.num_speculative_tokens_per_batch_size:
            logger.info(
                "ViSpec: steps whose K is 0 run no draft pass; their draft inputs (up to %d "
                "rows, %d MiB) are written into the draft's KV in one pass when drafting resumes",
                self.skipped.capacity_rows,
                self.skipped.capacity_rows * self.skipped.row_bytes >> 20,
            )

    def load_model(self, target_model: torch.nn.Module) -> None:
        super().load_model(target_model)
        draft = self.model.unwrap() if hasattr(self.model, "unwrap") else self.model
        assert isinstance(draft, EagleViSpecForCausalLM)
        self.draft = draft
        features = FeatureCache(self.settings.feature_cache_bytes)
        self.vision = image_strategy(draft, features, self.dtype, self.device)
        logger.info(self.vision.describe())

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
        self.draft.inputs.write(None)
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
        """vLLM's propose, with the vision inputs of this step handed to the draft first; a
        step of K = 0 runs no draft pass (its rows are kept, :mod:`vllm_vispec.skipped_rows`)."""
        self._run_eagerly()
        runner = self.runner
        batch = runner.input_batch
        target_token_ids, target_hidden_states = self._draft_inputs(
            target_token_ids, target_hidden_states
        )
        self.vision.forget_finished(runner.requests)
        cad = common_attn_metadata
        query_start_loc = cad.query_start_loc_cpu.numpy()
        try:
            if num_speculative_tokens == 0:
                self._skip(
                    target_token_ids, target_hidden_states, next_token_ids, cad,
                    num_rejected_tokens_gpu,
                )  # fmt: skip
                return torch.empty(cad.num_reqs, 0, dtype=torch.int64, device=self.device)
            if self.skipped:
                self._extend(cad)
            self.draft.inputs.write(
                self.vision.build(
                    batch.req_ids,
                    batch.num_computed_tokens_cpu,
                    query_start_loc[: cad.num_reqs + 1],
                    self._request_state,
                    runner.encoder_cache,
                )
            )
            return self._draft(
                num_speculative_tokens,
                target_token_ids=target_token_ids,
                target_positions=target_positions,
                target_hidden_states=target_hidden_states,
                next_token_ids=next_token_ids,
                token_indices_to_sample=token_indices_to_sample,
                common_attn_metadata=cad,
                sampling_metadata=sampling_metadata,
                mm_embed_inputs=mm_embed_inputs,
                num_rejected_tokens_gpu=num_rejected_tokens_gpu,
                slot_mappings=slot_mappings,
            )
        finally:
            self.draft.inputs.write(None)

    def _request_state(self, req_id: str) -> CachedRequestState:
        return self.runner.requests[req_id]

    # -- steps that draft nothing -------------------------------------------------------------

    def _skip(
        self,
        token_ids: torch.Tensor,
        hidden_states: torch.Tensor,
        next_token_ids: torch.Tensor,
        cad: CommonAttentionMetadata,
        num_rejected_tokens: torch.Tensor | None,
    ) -> None:
        """Keep what vLLM's first pass would read: per request, its verified rows (each with
        the token after it: the next row's, the sampled one at the last) and their hidden
        states. The adaptor still sees this step's images while their encoder output exists."""
        runner, batch = self.runner, self.runner.input_batch
        num_reqs = cad.num_reqs
        query_start_loc = cad.query_start_loc_cpu.numpy()[: num_reqs + 1]
        starts = batch.num_computed_tokens_cpu[:num_reqs]
        req_ids = batch.req_ids[:num_reqs]
        self.vision.adapt(
            req_ids, starts, query_start_loc, self._request_state, runner.encoder_cache
        )
        lengths = np.diff(query_start_loc)
        if num_rejected_tokens is not None:
            lengths = lengths - num_rejected_tokens[:num_reqs].cpu().numpy()
        last = torch.from_numpy(query_start_loc[:-1] + lengths - 1).to(self.device)
        shifted = torch.empty_like(token_ids)
        shifted[:-1] = token_ids[1:]
        shifted[last] = next_token_ids[:num_reqs].to(shifted.dtype)
        rows = torch.from_numpy(ranges(query_start_loc[:-1], lengths)).to(self.device)
        if not self.skipped.fits(len(rows)):
            self._extend(cad)
        self.skipped.add(req_ids, starts, lengths, shifted[rows], hidden_states[rows])

    def _extend(self, cad: CommonAttentionMetadata) -> None:
        """One draft pass over the kept rows of this batch's requests (SGLang's draft extend):
        their draft KV, exactly as the skipped first passes would have written it."""
        runner, batch = self.runner, self.runner.input_batch
        num_reqs = cad.num_reqs
        rows = self.skipped.take(batch.req_ids[:num_reqs], batch.num_computed_tokens_cpu)
        if rows is None:
            return
        device, bs = self.device, self.block_size
        query_start_loc = rows.query_start_loc
        n = int(query_start_loc[-1])
        positions = torch.from_numpy(rows.positions).to(device)
        table = cad.block_table_tensor[torch.from_numpy(rows.batch_rows).to(device)]
        request = torch.repeat_interleave(
            torch.arange(len(rows.batch_rows), device=device),
            torch.from_numpy(np.diff(query_start_loc)).to(device),
        )
        slots = table[request, positions // bs].long() * bs + positions % bs
        metadata = CommonAttentionMetadata(
            query_start_loc=torch.from_numpy(query_start_loc).to(device),
            query_start_loc_cpu=torch.from_numpy(query_start_loc),
            seq_lens=torch.from_numpy(rows.ends).to(device, torch.int32),
            num_reqs=len(rows.batch_rows),
            num_actual_tokens=n,
            max_query_len=int(np.diff(query_start_loc).max()),
            max_seq_len=int(rows.ends.max()),
            block_table_tensor=table,
            slot_mapping=slots,
        )
        self.draft.inputs.write(
            self.vision.build(
                [batch.req_ids[r] for r in rows.batch_rows],
                rows.starts,
                query_start_loc,
                self._request_state,
                runner.encoder_cache,
            )
        )
        _, per_layer = self.build_per_group_and_layer_attn_metadata(metadata)
        self.input_ids[:n] = rows.token_ids
        self.positions[:n] = positions
        self.hidden_states[:n] = rows.hidden
        with set_forward_context(
            per_layer, self.vllm_config, num_tokens=n, slot_mapping=self._get_slot_mapping(n, slots)
        ):
            self.model(
                input_ids=self.input_ids[:n],
                positions=self.positions[:n],
                hidden_states=self.hidden_states[:n],
            )

    def _draft_inputs(
        self, token_ids: torch.Tensor, hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The target rows the draft's first pass reads (the tree proposer reorders them)."""
        return token_ids, hidden_states

    def _draft(self, num_speculative_tokens: int, **inputs: Any) -> torch.Tensor:
        """vLLM's EAGLE loop over this step's inputs (``propose``'s arguments): chains of K."""
        return super().propose(num_speculative_tokens, **inputs)

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
