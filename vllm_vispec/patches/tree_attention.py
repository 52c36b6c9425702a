"""Tree-masked target attention for the tree rows of a verification step.

vLLM's attention backends take no custom mask (CPU) or one shape per batch (Triton's unused
``qq_bias``). The backend runs as always (writing every row's K/V at its linear slot and
attending causally); then, inside a target forward that verifies trees, the tree rows are
recomputed over the cached prefix plus each node's ancestors. The CPU and Triton backends are
wrapped (their KV layouts are the ones :func:`vllm_vispec.kernels.split_kv_cache` knows);
start-up validation refuses trees with any other backend.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import torch


def wrap_forward(impl_cls: type) -> None:
    from vllm_vispec.kernels.attention import split_kv_cache
    from vllm_vispec.tree.step import active_step

    forward = impl_cls.forward

    @functools.wraps(forward)
    def tree_forward(
        self: Any,
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
        result = forward(
            self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs
        )
        step = active_step()
        if step is not None and attn_metadata is not None and self.attn_type == "decoder":
            k_cache, v_cache = split_kv_cache(kv_cache, getattr(layer, "isa", None))
            step.attend(
                query.view(query.shape[0], self.num_heads, -1),
                k_cache,
                v_cache,
                attn_metadata.block_table,
                attn_metadata.slot_mapping,
                output.view(output.shape[0], self.num_heads, -1),
                self.scale,
            )
        return result

    impl_cls.forward = tree_forward


def apply_cpu(module: ModuleType) -> None:
    wrap_forward(module.CPUAttentionBackendImpl)


def apply_triton(module: ModuleType) -> None:
    wrap_forward(module.TritonAttentionImpl)
