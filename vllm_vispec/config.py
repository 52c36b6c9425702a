"""The ViSpec draft's hyper-parameters and the plugin's draft checkpoint ``config.json``.

Official ViSpec checkpoints ship a Llama-style ``config.json`` and keep ``num_q`` only in the
shape of ``imadpt.q``. The plugin's format is the same folder with the official tensor names,
plus an architecture that vLLM resolves and a ``vispec`` block recording ``num_q`` and where the
weights came from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# vLLM's EAGLEConfig keeps architectures that already start with "Eagle" as they are.
DRAFT_ARCHITECTURE = "EagleViSpecForCausalLM"
FORMAT_VERSION = 2  # 2: EagleVLM drafts and drafts with trained norms (input/final_norm)
# ViSpec: images compressed by the adaptor, a global image feature on text (img_fc).
# EagleVLM (SpecVLM's baseline): every image position seen, its image embedding as its input.
# SpecVLM: EagleVLM whose images pass SpecVLM's elastic compressor first.
DRAFT_KINDS = ("vispec", "eaglevlm", "specvlm")
# The compressor's primitives, in the gate's order; "gate" picks one per image.
COMPRESSORS = ("prune", "pool", "conv", "resampler", "text")


@dataclasses.dataclass(frozen=True)
class ViSpecConfig:
    """Shapes and options of one draft: one Llama decoder layer, plus the vision adaptor and
    ``img_fc`` for ``kind`` "vispec" (``num_q`` is the adaptor's); "eaglevlm" has neither.

    ``head_dim`` defaults to hidden / heads (the released drafts); drafts exported by NVIDIA NeMo
    Automodel take the target's, which may differ, and add two trained RMSNorms: before the
    layer's attention (``input_norm``) and on its output (``final_norm``).
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    qkv_bias: bool = False
    fc_bias: bool = True
    num_q: int = 2
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    input_norm: bool = False
    final_norm: bool = False
    kind: str = "vispec"
    compressor: str = "gate"  # specvlm: one of COMPRESSORS, or "gate"
    compression: int = 3  # specvlm: rows per token of prune/pool/conv
    resampler_queries: int = 2  # specvlm: the resampler's learned queries

    def __post_init__(self) -> None:
        if self.kind not in DRAFT_KINDS:
            raise ValueError(
                f"draft kind must be one of {', '.join(DRAFT_KINDS)}, got {self.kind!r}"
            )
        if self.compressor not in (*COMPRESSORS, "gate"):
            raise ValueError(
                f"compressor must be one of {', '.join(COMPRESSORS)} or gate, got "
                f"{self.compressor!r}"
            )
        if self.compression < 1 or self.resampler_queries < 1:
            raise ValueError(
                f"compression and resampler_queries must be >= 1, got {self.compression} and "
                f"{self.resampler_queries}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.num_q < 1:
            raise ValueError(f"num_q must be >= 1, got {self.num_q}")
        if self.head_dim < 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even number, got {self.head_dim}")
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.adaptor_head_dim)

    @property
    def adaptor_head_dim(self) -> int:
        """The adaptor's heads split hidden_size, whatever the attention's head_dim."""
        return self.hidden_size // self.num_attention_heads

    @property
    def has_adaptor(self) -> bool:
        return self.kind == "vispec"

    @property
    def compressor_choices(self) -> tuple[str, ...]:
        """What the SpecVLM compressor may pick per image (empty for other kinds)."""
        if self.kind != "specvlm":
            return ()
        return COMPRESSORS if self.compressor == "gate" else (self.compressor,)

    @property
    def needs_format_2(self) -> bool:
        """What plugins before format 2 would run wrongly instead of refusing."""
        return self.input_norm or self.final_norm or self.kind != "vispec"

    def _compressor_dict(self) -> dict[str, Any]:
        return {
            "compressor": self.compressor,
            "compression": self.compression,
            "resampler_queries": self.resampler_queries,
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], num_q: int | None = None) -> ViSpecConfig:
        """Read an official (Llama-style) or plugin ``config.json`` dict.

        ``num_q`` overrides the plugin's ``vispec.num_q``; official configs do not carry it.
        """
        rope_theta = d.get("rope_theta")
        if rope_theta is None:  # transformers >= 5 writes rope_parameters instead
            rope_theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        scaling = d.get("rope_scaling") or d.get("rope_parameters") or {}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        # A VLM target's M-RoPE is plain RoPE along one axis: the draft uses raw 1-D positions.
        if rope_type not in ("default", "mrope"):
            raise ValueError(f"rope scaling {rope_type!r} is not supported by ViSpec drafts")
        if d.get("num_hidden_layers", 1) != 1:
            raise ValueError(
                f"a ViSpec draft has exactly one decoder layer, config says "
                f"num_hidden_layers={d['num_hidden_layers']}"
            )
        vispec = d.get("vispec") or {}
        return cls(
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d.get("num_key_value_heads", d["num_attention_heads"])),
            vocab_size=int(d["vocab_size"]),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
            qkv_bias=bool(d.get("qkv_bias", False)),
            fc_bias=bool(d.get("bias", True)),
            num_q=int(num_q if num_q is not None else vispec.get("num_q", 2)),
            head_dim=int(d.get("head_dim") or 0),
            input_norm=bool(vispec.get("input_norm", False)),
            final_norm=bool(vispec.get("final_norm", False)),
            kind=str(vispec.get("kind", "vispec")),
            compressor=str(vispec.get("compressor", "gate")),
            compression=int(vispec.get("compression", 3)),
            resampler_queries=int(vispec.get("resampler_queries", 2)),
        )

    def to_hf_dict(self, **provenance: Any) -> dict[str, Any]:
        """The plugin's ``config.json``: Llama keys vLLM understands plus the ``vispec`` block."""
        return {
            "architectures": [DRAFT_ARCHITECTURE],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_hidden_layers": 1,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "qkv_bias": self.qkv_bias,
            "bias": self.fc_bias,
            "tie_word_embeddings": False,
            "vispec": {
                # Plain ViSpec drafts stay readable by plugins that predate format 2.
                "format_version": FORMAT_VERSION if self.needs_format_2 else 1,
                **({"kind": self.kind} if self.kind != "vispec" else {}),
                **(self._compressor_dict() if self.kind == "specvlm" else {}),
                "num_q": self.num_q,
                **({"input_norm": True} if self.input_norm else {}),
                **({"final_norm": True} if self.final_norm else {}),
                **provenance,
            },
        }


def is_plugin_config(d: dict[str, Any]) -> bool:
    """True for a converted (plugin-format) ViSpec draft config."""
    return DRAFT_ARCHITECTURE in (d.get("architectures") or []) and "vispec" in d
