"""The draft's image path: the vision adaptor (official ``imadpt``) and ``img_fc``'s two halves."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vllm_vispec.config import ViSpecConfig
from vllm_vispec.kernels.adaptor import absorb_queries, vision_adaptor


class VisionAdaptor(nn.Module):
    """Learned queries pooling an image's embeddings into num_q vectors (official ``imadpt``).

    Plain ``nn.Linear`` holders: the kernels read these weights directly, while vLLM's linear
    layers may repack theirs after loading (the CPU backend does).
    """

    def __init__(self, cfg: ViSpecConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        nh = cfg.num_attention_heads
        self.q = nn.Parameter(torch.empty(cfg.num_q, nh, cfg.adaptor_head_dim))
        self.k_proj = nn.Linear(h, h, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, h, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.absorbed: torch.Tensor | None = None  # [num_q, nh, H] fp32, set by absorb()

    def absorb(self) -> None:
        """Fold k_proj into the queries once the weights are loaded (they never change after)."""
        with torch.no_grad():
            self.absorbed = absorb_queries(self.q, self.k_proj.weight)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """``x`` [N, H] embeddings of B images back to back -> [B, num_q, H]."""
        # The embeddings are read once and never projected by k_proj (see absorb()).
        return vision_adaptor(
            x.to(self.q.dtype),
            cu_seqlens,
            self.absorbed,
            self.v_proj.weight,
            self.o_proj.weight,
            self.v_proj.bias,
        )


class ImageFeatureFc(nn.Module):
    """Official ``img_fc`` (Linear 2H -> H over ``cat(h, g)``), folded into ``fc`` at load time.

    The draft computes ``fc(cat(e, img_fc(cat(h, g))))``. Written with ``fc = [F_e | F_h] + c``
    and ``img_fc = [W_h | W_g] + b``, that is ``[F_e | F_h W_h] cat(e, h) + c + F_h b + F_h W_g g``:
    :meth:`fold_into` rewrites ``fc``'s second half to ``F_h W_h`` once the weights are loaded,
    so a step costs what vLLM's EAGLE step does (one 2H -> H product) plus an add of
    ``F_h W_g g``, which is the same for every token after an image: the proposer projects each
    image's global feature once (:meth:`project_global`).
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

    @torch.no_grad()
    def fold_into(self, fc_weight: torch.Tensor) -> None:
        """After loading, before vLLM repacks ``fc``: ``fc``'s hidden half becomes
        ``F_h W_h``, ``weight_g`` becomes ``F_h W_g`` and ``bias`` ``F_h b`` (in fp32)."""
        h = self.weight_h.shape[1]
        f_h = fc_weight[:, h:].float().clone()  # fc_weight's half is overwritten below
        fc_weight[:, h:] = (f_h @ self.weight_h.float()).to(fc_weight.dtype)
        self.weight_g.data = (f_h @ self.weight_g.float()).to(self.weight_g.dtype)
        if self.bias is not None:
            self.bias.data = (f_h @ self.bias.float()).to(self.bias.dtype)
        self.weight_h.data = self.weight_h.data.new_empty(0)  # folded: never read again

    def project_global(self, g: torch.Tensor) -> torch.Tensor:
        return F.linear(g, self.weight_g)

    def forward(self, x: torch.Tensor, projected_g: torch.Tensor) -> torch.Tensor:
        """``x`` the folded ``fc``'s output; ``projected_g`` each row's projected global
        feature (zero without an image)."""
        x = x + projected_g
        return x if self.bias is None else x + self.bias
