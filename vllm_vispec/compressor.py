"""SpecVLM's elastic visual compressor (arXiv 2509.11815): one image's embeddings -> a few tokens.

For an image of ``n`` embedding rows and ratio ``r`` (``compression``) the primitives give:

- ``prune``: the last row of each group of ``r`` consecutive rows, ``ceil(n / r)`` tokens (the
  paper prunes at random; a fixed stride keeps a draft's tokens a function of its input);
- ``pool``: the mean of each group, ``ceil(n / r)`` tokens;
- ``conv``: a Conv1d of kernel and stride ``r`` over the rows (the last group zero-padded),
  ``ceil(n / r)`` tokens;
- ``resampler``: learned queries attending over the rows (ViSpec's adaptor without its global
  token), ``min(resampler_queries, n)`` tokens;
- ``text``: no token, the draft reads the text alone.

The draft places the tokens at the image's last draft positions and hides the others
(:mod:`vllm_vispec.layout`); each token stands where an image embedding would stand in an
EagleVLM draft (``fc(cat(token, target hidden state))``).

The gate picks one primitive per image from ``cat(mean image embedding, mean draft embedding
of the prompt's text before the image)``: the argmax at inference, Gumbel-softmax in training.
It reads only what precedes the image's end, so an image gets the same tokens in one prefill
chunk or several, after preemption, and in every request that shares the prefix through vLLM's
prefix cache; a question placed after the image cannot steer it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vllm_vispec.config import ViSpecConfig
from vllm_vispec.kernels.adaptor.naive import naive_vision_adaptor


class Resampler(nn.Module):
    """Learned queries over an image's rows, with the tensor layout of ViSpec's adaptor."""

    def __init__(self, cfg: ViSpecConfig, num_queries: int) -> None:
        super().__init__()
        h, nh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.adaptor_head_dim
        self.q = nn.Parameter(torch.randn(num_queries, nh, hd) * hd**-0.5)
        self.k_proj = nn.Linear(h, h, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, h, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [n, H] -> [num_queries, H]."""
        cu = torch.tensor([0, x.shape[0]], device=x.device)
        weights = (self.k_proj, self.v_proj, self.o_proj)
        k, v, o = (m.weight for m in weights)
        return naive_vision_adaptor(x, cu, self.q, k, v, o, self.k_proj.bias, self.v_proj.bias)[0]


class ElasticCompressor(nn.Module):
    """The primitives a SpecVLM draft may use (``cfg.compressor_choices``) and its gate."""

    def __init__(self, cfg: ViSpecConfig) -> None:
        super().__init__()
        self.choices = cfg.compressor_choices
        self.ratio = cfg.compression
        self.num_queries = cfg.resampler_queries
        h, r = cfg.hidden_size, cfg.compression
        self.conv = nn.Conv1d(h, h, r, stride=r) if "conv" in self.choices else None
        self.resampler = Resampler(cfg, self.num_queries) if "resampler" in self.choices else None
        self.gate = nn.Linear(2 * h, len(self.choices)) if len(self.choices) > 1 else None

    def num_tokens(self, n: int, choice: str) -> int:
        """How many tokens ``choice`` makes of an image of ``n`` rows."""
        if choice == "text":
            return 0
        if choice == "resampler":
            return min(self.num_queries, n)
        return math.ceil(n / self.ratio)

    def gate_logits(self, image: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Scores of the choices [C] from an image's rows [n, H] and the text embeddings before
        it [t, H] (t may be 0)."""
        if self.gate is None:
            return image.new_zeros(1)
        text = context.mean(0) if context.shape[0] else image.new_zeros(image.shape[1])
        return self.gate(torch.cat([image.mean(0), text.to(image.dtype)]))

    def choose(self, image: torch.Tensor, context: torch.Tensor) -> str:
        """The inference choice: the gate's argmax (the only choice without a gate)."""
        return self.choices[int(self.gate_logits(image, context).argmax())]

    def forward(self, image: torch.Tensor, choice: str) -> torch.Tensor:
        """``image`` [n, H] -> its tokens under ``choice`` [m, H]."""
        n, h = image.shape
        if choice == "text":
            return image.new_zeros(0, h)
        if choice == "resampler":
            return self.resampler(image)[: self.num_tokens(n, choice)]
        m = self.num_tokens(n, choice)
        if choice == "prune":
            last = torch.arange(m, device=image.device) * self.ratio + self.ratio - 1
            return image[last.clamp(max=n - 1)]
        padded = F.pad(image, (0, 0, 0, m * self.ratio - n))  # [m * r, H]
        if choice == "pool":
            sizes = (n - torch.arange(m, device=image.device) * self.ratio).clamp(max=self.ratio)
            return padded.view(m, self.ratio, h).sum(1) / sizes[:, None].to(image.dtype)
        return self.conv(padded.t()[None])[0].t()
