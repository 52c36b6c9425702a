"""The V2 runner adapter's section of the ledger (vLLM 0.34).

V2 has hooks for what V1 needed patches for: a draft model names its speculator
(``speculator_config_class``), and the speculator is handed the target's model state. So this
section patches nothing; it lists the V2 internals the adapter relies on, which the upgrade
guard (``tests_v2/test_v2_guard.py``) resolves against the installed vLLM: the speculator's
base class, the methods ViSpecSpeculator overrides (with vLLM 0.34's parameters) and the state
it reads.
"""

from __future__ import annotations

from vllm_vispec.patches import Patch

LEDGER: tuple[Patch, ...] = ()

# The V2 symbols the adapter imports or builds on ("module:attr.attr").
HOOKS = (
    "vllm.v1.worker.gpu.spec_decode.eagle.speculator:EagleSpeculator",
    "vllm.v1.worker.gpu.spec_decode.eagle.config:EagleSpeculatorConfig",
    "vllm.v1.worker.gpu.spec_decode.eagle.config:EagleSpeculatorConfig.speculator_class",
    "vllm.v1.worker.gpu.spec_decode.speculator_config:get_speculator_config_class",
    "vllm.model_executor.models.interfaces:SpeculativeDraftModel",
    "vllm.config.compilation:CUDAGraphMode",
    "vllm.v1.worker.gpu.input_batch:InputBatch",
    "vllm.v1.worker.gpu.mm.encoder_cache:EncoderCache",
    "vllm.v1.worker.gpu.states:RequestState",
)

# EagleSpeculator methods ViSpecSpeculator overrides -> vLLM 0.34's parameters.
SPECULATOR_OVERRIDES: dict[str, str] = {
    "__init__": "(self, vllm_config, device)",
    "load_draft_model": "(self, target_model, target_attn_layer_names)",
    "load_model": "(self, target_model)",
    "init_cudagraph_manager": "(self, cudagraph_mode)",
    "propose": "(self, input_batch, attn_metadata, slot_mappings, last_hidden_states, "
    "aux_hidden_states, num_sampled, num_rejected, last_sampled, next_prefill_tokens, "
    "temperature, seeds, dp_sync_state=None, dummy_run=False, skip_attn_for_dummy_run=False, "
    "mm_inputs=None, is_profile=False, num_speculative_tokens=None)",
}

# State the speculator reads: its own (set by vLLM's base classes), the model state's (handed
# over by ``set_attn``), the input batch's, the encoder cache's (reached through
# ``model_state.encoder_runner``) and the request states'.
SPECULATOR_ATTRIBUTES = ("device", "dtype", "model_state")
MODEL_STATE_ATTRIBUTES = ("encoder_runner", "supports_mm_inputs")
ENCODER_RUNNER_ATTRIBUTES = ("encoder_cache",)
INPUT_BATCH_ATTRIBUTES = ("num_computed_tokens_np", "num_reqs", "query_start_loc_np", "req_ids")
ENCODER_CACHE_ATTRIBUTES = ("encoder_outputs", "mm_features")
REQUEST_STATE_ATTRIBUTES = ("all_token_ids", "prompt_len", "req_id_to_index")
