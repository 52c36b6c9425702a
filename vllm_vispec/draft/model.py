"""The ViSpec draft as a vLLM model: one Llama decoder layer, fc/img_fc and the vision adaptor.

Same semantics as :mod:`vllm_vispec.tools.reference` (the oracle), built from vLLM layers so that
the draft's KV lives in vLLM's paged cache. Per-token vision inputs (which global image feature
applies, which positions carry a compressed image token, which are unseen) are not part of
vLLM's draft ``forward`` signature; the proposer writes them once per ``propose()`` into
:class:`~vllm_vispec.draft.inputs.DraftInputs` (``EagleViSpecForCausalLM.inputs``), tensors
at fixed addresses that the draft reads like any other input, so vLLM can compile it and capture
it in CUDA graphs. Images reach the draft only that way: vLLM's merge of image embeddings into
the draft's input embeddings is switched off (every draft position whose input token is an
image token is unseen or replaced by a compressed token, so the merged embeddings would never
be used).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.llama import LlamaMLP
from vllm.model_executor.models.utils import maybe_prefix
from vllm.platforms import current_platform

from vllm_vispec.compressor import ElasticCompressor
from vllm_vispec.config import ViSpecConfig
from vllm_vispec.draft.adaptor import ImageFeatureFc, VisionAdaptor
from vllm_vispec.draft.attention import ViSpecAttention
from vllm_vispec.draft.attention_mode import draft_attention
from vllm_vispec.draft.inputs import DraftInputs
from vllm_vispec.settings import vispec_settings


class ViSpecDecoderLayer(nn.Module):
    """Llama layer 0 of an EAGLE draft: post-attention norm, gated MLP, and an input norm only
    where the checkpoint trained one (NeMo exports)."""

    def __init__(
        self, cfg: ViSpecConfig, vllm_config: VllmConfig, prefix: str, inputs: DraftInputs
    ) -> None:
        super().__init__()
        self.self_attn = ViSpecAttention(cfg, vllm_config, f"{prefix}.self_attn", inputs)
        self.input_layernorm = (
            RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps) if cfg.input_norm else None
        )
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg.hidden_size, cfg.intermediate_size, "silu", prefix=f"{prefix}.mlp")

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, unseen: torch.Tensor
    ) -> torch.Tensor:
        a = x if self.input_layernorm is None else self.input_layernorm(x)
        x = x + self.self_attn(positions, a, unseen)
        return x + self.mlp(self.post_attention_layernorm(x))


def draft_compiles(vllm_config: VllmConfig) -> bool:
    """vLLM may compile the draft (as its own EAGLE drafts) only with the ``mark`` attention:
    the skipping attentions call their kernel from Python around vLLM's cache update."""
    cfg = draft_config(vllm_config)
    return draft_attention(cfg.head_dim, vispec_settings(vllm_config).draft_attention) == "mark"


def _draft_hf_config(vllm_config: VllmConfig) -> Any:
    spec = vllm_config.speculative_config
    assert spec is not None and spec.draft_model_config is not None
    return spec.draft_model_config.hf_config


def draft_config(vllm_config: VllmConfig) -> ViSpecConfig:
    """The engine's draft as a :class:`ViSpecConfig`."""
    return ViSpecConfig.from_hf_dict(_draft_hf_config(vllm_config).to_dict())


