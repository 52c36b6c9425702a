"""The frozen target as a teacher: one forward pass gives everything the draft trains on.

Per batch of conversations it returns, without gradients, the target's last-layer hidden states
(after its final norm, what vLLM hands its EAGLE drafts), its input embeddings (the image rows
of which feed ViSpec's vision adaptor), the RoPE positions vLLM's built-in EAGLE would use
(M-RoPE's temporal row on Qwen2.5-VL), and a function for its logits at chosen rows (the full
[L, V] logits of a real model would not fit in memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

SUPPORTED = {
    "Qwen2_5_VLForConditionalGeneration": ("image_token_id", "video_token_id"),
    "LlavaNextForConditionalGeneration": ("image_token_index",),
    "LlavaForConditionalGeneration": ("image_token_index",),
    "Qwen3VLForConditionalGeneration": ("image_token_id", "video_token_id"),
    "Qwen3VLMoeForConditionalGeneration": ("image_token_id", "video_token_id"),
}


class TeacherError(ValueError):
    """A target the trainer cannot use; the message says what to do."""


@dataclasses.dataclass
class TeacherOutput:
    """Right-padded [B, L, ...] tensors of one batch; rows past ``lengths[b]`` are padding."""

    hidden: torch.Tensor
    inputs_embeds: torch.Tensor
    rope_positions: torch.Tensor
    lengths: list[int]


class Teacher:
    """A local HF transformers VLM, frozen, in eval mode."""

    def __init__(self, target_dir: str | Path, device: torch.device, dtype: torch.dtype):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        target_dir = Path(target_dir)
        if not (target_dir / "config.json").is_file():
            raise TeacherError(
                f"target {target_dir} has no config.json; pass the local folder of a Qwen2.5-VL, "
                f"Qwen3-VL (dense or MoE), LLaVA-1.6 or LLaVA-1.5 model"
            )
        config = AutoConfig.from_pretrained(target_dir)
        arch = (config.architectures or ["?"])[0]
        if arch not in SUPPORTED:
            raise TeacherError(
                f"target architecture {arch} is not supported; train for one of "
                f"{', '.join(sorted(SUPPORTED))}"
            )
        self.image_token_ids = tuple(
            int(getattr(config, key)) for key in SUPPORTED[arch] if getattr(config, key, None)
        )
        self.processor = AutoProcessor.from_pretrained(target_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(target_dir, dtype=dtype)
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.target_dir = target_dir

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight

    @property
    def embed_weight(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> TeacherOutput:
        captured: dict[str, Any] = {}

        def capture(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            captured.update(kwargs)

        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "loss_mask"}
        hook = self.model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            out = self.model.model(**inputs)
        finally:
            hook.remove()
        lengths = inputs["attention_mask"].sum(1).tolist()
        positions = captured.get("position_ids")
        if positions is None:  # plain 1-D RoPE target: raw token indices
            positions = torch.arange(inputs["input_ids"].shape[1], device=self.device)
            positions = positions.expand_as(inputs["input_ids"])
        elif positions.dim() == 3:  # M-RoPE [3, B, L]: vLLM's EAGLE takes the temporal row
            positions = positions[0]
        return TeacherOutput(out.last_hidden_state, captured["inputs_embeds"], positions, lengths)

    @torch.no_grad()
    def answer(
        self, messages: list[dict[str, Any]], images: list[Image.Image], max_new_tokens: int
    ) -> str:
        """The target's greedy answer to a conversation in HF transformers, one at a time
        (:func:`vllm_answers` regenerates training answers; this is its check)."""
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        return self.processor.decode(new, skip_special_tokens=True).strip()


@contextlib.contextmanager
def vllm_answers(
    target: Path, max_new_tokens: int, bf16: bool
) -> Iterator[Callable[[list[tuple[list[dict[str, Any]], list[Image.Image]]]], list[str]]]:
    """The target's greedy answers through vLLM (``LLM.chat``, one batched call per list of
    prompts), for regenerating training answers; the engine is gone after the block."""
    from vllm import LLM, SamplingParams

    from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
    from vllm_vispec.tools.train.data import vllm_chat

    if torch.cuda.is_available():
        kwargs: dict[str, Any] = {"dtype": "bfloat16" if bf16 else "float32"}
        kwargs["gpu_memory_utilization"] = 0.5  # the HF teacher loads next to it afterwards
    else:
        kwargs = cpu_engine_kwargs(
            max_num_seqs=32,
            max_model_len=None,  # the target's own
            max_num_batched_tokens=4096,
            kv_cache_memory_bytes=1 << 30,
        )
    llm = LLM(model=str(target), **kwargs)
    params = SamplingParams(temperature=0, max_tokens=max_new_tokens)
    tokenizer = llm.get_tokenizer()

    def answer(prompts: list[tuple[list[dict[str, Any]], list[Image.Image]]]) -> list[str]:
        chats = [vllm_chat(messages, images) for messages, images in prompts]
        outputs = llm.chat(chats, params, use_tqdm=False)
        # Decoded whole, as HF's path decodes (vLLM's streamed text holds back a trailing
        # incomplete character).
        return [
            tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True).strip()
            for o in outputs
        ]

    try:
        yield answer
    finally:
        llm.llm_engine.engine_core.shutdown()
        gc.collect()
