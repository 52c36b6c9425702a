"""Plain-PyTorch ViSpec draft: the oracle the vLLM draft is tested against, and what training fits.

One Llama decoder layer (input and final norms only where a checkpoint trained them) over an
EAGLE-shifted sequence in which every image is replaced by ``num_q - 1`` compressed tokens from a
vision adaptor, and every text position sees the latest image's global feature through ``img_fc``.
Where images sit is decided by :mod:`vllm_vispec.layout`. Parameter names are those of the official
checkpoints, so an official state dict loads with ``strict=True``. No vLLM import, no KV cache:
every call recomputes the whole sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vllm_vispec.compressor import ElasticCompressor
from vllm_vispec.config import ViSpecConfig
from vllm_vispec.layout import DraftLayout, draft_layout, image_spans


@dataclasses.dataclass
class DraftInput:
    """One request as the draft sees it after a target forward pass over the prompt.

    ``token_ids`` [L + 1]: the prompt plus the target's next token, so draft position ``t`` pairs
    ``hidden_states[t]`` with ``token_ids[t + 1]``. ``hidden_states`` [L, H]: the target's
    last-layer hidden states after its final norm. ``image_embeds``: one [n_i, H] tensor per
    image, in order, the target's input embeddings at that image's n_i placeholder tokens.
    """

    token_ids: torch.Tensor
    hidden_states: torch.Tensor
    image_embeds: list[torch.Tensor] = dataclasses.field(default_factory=list)
    image_token_ids: Collection[int] = ()


@dataclasses.dataclass
class DraftOutput:
    """The draft's outputs at the L draft positions of a request.

    ``logits`` [L, V] and ``hidden_states`` [L, H] (the pre-lm_head output EAGLE feeds back as
    the next step's hidden state) hold exact zeros at unseen positions, which have no output;
    ``visible`` [L] marks the other (text and compressed) positions.
    """

    logits: torch.Tensor
    hidden_states: torch.Tensor
    visible: torch.Tensor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama (rotate-half) RoPE tables for integer positions of any shape: [..., head_dim].

    Computed in float32 as HF and vLLM do (float64 for a float64 model, for tight tests).
    """
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=positions.device, dtype=compute) / head_dim
    )
    freqs = positions.to(compute)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def vision_adaptor(
    x: torch.Tensor,
    q: torch.Tensor,
    k_proj: nn.Linear,
    v_proj: nn.Linear,
    o_proj: nn.Linear,
) -> torch.Tensor:
    """Pool one image's embeddings ``x`` [n, H] into ``num_q`` vectors [num_q, H].

    Non-causal attention of the learned queries ``q`` [num_q, nh, hd] over the projected image
    rows, per head, so the result does not depend on the order of the rows.
    """
    num_q, nh, hd = q.shape
    k = k_proj(x).view(-1, nh, hd).transpose(0, 1)  # [nh, n, hd]
    v = v_proj(x).view(-1, nh, hd).transpose(0, 1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k, v)  # [nh, num_q, hd]
    return o_proj(out.transpose(0, 1).reshape(num_q, nh * hd))


