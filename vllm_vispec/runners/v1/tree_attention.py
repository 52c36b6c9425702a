"""Tree-masked target attention for the tree rows of a verification step.

vLLM's attention backends take no custom mask (CPU) or one shape per batch (Triton's unused
``qq_bias``). The backend runs as always (writing every row's K/V at its linear slot and
attending causally); then, while the tree proposer holds a step that verifies trees, the tree
rows are recomputed over the cached prefix plus each node's ancestors. Installed by the tree
proposer on its own target's decoder attention layers (``impl.forward`` as an instance
attribute): other engines in the process keep vLLM's. The CPU and Triton backends are wrapped
(their KV layouts are the ones :func:`vllm_vispec.kernels.split_kv_cache` knows); start-up
validation refuses trees with any other backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.model_executor.layers.attention import Attention

from vllm_vispec.kernels.attention import split_kv_cache

if TYPE_CHECKING:
    from vllm_vispec.runners.v1.tree_proposer import ViSpecTreeProposer

# The backend implementations whose forward is wrapped (module, class); see the ledger.
BACKENDS = (
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackendImpl"),
    ("vllm.v1.attention.backends.triton_attn", "TritonAttentionImpl"),
)


def install(target: torch.nn.Module, drafter: ViSpecTreeProposer) -> None:
    """Wrap the forward of every decoder attention implementation of ``target``."""
    for layer in target.modules():
        if isinstance(layer, Attention) and layer.impl.attn_type == "decoder":
            impl = layer.impl
            name = (type(impl).__module__, type(impl).__name__)
            if name not in BACKENDS:
                raise RuntimeError(
                    f"ViSpec tree verification cannot mask {name[1]}; set vispec.tree to false"
                )
            impl.forward = _tree_forward(impl.forward, impl, drafter)


def _tree_forward(forward: Any, impl: Any, drafter: ViSpecTreeProposer) -> Any:
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
        step = drafter.step
        if step is not None and attn_metadata is not None:
            k_cache, v_cache = split_kv_cache(kv_cache, getattr(layer, "isa", None))
            step.attend(
                query.view(query.shape[0], impl.num_heads, -1),
                k_cache,
                v_cache,
                attn_metadata.block_table,
                attn_metadata.slot_mapping,
                output.view(output.shape[0], impl.num_heads, -1),
                impl.scale,
            )
        return result

    return tree_forward
