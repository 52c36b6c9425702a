"""vLLM compiles the ViSpec draft where it compiles its own EAGLE drafts, and stays lossless.

With ``enforce_eager`` off, vLLM compiles the target and, with the ``mark`` attention, the
draft's :class:`~vllm_vispec.draft.model.ViSpecModel` (the skipping attentions keep it eager).
A compiled graph must not freeze per-step vision inputs: they live in fixed buffers that every
pass reads, so the mixed batch (text, one and two images) still decodes exactly as without
speculation, with drafts accepted.
"""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest
from engines import MIXED_BATCH, counters, engine, greedy, models, plain_greedy

from vllm_vispec.draft.model import draft_compiles
from vllm_vispec.tools.bench.offline import drafter


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen", "qwen-specvlm"])
def test_compiled_draft_is_lossless(name: str, request: pytest.FixtureRequest) -> None:
    """``qwen-specvlm``: the SpecVLM draft's forward (no img_fc, image tokens in place of token
    embeddings, hidden rows) compiles too."""
    target, draft = models(name, request)
    expected = plain_greedy(target, MIXED_BATCH)[0]
    vispec = {"draft_attention": "mark"}
    with engine(target, draft, vispec=vispec, enforce_eager=False) as llm:
        before = counters(llm)
        assert greedy(llm, MIXED_BATCH) == expected
        after = counters(llm)
        core = drafter(llm).draft.model
        assert not core.do_not_compile and core.compiled, "vLLM never ran the compiled draft"
    accepted = after["vllm:spec_decode_num_accepted_tokens"] - before.get(
        "vllm:spec_decode_num_accepted_tokens", 0
    )
    assert accepted > 0, "no draft token was accepted"


@pytest.mark.parametrize(("attention", "compiles"), [("mark", True), ("torch", False)])
def test_only_the_mark_attention_is_compiled(attention: str, compiles: bool, qwen_draft) -> None:
    """The skipping attentions call their kernel from Python: that draft stays eager."""
    hf_config = NS(to_dict=lambda: json.loads((qwen_draft / "config.json").read_text()))
    config = NS(
        speculative_config=NS(draft_model_config=NS(hf_config=hf_config)),
        additional_config={"vispec": {"draft_attention": attention}},
    )
    assert draft_compiles(config) is compiles
