"""The ViSpec speculator: vLLM's V2 ``EagleSpeculator`` with the draft's images handed to it.

vLLM's V2 EAGLE loop is reused as it is: one draft pass over the target's rows (also in steps
whose K is 0, to keep the draft's KV in step), then K-1 single-token steps. V2 already feeds the
draft raw 1-D positions (the runner's own, also on M-RoPE targets) and pairs a partial prefill
chunk's last position with the true next prompt token, which the V1 adapter had to fix. What
this class adds, once per ``propose()``: the draft's vision inputs (:mod:`vllm_vispec.vision`,
one strategy per draft kind), built from each request's multimodal features and the encoder
outputs that V2's encoder cache holds for the step, written into the draft's
:class:`~vllm_vispec.draft.inputs.DraftInputs` before vLLM's loop runs.

Positions come from the input batch's computed-token counts. With asynchronous scheduling they
are an upper bound while drafts are pending, which never moves a row across an image: rows that
reach an image are prefill rows, whose counts are exact.

The draft runs outside CUDA graphs here: the vision buffers' per-pass copies have not been
captured on a GPU yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from vllm.config import VllmConfig
from vllm.config.compilation import CUDAGraphMode
from vllm.logger import init_logger
from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

from vllm_vispec.draft.inputs import VisionInputs
from vllm_vispec.draft.model import EagleViSpecForCausalLM
from vllm_vispec.feature_cache import FeatureCache
from vllm_vispec.settings import vispec_settings
from vllm_vispec.vision import image_strategy

if TYPE_CHECKING:
    from vllm.v1.worker.gpu.input_batch import InputBatch
    from vllm.v1.worker.gpu.mm.encoder_cache import EncoderCache
    from vllm.v1.worker.gpu.states import RequestState

logger = init_logger(f"vllm.{__name__}")


class ViSpecSpeculator(EagleSpeculator):
    """EagleSpeculator for ViSpec drafts; vLLM builds it through the draft's declared config."""

    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, req_states: RequestState
    ) -> None:
        super().__init__(vllm_config, device)
        self.req_states = req_states  # prompts, for drafts whose compressor reads the text
        self.settings = vispec_settings(vllm_config)

    def load_draft_model(
        self, target_model: nn.Module, target_attn_layer_names: set[str]
    ) -> nn.Module:
        model = super().load_draft_model(target_model, target_attn_layer_names)
        draft = model.unwrap() if hasattr(model, "unwrap") else model
        assert isinstance(draft, EagleViSpecForCausalLM)
        self.draft = draft
        features = FeatureCache(self.settings.feature_cache_bytes)
        self.vision = image_strategy(draft, features, self.dtype, self.device)
        return model

    def load_model(self, target_model: nn.Module) -> None:
        super().load_model(target_model)
        # vLLM has just warned that the draft takes no image embeddings (its merge of them into
        # the draft's input embeddings): true, and by design, so say how images do reach it.
        logger.info(
            "ViSpec: the draft reads the encoder's outputs itself (vLLM's embedding merge stays "
            "off). %s",
            self.vision.describe(),
        )

    def init_cudagraph_manager(self, cudagraph_mode: CUDAGraphMode) -> None:
        if cudagraph_mode != CUDAGraphMode.NONE:
            logger.info_once("ViSpec: the draft runs outside CUDA graphs (the target does not)")
        super().init_cudagraph_manager(CUDAGraphMode.NONE)

    def propose(
        self, input_batch: InputBatch, *args: Any, dummy_run: bool = False, **kwargs: Any
    ) -> torch.Tensor:
        """vLLM's propose, with the step's vision inputs written into the draft first (the
        positional arguments are vLLM's, passed through untouched)."""
        if not dummy_run:
            self.draft.inputs.write(self._vision_inputs(input_batch))
        try:
            return super().propose(input_batch, *args, dummy_run=dummy_run, **kwargs)
        finally:
            self.draft.inputs.write(None)

    def _vision_inputs(self, batch: InputBatch) -> VisionInputs | None:
        cache = self._encoder_cache()
        if cache is None:  # an engine whose images are turned off: text rows only
            return None
        num_reqs = batch.num_reqs
        self.vision.forget_finished(cache.mm_features)
        return self.vision.build(
            batch.req_ids[:num_reqs],
            batch.num_computed_tokens_np[:num_reqs],
            batch.query_start_loc_np[: num_reqs + 1],
            lambda req_id: _Request(req_id, cache, self.req_states),
            cache.encoder_outputs,
        )

    def _encoder_cache(self) -> EncoderCache | None:
        """V2's encoder cache (each live request's multimodal features, the step's encoder
        outputs by image hash), reached through the model state vLLM hands the speculator;
        None when the engine takes no images (``limit_mm_per_prompt`` all 0)."""
        state = self.model_state
        return state.encoder_runner.encoder_cache if state.supports_mm_inputs else None


class _Request:
    """What the vision strategies read of a request, from V2's per-request state."""

    def __init__(self, req_id: str, cache: EncoderCache, req_states: RequestState) -> None:
        self.mm_features = cache.mm_features[req_id]
        self._index = req_states.req_id_to_index[req_id]
        self._req_states = req_states

    @property
    def prompt_token_ids(self) -> np.ndarray:
        """Read once per request, and only by drafts whose compressor reads the text."""
        states = self._req_states
        length = int(states.prompt_len.np[self._index])
        return states.all_token_ids.gpu[self._index, :length].cpu().numpy()