class VisionAdaptor(nn.Module):
    def __init__(self, config: ViSpecConfig):
        super().__init__()
        h, nh, hd = config.hidden_size, config.num_attention_heads, config.adaptor_head_dim
        self.q = nn.Parameter(torch.randn(config.num_q, nh, hd) * hd**-0.5)
        self.k_proj = nn.Linear(h, nh * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, nh * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(nh * hd, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vision_adaptor(x, self.q, self.k_proj, self.v_proj, self.o_proj)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise in (at least) float32, as HF Llama does, then scale in the input dtype."""
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ViSpecConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        h, q_size = config.hidden_size, self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(h, q_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, kv_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, h, bias=False)

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries [B, nh, T, hd] and keys [B, nkv, T, hd], and values, of rows ``x``
        [B, T, H] (also what a KV-cached decode step appends: benchmarks/gpu_check.py)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Causal attention over right-padded rows ``x`` [B, T, H]; ``cos``/``sin`` [B, T, hd].

        With padding only at the end, a real row never sees a padding row, so ``is_causal``
        suffices; padding rows produce finite garbage that callers drop.
        """
        b, t, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        groups = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, config: ViSpecConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Llama decoder layer; without ``input_norm`` (released drafts) the fc output enters
    attention as is."""

    def __init__(self, config: ViSpecConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = (
            RMSNorm(config.hidden_size, config.rms_norm_eps) if config.input_norm else None
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a = x if self.input_layernorm is None else self.input_layernorm(x)
        x = x + self.self_attn(a, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class ViSpecDraft(nn.Module):
    """The ViSpec draft model, official tensor names, the target's lm_head passed in.

    ``lm_head_weight`` [V, H] is kept as a non-persistent buffer: it is never trained, never
    saved, and not part of ``state_dict`` (so official checkpoints load strictly). It may be the
    target's own tensor (no copy).
    """

    def __init__(self, config: ViSpecConfig, lm_head_weight: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, h)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList([DecoderLayer(config)])
        self.fc = nn.Linear(2 * h, h, bias=config.fc_bias)
        if config.has_adaptor:
            self.img_fc = nn.Linear(2 * h, h, bias=config.fc_bias)
            self.imadpt = VisionAdaptor(config)
        self.compressor = ElasticCompressor(config) if config.kind == "specvlm" else None
        # Training: per image drawn, the gate's expected share of rows kept and the log
        # probability of the drawn choice (the trainer's compute term and score-function term).
        self.gate_log: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.gate_warmup = False  # training: draw every primitive uniformly, the gate idle
        # Its output is both the fed-back hidden state and the logits' input.
        self.norm = RMSNorm(h, config.rms_norm_eps) if config.final_norm else None
        self.register_buffer("lm_head_weight", lm_head_weight, persistent=False)
        self.reset_img_fc()

    @torch.no_grad()
    def reset_img_fc(self) -> None:
        """Make ``img_fc`` pass the target hidden state through and ignore ``g``, so an
        untrained ViSpec draft is the plain EAGLE draft it was initialised from."""
        if not self.config.has_adaptor:
            return
        h = self.config.hidden_size
        self.img_fc.weight.zero_()
        self.img_fc.weight[:, :h].copy_(torch.eye(h))
        if self.img_fc.bias is not None:
            self.img_fc.bias.zero_()

    def text_inputs(
        self, next_ids: torch.Tensor, hidden: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """Decoder-layer input of text positions.

        ``fc(cat(embed(next_ids), img_fc(cat(hidden, g))))``, all rows [N, H] (ids [N]);
        EagleVLM drafts have no ``img_fc``: ``fc(cat(embed(next_ids), hidden))``.
        """
        return self.fc_inputs(self.embed_tokens(next_ids), hidden, g)

    def fc_inputs(
        self, embeds: torch.Tensor, hidden: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        if self.config.has_adaptor:
            hidden = self.img_fc(torch.cat((hidden, g), dim=-1))
        return self.fc(torch.cat((embeds, hidden), dim=-1))

    def layer_inputs(self, inp: DraftInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder-layer inputs of a request's visible positions, in position order.

        Returns the rows [Lv, H], their raw positions [Lv] (the RoPE positions), and the global
        feature [H] that applies after the prompt (zeros without images).
        """
        if not self.config.has_adaptor:
            return self._eaglevlm_inputs(inp)
        layout = self.layout(inp)
        pooled = [self.imadpt(x) for x in inp.image_embeds]  # each [num_q, H]
        zeros = inp.hidden_states.new_zeros(1, self.config.hidden_size)
        globals_ = torch.cat([zeros] + [p[-1:] for p in pooled])  # row 0: no image yet
        x = inp.hidden_states.new_zeros(inp.hidden_states.shape)
        text = layout.is_text
        g = globals_[layout.global_image[text] + 1]
        x[text] = self.text_inputs(inp.token_ids[1:][text], inp.hidden_states[text], g)
        compressed = layout.is_compressed
        if compressed.any():
            table = torch.cat([p[:-1] for p in pooled])
            x[compressed] = table[
                layout.image[compressed] * (self.config.num_q - 1) + layout.slot[compressed]
            ]
        visible = layout.visible
        return x[visible], layout.positions[visible], globals_[-1]

    def _eaglevlm_inputs(self, inp: DraftInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EagleVLM: where the next token is an image token, the image's token (its image
        embedding, or with SpecVLM's compressor one of the image's compressed tokens, at the
        image's last positions) replaces the token embedding; other image positions are
        unseen."""
        tokens = self.image_tokens(inp)
        layout = self.layout(inp, [t.shape[0] for t in tokens])
        embeds = self.embed_tokens(inp.token_ids[1:])
        image = layout.is_compressed
        if image.any():
            starts = torch.tensor([0] + [t.shape[0] for t in tokens]).cumsum(0)
            rows = starts[layout.image[image]] + layout.slot[image]
            embeds[image] = torch.cat(tokens)[rows].to(embeds.dtype)
        g = inp.hidden_states.new_zeros(embeds.shape)
        x = self.fc_inputs(embeds, inp.hidden_states, g)
        visible = layout.visible
        return x[visible], layout.positions[visible], g[0]

    def image_tokens(self, inp: DraftInput) -> list[torch.Tensor]:
        """EagleVLM's tokens of each image: its embeddings, or what the compressor makes of
        them (the gate reading the prompt's text before the image)."""
        if self.compressor is None:
            return list(inp.image_embeds)
        ids = inp.token_ids
        text = ~torch.isin(ids, torch.tensor(list(inp.image_token_ids), dtype=ids.dtype))
        spans = image_spans(ids, inp.image_token_ids)
        tokens = []
        for (start, _), image in zip(spans, inp.image_embeds, strict=True):
            context = self.embed_tokens(ids[:start][text[:start]])
            if self.training and self.compressor.gate is not None:
                tokens.append(self._gumbel_tokens(image, context))
            else:
                tokens.append(self.compressor(image, self.compressor.choose(image, context)))
        return tokens

    def _gumbel_tokens(self, image: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Training: one primitive drawn by Gumbel-softmax, its tokens scaled by the
        straight-through weight (1 in value, the soft weight's gradient). ``gate_log`` gets
        the expected share of rows kept and the drawn choice's log probability: a choice whose
        tokens add nothing (``text``) gets no straight-through gradient, so the trainer also
        scores each draw by its request's loss."""
        compressor = self.compressor
        if self.gate_warmup:  # every primitive learns to serve before the gate judges them
            k = int(torch.randint(len(compressor.choices), ()))
            return compressor(image, compressor.choices[k])
        logits = compressor.gate_logits(image, context)
        soft = F.gumbel_softmax(logits, tau=1.0)
        k = int(soft.argmax())
        if self.gate_log is not None:
            n = image.shape[0]
            shares = logits.new_tensor(
                [compressor.num_tokens(n, c) / n for c in compressor.choices]
            )
            probs = logits.softmax(-1)
            self.gate_log.append(((probs * shares).sum(), probs[k].log()))
        return compressor(image, compressor.choices[k]) * (1 + soft[k] - soft[k].detach())

    def layout(self, inp: DraftInput, kept: Sequence[int] | None = None) -> DraftLayout:
        """The request's draft layout, after checking the input against it (``kept``: the
        visible positions of each image of an EagleVLM or SpecVLM draft)."""
        num_positions = inp.hidden_states.shape[0]
        if inp.token_ids.shape[0] != num_positions + 1:
            raise ValueError(
                f"token_ids has {inp.token_ids.shape[0]} tokens, expected "
                f"len(hidden_states) + 1 = {num_positions + 1}"
            )
        spans = image_spans(inp.token_ids, inp.image_token_ids)
        lengths = [e - s for s, e in spans]
        given = [x.shape[0] for x in inp.image_embeds]
        if given != lengths:
            raise ValueError(
                f"image_embeds have {given} rows, the token ids hold images of {lengths} tokens"
            )
        device = inp.hidden_states.device
        num_q = self.config.num_q if self.config.has_adaptor else kept
        return draft_layout(spans, num_q, 0, num_positions, device=device)

    def decode(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run the decoder layer on right-padded rows [B, T, H] at raw positions [B, T]."""
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        out = self.layers[0](x, cos, sin)
        return out if self.norm is None else self.norm(out)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head_weight is None:
            raise RuntimeError("ViSpecDraft needs the target's lm_head weight to give logits")
        return F.linear(hidden, self.lm_head_weight)

    def outputs(self, inputs: list[DraftInput]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Output hidden states [L, H] (zeros at unseen positions) and the visible mask [L] of
        several requests; training takes logits only where it needs them."""
        rows, positions = zip(*(self.layer_inputs(inp)[:2] for inp in inputs), strict=True)
        x = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        out = self.decode(x, nn.utils.rnn.pad_sequence(positions, batch_first=True))
        results = []
        for b, (inp, pos) in enumerate(zip(inputs, positions, strict=True)):
            # Draft position t is row t, so the visible rows are indexed by their positions.
            hidden = out.new_zeros(inp.hidden_states.shape)
            hidden[pos] = out[b, : len(pos)]
            visible = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
            visible[pos] = True
            results.append((hidden, visible))
        return results

    def forward(self, inputs: list[DraftInput]) -> list[DraftOutput]:
        """Draft logits and hidden states at every draft position of several requests."""
        return [
            DraftOutput(self.logits(hidden) * visible[:, None], hidden, visible)
            for hidden, visible in self.outputs(inputs)
        ]

    @torch.no_grad()
    def greedy_chain(self, inp: DraftInput, k: int) -> list[int]:
        """Draft ``k`` tokens greedily after the prompt, EAGLE-1 style.

        Step ``i`` (at raw position ``L + i``) pairs the draft's own output at the previous
        position with the token drafted there and the global feature of the prompt's last image.
        Drafted tokens are never taken for images, whatever their id.
        """
        x, pos, g = self.layer_inputs(inp)
        last = inp.hidden_states.shape[0] - 1
        if pos.numel() == 0 or int(pos[-1]) != last:
            raise ValueError(f"draft position {last} (before the next token) is unseen")
        drafted = []
        for _ in range(k):
            out = self.decode(x[None], pos[None])[0, -1]
            token = self.logits(out).argmax()
            drafted.append(int(token))
            step = self.text_inputs(token[None], out[None], g[None])
            x = torch.cat((x, step))
            pos = torch.cat((pos, pos[-1:] + 1))
        return drafted