@support_torch_compile(
    dynamic_arg_dims={
        name: 0
        for name in (
            "input_ids",
            "positions",
            "hidden_states",
            "global_rows",
            "compressed_rows",
            "compressed",
            "unseen",
        )
    },
    enable_if=draft_compiles,
)
class ViSpecModel(nn.Module):
    """Everything a draft forward computes; its inputs are tensors only (vision inputs come
    from :class:`~vllm_vispec.draft.inputs.DraftInputs`), so vLLM can compile it."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", inputs: DraftInputs) -> None:
        super().__init__()
        cfg = draft_config(vllm_config)
        h = cfg.hidden_size
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, h)
        target_layers = vllm_config.model_config.get_num_layers(vllm_config.parallel_config)
        # The draft's attention layer must not share a name with any target layer.
        self.layers = nn.ModuleList(
            [
                ViSpecDecoderLayer(
                    cfg, vllm_config, maybe_prefix(prefix, f"layers.{target_layers}"), inputs
                )
            ]
        )
        self.fc = ReplicatedLinear(2 * h, h, bias=cfg.fc_bias, return_bias=False)
        # EagleVLM drafts have neither: their image positions read the image embeddings.
        self.img_fc = ImageFeatureFc(h, cfg.fc_bias) if cfg.has_adaptor else None
        self.imadpt = VisionAdaptor(cfg) if cfg.has_adaptor else None
        self.compressor = ElasticCompressor(cfg) if cfg.kind == "specvlm" else None
        # Output norm of NeMo exports: its output is what EAGLE feeds back and the lm_head reads.
        self.norm = RMSNorm(h, eps=cfg.rms_norm_eps) if cfg.final_norm else None

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        global_rows: torch.Tensor,
        compressed_rows: torch.Tensor,
        compressed: torch.Tensor,
        unseen: torch.Tensor,
    ) -> torch.Tensor:
        """Rows: ``global_rows`` img_fc's image half of each row's global feature,
        ``compressed_rows`` where ``compressed``: the compressed image token replacing fc's
        output (ViSpec) or the image's token replacing the token embedding (EagleVLM: the image
        embedding; SpecVLM: a token of the compressor),
        ``unseen`` the positions the ``mark`` attention hides."""
        embeds = self.embed_tokens(input_ids)
        if self.img_fc is None:
            embeds = torch.where(compressed[:, None], compressed_rows.to(embeds.dtype), embeds)
        x = self.fc(torch.cat([embeds, hidden_states], dim=-1))
        if self.img_fc is not None:  # img_fc is folded into fc (ImageFeatureFc.fold_into)
            x = self.img_fc(x, global_rows)
            x = torch.where(compressed[:, None], compressed_rows.to(x.dtype), x)
        out = self.layers[0](positions, x, unseen)
        return out if self.norm is None else self.norm(out)


class EagleViSpecForCausalLM(nn.Module):
    """vLLM draft model for ViSpec checkpoints in the plugin's format (``vllm-vispec convert``).

    The target's lm_head is shared by vLLM's EAGLE loader (the checkpoint has none); the
    embedding copy in the checkpoint is replaced by the target's when identical.
    """

    has_own_embed_tokens = True
    has_own_lm_head = False

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = _draft_hf_config(vllm_config)
        self.vispec_config = draft_config(vllm_config)
        scheduler = vllm_config.scheduler_config
        # What the proposer hands each forward beyond vLLM's arguments (one object, shared
        # with the attention layer by reference).
        self.inputs = DraftInputs(
            scheduler.max_num_batched_tokens,
            scheduler.max_num_seqs,
            self.vispec_config.hidden_size,
            torch.get_default_dtype(),
            current_platform.device_type,
        )
        self.model = ViSpecModel(
            vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"), inputs=self.inputs
        )
        self.logits_processor = LogitsProcessor(self.vispec_config.vocab_size)

    @property
    def num_q(self) -> int | None:
        """The adaptor's outputs per image; None for EagleVLM drafts (no adaptor)."""
        return self.vispec_config.num_q if self.vispec_config.has_adaptor else None

    @property
    def attends_by_intervals(self) -> bool:
        """True when the attention needs the unseen positions as intervals (not the mark)."""
        return self.model.layers[0].self_attn.mode != "mark"

    def adapt_images(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Per image [num_q, H]: num_q - 1 compressed tokens, then the projected global feature.

        ``x`` holds the embeddings of B images back to back; returns [B, num_q, H].
        """
        out = self.model.imadpt(x, cu_seqlens)
        return torch.cat([out[:, :-1], self.model.img_fc.project_global(out[:, -1:])], dim=1)

    @torch.inference_mode()
    def compress_images(
        self, images: Sequence[torch.Tensor], contexts: Sequence[torch.Tensor]
    ) -> list[tuple[str, torch.Tensor]]:
        """SpecVLM: each image's choice and tokens [m_i, H] from its embeddings [n_i, H], the
        compressor's gate reading the prompt's text ids before the image."""
        compressor = self.model.compressor
        out = []
        for image, ids in zip(images, contexts, strict=True):
            image = image.to(self.model.fc.weight.dtype)
            choice = compressor.choose(image, self.model.embed_tokens(ids))
            out.append((choice, compressor(image, choice)))
        return out

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # vLLM passes token ids (the proposer turns its image-embedding merge off).
        assert inputs_embeds is None, "ViSpec drafts embed their own input ids"
        n, v = hidden_states.shape[0], self.inputs
        out = self.model(
            input_ids,
            positions,
            hidden_states,
            v.global_rows[:n],
            v.compressed_rows[:n],
            v.compressed[:n],
            v.unseen[:n],
        )
        v.advance()
        return out, out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load official ViSpec tensor names (q/k/v and gate/up are stacked by vLLM)."""
        params = dict(self.named_parameters())
        attention = self.model.layers[0].self_attn
        loaded: set[str] = set()
        for name, tensor in weights:
            name = "model." + name
            if name.startswith("model.img_fc."):
                self.model.img_fc.load_official(name, tensor)
                loaded.update(n for n in params if n.startswith("model.img_fc."))
                continue
            if ".self_attn.o_proj." in name:
                tensor = attention.padded(tensor, columns=True)
            shard = None
            for old, (new, shard_id) in _STACKED.items():
                if old in name:
                    name, shard = name.replace(old, new), shard_id
                    if ".self_attn." in old:
                        tensor = attention.padded(tensor)
                    break
            param = params[name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            if shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            loaded.add(name)
        if attention.set_mark_bias():
            loaded.add(next(n for n, p in params.items() if p is attention.qkv_proj.bias))
        if self.model.imadpt is not None:
            self.model.imadpt.absorb()
        if self.model.img_fc is not None:
            self.model.img_fc.fold_into(self.model.fc.weight.data)
        return loaded


# Official (HF Llama) projection names -> vLLM's stacked parameters and their shard ids.
_STACKED = {
    ".self_attn.q_proj.": (".self_attn.qkv_proj.", "q"),
    ".self_attn.k_proj.": (".self_attn.qkv_proj.", "k"),
    ".self_attn.v_proj.": (".self_attn.qkv_proj.", "v"),
    ".mlp.gate_proj.": (".mlp.gate_up_proj.", 0),
    ".mlp.up_proj.": (".mlp.gate_up_proj.", 1),
}
