"""The draft's self-attention: 1-D RoPE at raw token positions, unseen image positions left out.

``mark`` (any backend): queries carry a constant 1 in one extra head channel, keys carry 0 for
visible positions and ``-UNSEEN_SCORE`` for unseen ones, values carry 0. An unseen slot gets a
score of about ``-UNSEEN_SCORE / sqrt(hd)``, whose softmax weight is exactly 0 in every float
format vLLM caches in, and the mark travels inside the KV cache itself, so prefix-cached blocks
and later prefill chunks see it. ``triton`` / ``torch``: vLLM's backend writes the KV cache and
:func:`vllm_vispec.kernels.draft_paged_attention` attends over the visible slots only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.attention.attention import (
    get_attention_context,
    unified_kv_cache_update,
)
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.platforms import current_platform

from vllm_vispec.config import ViSpecConfig
from vllm_vispec.draft.attention_mode import (
    DRAFT_ATTENTION_SETTING,
    checked_triton,
    draft_attention,
    padded_head_size,
)
from vllm_vispec.draft.inputs import DraftInputs, TreePass
from vllm_vispec.kernels.attention import draft_paged_attention, layer_kv_cache
from vllm_vispec.kernels.tree import tree_paged_attention
from vllm_vispec.settings import vispec_settings

UNSEEN_SCORE = 30000.0


def _attention_mode(cfg: ViSpecConfig, vllm_config: VllmConfig) -> str:
    """The engine's draft attention, with the Triton kernel checked for this rank's heads
    (the mark where it cannot run)."""
    requested = vispec_settings(vllm_config).draft_attention
    mode = draft_attention(cfg.head_dim, requested)
    if mode != "triton":
        return mode
    tp = get_tensor_model_parallel_world_size()
    num_kv_heads = max(1, cfg.num_key_value_heads // tp)
    block_size = vllm_config.cache_config.block_size or 16
    return checked_triton(
        cfg.num_attention_heads // tp, num_kv_heads, cfg.head_dim, block_size, requested
    )


def _pinned_backend(mode: str) -> Any:
    """The skipping kernels read the cache themselves: on GPUs, pin the backend whose layout
    they know (None: vLLM's choice)."""
    if mode == "mark" or not current_platform.is_cuda_alike():
        return None
    from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend

    return TritonAttentionBackend


class ViSpecAttention(nn.Module):
    """Multi-head attention with 1-D RoPE at raw positions that leaves unseen positions out."""

    def __init__(
        self, cfg: ViSpecConfig, vllm_config: VllmConfig, prefix: str, inputs: DraftInputs
    ) -> None:
        super().__init__()
        self.inputs = inputs  # the draft's per-step inputs: unseen intervals, a tree pass
        # Heads are sharded over tensor-parallel ranks exactly as vLLM's Llama shards them:
        # qkv_proj's output and the Attention layer hold this rank's heads only, KV heads are
        # replicated when there are fewer than ranks, and o_proj sums the ranks' partial
        # outputs (validation refuses layouts that do not split).
        self.total_num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        self.mode = _attention_mode(cfg, vllm_config)
        self.qkv_bias = cfg.qkv_bias
        # The mark's extra channels live in the weights (:meth:`padded`, :meth:`set_mark_bias`):
        # q, k and v come out of qkv_proj at the padded head size, q's mark channel is its bias
        # (1), and o_proj reads the padded heads, so a step adds only the keys' mark to vLLM's
        # Llama attention.
        self.padded_dim = padded_head_size(cfg.head_dim) if self.mode == "mark" else cfg.head_dim
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size,
            self.padded_dim,
            self.total_num_heads,
            cfg.num_key_value_heads,
            bias=cfg.qkv_bias or self.mode == "mark",
            prefix=f"{prefix}.qkv_proj",
        )
        self.num_heads = self.qkv_proj.num_heads  # this rank's
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(
            self.total_num_heads * self.padded_dim,
            cfg.hidden_size,
            bias=False,
            prefix=f"{prefix}.o_proj",
        )
        self.rotary_emb = get_rope(
            self.padded_dim,
            max_position=cfg.max_position_embeddings,
            is_neox_style=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": cfg.rope_theta,
                "rope_dim": self.head_dim,
            },
        )
        self.attn = Attention(
            self.num_heads,
            self.padded_dim,
            self.scale,
            num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            prefix=f"{prefix}.attn",
            attn_backend=_pinned_backend(self.mode),
        )
        if self.mode != "mark" and self.attn.attn_backend.forward_includes_kv_cache_update:
            raise ValueError(
                f"the {self.attn.attn_backend.get_name()} attention backend writes its KV cache "
                f"inside its own attention; set {DRAFT_ATTENTION_SETTING} to 'mark'"
            )

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, unseen: torch.Tensor
    ) -> torch.Tensor:
        """``unseen`` [n] bool: positions the ``mark`` hides (the skipping attentions read
        the draft inputs' ``unseen_intervals`` instead)."""
        n, pd = x.shape[0], self.padded_dim
        qkv, _ = self.qkv_proj(x)
        q_size, kv_size = self.num_heads * pd, self.num_kv_heads * pd
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        q, k, v = (
            q.view(n, self.num_heads, pd),
            k.view(n, self.num_kv_heads, pd),
            v.view(n, self.num_kv_heads, pd),
        )
        tree = self._tree_pass()
        if tree is not None:  # the nodes' keys keep their mark 0: visible to their children
            out = self._attend_tree(q, k, v, tree)
        elif self.mode == "mark":
            k[:, :, self.head_dim] = unseen.to(k.dtype)[:, None] * -UNSEEN_SCORE
            out = self.attn(q.flatten(1), k.flatten(1), v.flatten(1))
        else:
            out = self._attend_skipping(q, k, v)
        return self.o_proj(out.reshape(n, -1))[0]

    def padded(self, tensor: torch.Tensor, columns: bool = False) -> torch.Tensor:
        """A checkpoint's q/k/v rows (or o_proj's columns) at the padded head size, the extra
        channels zero: the mark's channels come from the weights, not from a per-step pad."""
        if self.padded_dim == self.head_dim:
            return tensor
        t = tensor.t() if columns else tensor
        t = t.reshape(-1, self.head_dim, *t.shape[1:])
        pad = torch.zeros(t.shape[0], self.padded_dim - self.head_dim, *t.shape[2:], dtype=t.dtype)
        t = torch.cat([t, pad], dim=1).flatten(0, 1)
        return t.t() if columns else t

    def set_mark_bias(self) -> bool:
        """After loading: q's mark channel 1 in qkv_proj's bias (zero elsewhere when the
        checkpoint has none); True when the bias is the plugin's own, not the checkpoint's."""
        if self.mode != "mark":
            return False
        bias = self.qkv_proj.bias.data
        if not self.qkv_bias:
            bias.zero_()
        q = bias[: self.num_heads * self.padded_dim].view(self.num_heads, self.padded_dim)
        q[:, self.head_dim] = 1.0
        return not self.qkv_bias

    def _tree_pass(self) -> TreePass | None:
        """The pass's tree layout when the forward is a tree pass (always eager: compiled
        graphs trace the chain passes only)."""
        return None if torch.compiler.is_compiling() else self.inputs.tree_pass

    def _attend_tree(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tree: TreePass
    ) -> torch.Tensor:
        """Write the nodes' K/V at their slots, then attend with the tree mask (the mark's
        channel: 1 in queries, 0 in the nodes' keys, so unseen context slots stay unseen)."""
        layer = self.attn
        layer.impl.do_kv_cache_update(layer, k, v, layer.kv_cache, tree.slots)
        k_cache, v_cache = layer_kv_cache(layer, layer.kv_cache)
        return tree_paged_attention(
            q,
            k_cache,
            v_cache,
            tree.query_start_loc,
            tree.block_table,
            tree.context_lens,
            tree.node_pos,
            tree.row_masks,
            *tree.unseen,
            self.scale,
        )

    def _attend_skipping(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        """vLLM's backend writes k/v to the paged cache; the kernel attends over the visible
        slots only (eager: the draft is compiled only with the ``mark`` attention)."""
        name = self.attn.layer_name
        unified_kv_cache_update(k, v, name)
        meta, layer, kv_cache, _ = get_attention_context(name)
        if meta is None:  # profiling run: no cache yet
            return torch.zeros_like(q)
        k_cache, v_cache = layer_kv_cache(layer, kv_cache)
        batch = meta.seq_lens.shape[0]
        if self.inputs.unseen_intervals is None:
            start = end = meta.seq_lens.new_zeros(0)
            cu = meta.seq_lens.new_zeros(batch + 1)
        else:
            start, end, cu = self.inputs.unseen_intervals
            if cu.shape[0] < batch + 1:  # padded requests past the real ones hide nothing
                cu = torch.cat([cu, cu[-1:].expand(batch + 1 - cu.shape[0])])
        return draft_paged_attention(
            q,
            k_cache,
            v_cache,
            meta.query_start_loc,
            meta.seq_lens,
            meta.block_table,
            start,
            end,
            cu[: batch + 1],
            self.scale,
            max_query_len=meta.max_query_len,
            use_triton=self.mode == "triton",
        )
