"""The ViSpec draft as a vLLM model: one Llama decoder layer, fc/img_fc and the vision adaptor.

Same semantics as :mod:`vllm_vispec.reference` (the oracle), built from vLLM layers so that
the draft's KV lives in vLLM's paged cache. Per-token vision inputs (which global image feature
applies, which positions carry a compressed image token, which are hidden) are not part of
vLLM's draft ``forward`` signature; the proposer hands them over with
:meth:`EagleViSpecForCausalLM.set_vision_context` before each forward.

Hiding image positions, two ways (``VLLM_VISPEC_DRAFT_ATTENTION``, see :func:`draft_attention`):

* ``mark``: any vLLM attention backend, with one extra head channel. Queries carry a constant 1
  there, keys carry 0 for visible positions and ``-HIDDEN_SCORE`` for hidden ones, values carry
  0. A hidden slot gets a score of about ``-HIDDEN_SCORE / sqrt(hd)``, whose softmax weight is
  exactly 0 in every float format vLLM caches in, and the mark travels inside the KV cache
  itself, so prefix-cached blocks and later prefill chunks see it. Costs: the head is padded to
  the next size the backends accept, hidden slots are still read, fp8 KV caches are refused.
* ``triton`` / ``torch``: vLLM's backend only writes the KV cache; the attention itself is
  :func:`vllm_vispec.kernels.draft_paged_attention`, given each request's hidden intervals
  (from its image spans, so prefix caching and chunking need no side table). No padding, and
  the Triton kernel never loads pages that are wholly hidden. ``triton`` is the GPU fast path
  (the default on CUDA); ``torch`` is its PyTorch reference, for checking the wiring on CPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.attention.attention import (
    get_attention_context,
    unified_kv_cache_update,
)
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.llama import LlamaMLP
from vllm.model_executor.models.utils import _merge_multimodal_embeddings, maybe_prefix
from vllm.platforms import current_platform

from vllm_vispec.config import ViSpecConfig
from vllm_vispec.kernels.adaptor import absorb_queries, vision_adaptor
from vllm_vispec.kernels.attention import draft_paged_attention, split_kv_cache
from vllm_vispec.kernels.attention.selfcheck import check_triton_attention

logger = init_logger(f"vllm.{__name__}")

HIDDEN_SCORE = 30000.0
# Head sizes the CPU attention backend implements; GPU backends take multiples of 8.
_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

DRAFT_ATTENTION_ENV = "VLLM_VISPEC_DRAFT_ATTENTION"
DRAFT_ATTENTION_CHOICES = ("auto", "mark", "triton", "torch")


def _requested_attention() -> str:
    return os.environ.get(DRAFT_ATTENTION_ENV, "auto").strip().lower() or "auto"


def _checked_triton(num_heads: int, num_kv_heads: int, head_dim: int, block_size: int) -> str:
    """``triton`` if the kernel compiles and matches its reference for this draft here.

    Otherwise ``auto`` falls back to ``mark`` with a warning, and an explicit ``triton`` stops
    the start-up with the reason.
    """
    try:
        dtype, device = torch.get_default_dtype(), current_platform.device_type
        check_triton_attention(num_heads, num_kv_heads, head_dim, block_size, dtype, device)
    except RuntimeError as e:
        if _requested_attention() == "triton":
            raise RuntimeError(f"{e}; set {DRAFT_ATTENTION_ENV}=mark") from e
        logger.warning("ViSpec: %s; the draft hides image slots with the mark instead", e)
        return "mark"
    return "triton"


def draft_attention(head_dim: int) -> str:
    """How this process hides image positions: ``mark``, ``triton`` or ``torch``.

    ``auto`` (the default) is ``triton`` on CUDA/ROCm, where the draft's KV cache uses vLLM's
    Triton attention backend (head sizes >= 32), and ``mark`` elsewhere. Raises ValueError for
    a value that cannot run here.
    """
    choice = _requested_attention()
    if choice not in DRAFT_ATTENTION_CHOICES:
        raise ValueError(
            f"{DRAFT_ATTENTION_ENV}={choice!r} is not one of {', '.join(DRAFT_ATTENTION_CHOICES)}"
        )
    gpu = current_platform.is_cuda_alike()
    if choice == "auto":
        return "triton" if gpu and head_dim >= 32 else "mark"
    if choice == "triton" and not gpu and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"{DRAFT_ATTENTION_ENV}=triton needs a GPU; on CPU use 'torch' (the same attention "
            "in PyTorch) or 'mark', or set TRITON_INTERPRET=1 to run the kernel interpreted "
            "(slow, for tests)"
        )
    if choice != "mark" and gpu and head_dim < 32:
        raise ValueError(
            f"{DRAFT_ATTENTION_ENV}={choice} needs head_dim >= 32 on GPUs (the draft has "
            f"{head_dim}); use 'mark'"
        )
    return choice


def padded_head_size(head_dim: int) -> int:
    """Smallest head size >= head_dim + 1 (the hiding channel) that attention backends run."""
    if current_platform.is_cpu():
        return next(s for s in _CPU_HEAD_SIZES if s > head_dim)
    return (head_dim + 1 + 7) // 8 * 8


@dataclasses.dataclass
class VisionContext:
    """Per-row vision inputs of one draft forward (rows = tokens, or requests in later steps).

    ``features`` holds every vector the rows refer to: compressed image tokens as the adaptor
    gave them, global features already projected by img_fc's image half; row 0 is all zeros
    (no image yet).
    """

    features: torch.Tensor  # [M, H]
    global_index: torch.Tensor  # [n] int64: row of the projected global feature (img_fc's W_g g)
    # [n] int64: feature row that replaces fc's output (a compressed image token), -1 = none
    compressed_index: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # [n] bool: position invisible to the draft's attention
    # Per request of the batch, the same raw positions as intervals (start [S], end [S],
    # cu [B + 1], int32): what the ``triton``/``torch`` attentions skip. None: nothing hidden.
    hidden_intervals: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


class ViSpecAttention(nn.Module):
    """Multi-head attention with 1-D RoPE at raw positions that leaves hidden positions out."""

    def __init__(self, cfg: ViSpecConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        self.mode = draft_attention(cfg.head_dim)
        if self.mode == "triton":
            block_size = vllm_config.cache_config.block_size or 16
            self.mode = _checked_triton(
                self.num_heads, self.num_kv_heads, self.head_dim, block_size
            )
        self.padded_dim = padded_head_size(cfg.head_dim) if self.mode == "mark" else cfg.head_dim
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size,
            self.head_dim,
            self.num_heads,
            self.num_kv_heads,
            bias=cfg.qkv_bias,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            self.num_heads * self.head_dim, cfg.hidden_size, bias=False, prefix=f"{prefix}.o_proj"
        )
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=cfg.max_position_embeddings,
            is_neox_style=True,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        )
        backend = None
        if self.mode != "mark" and current_platform.is_cuda_alike():
            # The kernel reads the cache itself: pin a backend whose layout it knows.
            from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend

            backend = TritonAttentionBackend
        self.attn = Attention(
            self.num_heads,
            self.padded_dim,
            self.scale,
            num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            prefix=f"{prefix}.attn",
            attn_backend=backend,
        )
        if self.mode != "mark" and self.attn.attn_backend.forward_includes_kv_cache_update:
            raise ValueError(
                f"the {self.attn.attn_backend.get_name()} attention backend writes its KV cache "
                f"inside its own attention; set {DRAFT_ATTENTION_ENV}=mark"
            )

    def _pad(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """[n, heads * hd] -> [n, heads, padded_dim], the extra channels zero."""
        x = x.view(x.shape[0], heads, self.head_dim)
        return (
            x if self.padded_dim == self.head_dim else F.pad(x, (0, self.padded_dim - x.shape[2]))
        )

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, context: VisionContext | None
    ) -> torch.Tensor:
        n = x.shape[0]
        qkv, _ = self.qkv_proj(x)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        q, k, v = (
            self._pad(q, self.num_heads),
            self._pad(k, self.num_kv_heads),
            self._pad(v, self.num_kv_heads),
        )
        if self.mode == "mark":
            q[:, :, self.head_dim] = 1.0
            if context is not None and context.hidden is not None:
                hidden = _fit(context.hidden, n, False)
                k[:, :, self.head_dim] = hidden.to(k.dtype)[:, None] * -HIDDEN_SCORE
            out = self.attn(q.flatten(1), k.flatten(1), v.flatten(1))
            out = out.view(n, self.num_heads, self.padded_dim)[..., : self.head_dim]
        else:
            out = self._attend_skipping(q, k, v, context)
        return self.o_proj(out.flatten(1))[0]

    def _attend_skipping(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        context: VisionContext | None,
    ) -> torch.Tensor:
        """vLLM's backend writes k/v to the paged cache; the kernel attends over the visible
        slots only (eager: vLLM runs this draft outside torch.compile and CUDA graphs)."""
        name = self.attn.layer_name
        unified_kv_cache_update(k, v, name)
        meta, layer, kv_cache, _ = get_attention_context(name)
        if meta is None:  # profiling run: no cache yet
            return torch.zeros_like(q)
        k_cache, v_cache = split_kv_cache(kv_cache, getattr(layer, "isa", None))
        batch = meta.seq_lens.shape[0]
        if context is None or context.hidden_intervals is None:
            start = end = meta.seq_lens.new_zeros(0)
            cu = meta.seq_lens.new_zeros(batch + 1)
        else:
            start, end, cu = context.hidden_intervals
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


class ViSpecDecoderLayer(nn.Module):
    """Llama layer 0 of an EAGLE draft: no input norm, post-attention norm, gated MLP."""

    def __init__(self, cfg: ViSpecConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.self_attn = ViSpecAttention(cfg, vllm_config, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg.hidden_size, cfg.intermediate_size, "silu", prefix=f"{prefix}.mlp")

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, context: VisionContext | None
    ) -> torch.Tensor:
        x = x + self.self_attn(positions, x, context)
        return x + self.mlp(self.post_attention_layernorm(x))


class VisionAdaptor(nn.Module):
    """Learned queries pooling an image's embeddings into num_q vectors (official ``imadpt``).

    Plain ``nn.Linear`` holders: the kernels read these weights directly, while vLLM's linear
    layers may repack theirs after loading (the CPU backend does).
    """

    def __init__(self, cfg: ViSpecConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.q = nn.Parameter(torch.empty(cfg.num_q, cfg.num_attention_heads, cfg.head_dim))
        self.k_proj = nn.Linear(h, h, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, h, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """``x`` [N, H] embeddings of B images back to back -> [B, num_q, H]."""
        # k_proj folded into the queries: the embeddings are read once, never projected.
        w = absorb_queries(self.q, self.k_proj.weight)
        return vision_adaptor(
            x.to(self.q.dtype),
            cu_seqlens,
            w,
            self.v_proj.weight,
            self.o_proj.weight,
            self.v_proj.bias,
        )


class ImageFeatureFc(nn.Module):
    """Official ``img_fc`` (Linear 2H -> H over ``cat(h, g)``) kept as its two halves.

    ``img_fc(cat(h, g)) = W_h h + b + W_g g``: the ``W_g g`` term is the same for every token
    after an image, so the proposer projects each image's global feature once
    (:meth:`project_global`) and tokens pay for an H -> H product, not 2H -> H.
    """

    def __init__(self, hidden_size: int, bias: bool) -> None:
        super().__init__()
        self.weight_h = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.weight_g = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size)) if bias else None

    def load_official(self, name: str, tensor: torch.Tensor) -> None:
        if name.endswith("bias"):
            self.bias.data.copy_(tensor)
        else:
            h = self.weight_h.shape[1]
            self.weight_h.data.copy_(tensor[:, :h])
            self.weight_g.data.copy_(tensor[:, h:])

    def project_global(self, g: torch.Tensor) -> torch.Tensor:
        return F.linear(g, self.weight_g)

    def forward(self, h: torch.Tensor, projected_g: torch.Tensor | None) -> torch.Tensor:
        out = F.linear(h, self.weight_h, self.bias)
        return out if projected_g is None else out + projected_g


class ViSpecModel(nn.Module):
    def __init__(self, cfg: ViSpecConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, h)
        target_layers = vllm_config.model_config.get_num_layers(vllm_config.parallel_config)
        # The draft's attention layer must not share a name with any target layer.
        self.layers = nn.ModuleList(
            [ViSpecDecoderLayer(cfg, vllm_config, maybe_prefix(prefix, f"layers.{target_layers}"))]
        )
        self.fc = ReplicatedLinear(2 * h, h, bias=cfg.fc_bias, return_bias=False)
        self.img_fc = ImageFeatureFc(h, cfg.fc_bias)
        self.imadpt = VisionAdaptor(cfg)


class EagleViSpecForCausalLM(nn.Module):
    """vLLM draft model for ViSpec checkpoints in the plugin's format (``vllm-vispec convert``).

    The target's lm_head is shared by vLLM's EAGLE loader (the checkpoint has none); the
    embedding copy in the checkpoint is replaced by the target's when identical.
    """

    supports_multimodal_embeddings = True
    has_own_embed_tokens = True
    has_own_lm_head = False

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        spec = vllm_config.speculative_config
        assert spec is not None and spec.draft_model_config is not None
        self.config = spec.draft_model_config.hf_config
        self.vispec_config = ViSpecConfig.from_hf_dict(self.config.to_dict())
        self.model = ViSpecModel(self.vispec_config, vllm_config, maybe_prefix(prefix, "model"))
        self.logits_processor = LogitsProcessor(self.vispec_config.vocab_size)
        self._context: VisionContext | None = None

    @property
    def num_q(self) -> int:
        return self.vispec_config.num_q

    @property
    def attends_by_intervals(self) -> bool:
        """True when the attention needs ``VisionContext.hidden_intervals`` (not the mark)."""
        return self.model.layers[0].self_attn.mode != "mark"

    def set_vision_context(self, context: VisionContext | None) -> None:
        """Vision inputs for the next forward calls (None: text only, no image feature)."""
        self._context = context

    def adapt_images(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Per image [num_q, H]: num_q - 1 compressed tokens, then the projected global feature.

        ``x`` holds the embeddings of B images back to back; returns [B, num_q, H].
        """
        out = self.model.imadpt(x, cu_seqlens)
        return torch.cat([out[:, :-1], self.model.img_fc.project_global(out[:, -1:])], dim=1)

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: list[torch.Tensor] | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeds = self.model.embed_tokens(input_ids)
        if not multimodal_embeddings or is_multimodal is None:
            return embeds
        return _merge_multimodal_embeddings(embeds, multimodal_embeddings, is_multimodal)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        n = hidden_states.shape[0]
        if inputs_embeds is None:
            inputs_embeds = m.embed_tokens(input_ids)
        ctx = self._context
        g = None if ctx is None else ctx.features[_fit(ctx.global_index, n, 0)]
        x = m.fc(torch.cat([inputs_embeds, m.img_fc(hidden_states, g)], dim=-1))
        if ctx is not None and ctx.compressed_index is not None:
            index = _fit(ctx.compressed_index, n, -1)
            compressed = ctx.features[index.clamp(min=0)].to(x.dtype)
            x = torch.where((index >= 0)[:, None], compressed, x)
        out = m.layers[0](positions, x, ctx)
        return out, out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load official ViSpec tensor names (q/k/v and gate/up are stacked by vLLM)."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = "model." + name
            if name.startswith("model.img_fc."):
                self.model.img_fc.load_official(name, tensor)
                loaded.update(n for n in params if n.startswith("model.img_fc."))
                continue
            shard = None
            for old, (new, shard_id) in _STACKED.items():
                if old in name:
                    name, shard = name.replace(old, new), shard_id
                    break
            param = params[name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            if shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            loaded.add(name)
        return loaded


def _fit(rows: torch.Tensor, n: int, fill: int | bool) -> torch.Tensor:
    """The first n rows; rows past the real tokens (CUDA-graph padding) get ``fill``."""
    if rows.shape[0] >= n:
        return rows[:n]
    return torch.cat([rows, rows.new_full((n - rows.shape[0],), fill)])


# Official (HF Llama) projection names -> vLLM's stacked parameters and their shard ids.
_STACKED = {
    ".self_attn.q_proj.": (".self_attn.qkv_proj.", "q"),
    ".self_attn.k_proj.": (".self_attn.qkv_proj.", "k"),
    ".self_attn.v_proj.": (".self_attn.qkv_proj.", "v"),
    ".mlp.gate_proj.": (".mlp.gate_up_proj.", 0),
    ".mlp.up_proj.": (".mlp.gate_up_proj.", 1),
}
