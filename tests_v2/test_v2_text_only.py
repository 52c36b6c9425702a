"""A ViSpec draft on vLLM 0.34 in an engine whose images are turned off.

V2 builds no encoder runner when every modality's limit is 0; the speculator then drafts text
rows only (no image feature), and the output stays the target's.
"""

from __future__ import annotations

import os
import pathlib

import pytest

TURN = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def _greedy(target: pathlib.Path, draft: pathlib.Path | None) -> tuple[list[list[int]], int]:
    from vllm import LLM, SamplingParams

    from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs

    kwargs = cpu_engine_kwargs(model=str(target), limit_mm_per_prompt={"image": 0, "video": 0})
    if draft is not None:
        kwargs["speculative_config"] = {
            "method": "eagle", "model": str(draft), "num_speculative_tokens": 3,
        }  # fmt: skip
    llm = LLM(disable_log_stats=False, **kwargs)
    prompts = [TURN.format(q) for q in ("Describe a sunny day.", "Count to five.")]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    drafts = sum(int(m.value) for m in llm.get_metrics() if m.name == "vllm:spec_decode_num_drafts")
    llm.llm_engine.engine_core.shutdown()
    return [list(o.outputs[0].token_ids) for o in outs], drafts


@pytest.mark.skipif(os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0", reason="in-process")
def test_text_only_engine_drafts_and_keeps_the_output(
    qwen_target: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    draft = build_tiny_draft(qwen_target, tmp_path / "d", echo=True)
    expected, _ = _greedy(qwen_target, None)
    got, drafts = _greedy(qwen_target, draft)
    assert got == expected
    assert drafts > 0
