"""Every vLLM option that touches sampling, KV or parallelism meets trees: kept, or refused.

:data:`OPTIONS` is the table docs/user-guide.md shows under "vLLM options with trees" (written
there by ``python tools/docs_tables.py``): per option, what a request or an engine gets with
``vispec.tree`` on, and the test that proves it (a greedy or distributional identity with vLLM,
or a one-line refusal at start-up). A test below checks that the guide shows this very table and
that every test it names exists, so neither can drift.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import shutil
from typing import Any

import pytest
import torch
from engines import MIXED_BATCH, chat, counters, engine, output_tokens
from test_config_errors import _assert_mentions, _create_config, _refusal, _spec, _vispec
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import StructuredOutputsParams

from vllm_vispec.draft.inputs import DraftInputs, TreePass, VisionInputs
from vllm_vispec.tools.bench.offline import drafter
from vllm_vispec.tree.settings import TREE_SETTING

USER_GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "user-guide.md"
ALWAYS = {"tree": True}  # vispec settings: trees of num_speculative_tokens nodes, every step

# (option, with trees, the test that proves it: "module::test", "::test" for this module)
OPTIONS: list[tuple[str, str, str]] = [
    ("`temperature`, `top_k`, `top_p`", "trees (one draw per node from the processed "
     "distribution)", "test_tree::test_tree_sampling_follows_the_target_distribution"),
    ("`n`, `top_k` at temperature > 0", "trees (each sample is a request drafting its own "
     "trees)",
     "::test_sampling_options_with_trees"),
    ("`seed`", "chains of `chain` tokens in tree steps, so the text does not depend on what "
     "else runs (unless a batch-size schedule changes K, as it does for vLLM's chains)",
     "::test_seeded_text_does_not_depend_on_load"),
    ("`logprobs` (raw modes), `prompt_logprobs`", "trees (the accepted nodes' rows)",
     "::test_sampling_options_with_trees"),
    ("`logprobs` with `processed_*` logprobs modes", "chains",
     "::test_processed_logprobs_draft_chains"),
    ("`presence_penalty`, `frequency_penalty`, `repetition_penalty` (also from the model's "
     "`generation_config.json`)", "trees (each node penalised with its own ancestors)",
     "::test_generation_config_penalties_draft_trees"),
    ("`bad_words`, `allowed_token_ids`", "trees (per node, with its ancestors)",
     "::test_sampling_options_with_trees"),
    ("`min_tokens`", "chains until reached, then trees",
     "::test_sampling_options_with_trees"),
    ("`structured_outputs`", "chains (the grammar walks drafts as a chain)",
     "::test_sampling_options_with_trees"),
    ("`thinking_token_budget` (with a reasoning config)", "chains (vLLM forces the end of "
     "thinking along a chain)", "::test_thinking_budget_draft_chains"),
    ("`logit_bias`, `min_p`", "refused per request by vLLM whenever speculation is on (as "
     "with chains)", "::test_sampling_options_with_trees"),
    ("prefix caching, chunked prefill, preemption", "trees",
     "test_tree::test_trees_mixed_batch_and_prefix_cache_hits"),
    ("`kv_cache_dtype` fp8 (target)", "refused", "::test_tree_refusals"),
    ("`data_parallel_size` > 1", "refused", "::test_tree_refusals"),
    ("`tensor_parallel_size` > 1", "refused (chains: supported)",
     "test_config_errors::test_trees_with_tensor_parallelism"),
    ("`pipeline_parallel_size` > 1", "refused (also for chains)",
     "test_tensor_parallel::test_pipeline_parallelism_is_refused"),
    ("`draft_sample_method` probabilistic", "refused", "::test_tree_refusals"),
    ("`rejection_sample_method` synthetic or block", "refused",
     "::test_tree_refusals"),
    ("`num_speculative_tokens_per_batch_size` (vLLM's batch-size schedule)", "each step's K: "
     "trees of K nodes when K is at least `depth` x `top_k`, chains of K below, nothing at 0; a "
     "K that is neither a chain (1-8) nor a tree is refused",
     "test_tree::test_trees_follow_vllms_batch_size_schedule"),
    ("LoRA on the target (`enable_lora`)", "refused", "::test_tree_refusals"),
    ("CPU attention ISAs `amx`, `neon` and others", "refused (`vec`, `vec16` run trees; also "
     "for the `torch` draft attention)", "::test_cpu_kv_layouts_that_trees_cannot_read"),
    ("async scheduling, full CUDA graphs, GPU attention backends other than `TRITON_ATTN`",
     "refused (GPU only: vLLM's CPU platform schedules synchronously without CUDA graphs)",
     "::test_tree_refusals"),
]  # fmt: skip


def test_user_guide_shows_the_options_table() -> None:
    """The user guide's table is OPTIONS, and every test OPTIONS names exists."""
    text = USER_GUIDE.read_text()
    for option, trees, test in OPTIONS:
        module, name = test.split("::")
        module = module or __name__
        row = f"| {option} | {trees} | `tests/{module}.py::{name}` |"
        assert row in text, f"docs/user-guide.md's options table lacks: {row}"
        assert hasattr(importlib.import_module(module), name), f"{test} does not exist"


# -- start-up refusals (no engine) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_extra", "engine_extra", "words"),
    [
        ({}, {"kv_cache_dtype": "fp8"}, ["fp8 scales", "--kv-cache-dtype fp8"]),
        ({}, {"data_parallel_size": 2}, ["data_parallel_size=2"]),
        ({"draft_sample_method": "probabilistic"}, {}, ["draft_sample_method='probabilistic'"]),
        ({"rejection_sample_method": "block"}, {}, ["rejection_sample_method='block'"]),
        (
            {"num_speculative_tokens_per_batch_size": [(1, 4, 29), (5, 64, 12)]},
            {},
            ["num_speculative_tokens_per_batch_size gives steps K=12", "neither a chain"],
        ),
        ({}, {"enable_lora": True}, ["LoRA", "--enable-lora"]),
    ],
)
def test_tree_refusals(
    qwen_target: pathlib.Path,
    qwen_draft: pathlib.Path,
    spec_extra: dict,
    engine_extra: dict,
    words: list[str],
) -> None:
    """Options trees cannot honour stop the engine at start-up with one line; the same
    engine without trees starts (they are tree-specific). Full CUDA graphs and GPU backends
    and async scheduling are refused on GPUs only (validation._check_trees): vLLM's CPU
    platform turns async scheduling off itself. vLLM refuses adaptive verification on its V1
    runner, which ViSpec needs, for every drafter."""
    message = _refusal(
        qwen_target, _spec(qwen_draft, k=29, **spec_extra), **engine_extra, **_vispec(tree=True)
    )
    _assert_mentions(message, TREE_SETTING, *words)
    if "kv_cache_dtype" in engine_extra:
        spec_extra = {**spec_extra, "kv_cache_dtype": "auto"}  # the draft's stays 16/32-bit
    _create_config(qwen_target, _spec(qwen_draft, k=3, **spec_extra), **engine_extra)


@pytest.mark.parametrize("isa", ["amx", "neon"])
def test_cpu_kv_layouts_that_trees_cannot_read(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, monkeypatch: pytest.MonkeyPatch, isa
) -> None:
    """vLLM picks its CPU attention ISA from the CPU, dtype and block size; the plugin reads
    the vec/vec16 layouts only. Make vLLM pick ``amx`` (an AMX CPU, bf16, blocks of 32) or
    ``neon`` (an ARM CPU) and both trees and the ``torch`` draft attention are refused, while
    chains with the mark start."""
    import platform

    if isa == "amx":
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
        engine_extra: dict[str, Any] = {"dtype": "bfloat16", "block_size": 32}
    else:
        monkeypatch.setattr(platform, "machine", lambda: "aarch64")
        engine_extra = {}
    trees = _refusal(qwen_target, _spec(qwen_draft, k=29), **engine_extra, **_vispec(tree=True))
    _assert_mentions(trees, TREE_SETTING, repr(isa))
    torch_attention = _vispec(draft_attention="torch")
    message = _refusal(qwen_target, _spec(qwen_draft), **engine_extra, **torch_attention)
    _assert_mentions(message, "vispec.draft_attention=torch", repr(isa))
    _create_config(
        qwen_target, _spec(qwen_draft), **engine_extra, **_vispec(draft_attention="mark")
    )


# -- buffers -------------------------------------------------------------------------------------


def test_tree_rows_are_cleared_by_the_next_write() -> None:
    """A tree pass writes top_k rows per request, past the rows the first pass wrote when few
    tokens were scheduled (a prefix-cache hit schedules one); a later text-only batch must not
    read an image's global feature there."""
    buffers = DraftInputs(64, 2, 8, torch.float32, "cpu")
    feature = torch.ones(1, 8)
    buffers.write(VisionInputs(feature, None, None, None, feature, None))
    empty = torch.empty(0)
    buffers.begin_tree_pass(torch.tensor([0]), 8, TreePass(*(empty,) * 6, (empty,) * 3))
    buffers.end_tree_pass()
    assert buffers.global_rows[:8].eq(1).all()
    buffers.write(None)
    assert buffers.global_rows.eq(0).all(), "stale image features after a tree pass"


# -- engines -------------------------------------------------------------------------------------


def _tree_delta(llm, run) -> tuple[Any, dict[str, Any]]:
    """``run(llm)``'s result and vLLM's spec-decode counters over it."""
    before = counters(llm)
    result = run(llm)
    after = counters(llm)
    delta: dict[str, Any] = {}
    for name, value in after.items():
        old = before.get(name, 0 if not isinstance(value, list) else [0] * len(value))
        delta[name] = (
            [a - b for a, b in zip(value, old, strict=True)] if isinstance(value, list)
            else value - old
        )  # fmt: skip
    return result, delta


def _assert_trees_drafted(delta: dict[str, Any], nodes: int = 29) -> None:
    drafts = delta["vllm:spec_decode_num_drafts"]
    assert delta["vllm:spec_decode_num_draft_tokens"] > 4 * drafts, "no trees were drafted"
    assert delta["vllm:spec_decode_num_accepted_tokens"] > 0, "no tree node was accepted"


@pytest.fixture(scope="module")
def penalised_target(qwen_target: pathlib.Path, tmp_path_factory) -> pathlib.Path:
    """The tiny Qwen2.5-VL with a generation config carrying a repetition penalty, as Qwen's
    Instruct checkpoints ship one (vLLM applies it by default, ``--generation-config auto``)."""
    folder = tmp_path_factory.mktemp("penalised") / "target"
    shutil.copytree(qwen_target, folder)
    config = {"repetition_penalty": 1.3, "transformers_version": "5.0.0"}
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def test_generation_config_penalties_draft_trees(
    penalised_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    """With the model's default repetition penalty every request still drafts trees, each
    node penalised with the request's output plus its own ancestors: the tokens are those of
    vLLM without speculation, which applies the same penalty. vLLM's acceptance counters
    count accepted tokens by depth (a tree accepts a path), drafts by node."""

    def generate(llm) -> list[list[int]]:
        params = llm.get_default_sampling_params()
        assert params.repetition_penalty == 1.3
        params.temperature, params.max_tokens = 0.0, 48
        return output_tokens(llm.chat(MIXED_BATCH, params, use_tqdm=False))

    with engine(penalised_target) as llm:
        expected = generate(llm)
    with engine(penalised_target, qwen_draft, k=29, vispec=ALWAYS) as llm:
        got, delta = _tree_delta(llm, generate)
        depth = drafter(llm).tree.depth
    assert got == expected
    _assert_trees_drafted(delta)
    per_pos = delta["vllm:spec_decode_num_accepted_tokens_per_pos"]
    assert sum(per_pos) == delta["vllm:spec_decode_num_accepted_tokens"]
    assert not any(per_pos[depth + 1 :]), "acceptance counted past the tree's depth"
    assert per_pos == sorted(per_pos, reverse=True), "a depth accepted more often than its parent"


def test_sampling_options_with_trees(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> None:
    """One batch, a request per option, greedy: every request's tokens (and log-probabilities)
    are vLLM's without speculation, with trees drafted. vLLM refuses logit_bias and min_p
    per request under any speculation."""
    conversations = [MIXED_BATCH[i % len(MIXED_BATCH)] for i in range(8)]
    greedy = {"temperature": 0.0, "max_tokens": 32}
    options: list[dict[str, Any]] = [
        {"presence_penalty": 1.5, "frequency_penalty": 0.5},
        {"repetition_penalty": 1.4},
        {"bad_words": ["the", " a"]},
        {"allowed_token_ids": list(range(3, 300))},
        {"min_tokens": 12},
        {"logprobs": 3, "prompt_logprobs": 2},
        {"structured_outputs": StructuredOutputsParams(regex="[a-z ]{4,20}")},
        {},
    ]
    params = [SamplingParams(**{**greedy, **o}) for o in options]
    with engine(qwen_target, max_logprobs=4) as llm:
        expected = llm.chat(conversations, params, use_tqdm=False)
    with engine(qwen_target, qwen_draft, k=29, vispec=ALWAYS, max_logprobs=4) as llm:
        got, delta = _tree_delta(llm, lambda llm: llm.chat(conversations, params, use_tqdm=False))
        # n > 1 needs sampling; top_k 1 makes every draw the argmax, so both are greedy's.
        two = llm.chat(
            conversations[-1], SamplingParams(n=2, top_k=1, max_tokens=32), use_tqdm=False
        )
        for refused in ({"logit_bias": {7: 50.0}}, {"min_p": 0.5}):
            with pytest.raises(VLLMValidationError, match="not yet supported with speculative"):
                llm.chat(conversations[0], SamplingParams(max_tokens=8, **refused), use_tqdm=False)
    assert output_tokens(got) == output_tokens(expected)
    _assert_trees_drafted(delta)
    assert output_tokens(two) == output_tokens(expected[-1:]) * 2
    logprobs, want = got[5].outputs[0].logprobs, expected[5].outputs[0].logprobs
    assert [sorted(d) for d in logprobs] == [sorted(d) for d in want]
    for d, w in zip(logprobs, want, strict=True):
        for token in w:
            assert d[token].logprob == pytest.approx(w[token].logprob, abs=1e-4)
    assert got[5].prompt_logprobs is not None and len(got[5].prompt_logprobs) > 10


def test_processed_logprobs_draft_chains(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    """A processed-logprobs engine drafts chains for requests asking logprobs (the tree rows
    keep raw logits only) and trees for the others; tokens and log-probabilities are vLLM's."""
    params = [
        SamplingParams(temperature=0.0, max_tokens=24, logprobs=2, repetition_penalty=1.2),
        SamplingParams(temperature=0.0, max_tokens=24),
    ]
    conversations = MIXED_BATCH[:2]
    kw = {"max_logprobs": 2, "logprobs_mode": "processed_logprobs"}
    with engine(qwen_target, **kw) as llm:
        expected = llm.chat(conversations, params, use_tqdm=False)
    with engine(qwen_target, qwen_draft, k=29, vispec=ALWAYS, **kw) as llm:
        got, delta = _tree_delta(llm, lambda llm: llm.chat(conversations, params, use_tqdm=False))
    assert output_tokens(got) == output_tokens(expected)
    _assert_trees_drafted(delta)
    for d, w in zip(got[0].outputs[0].logprobs, expected[0].outputs[0].logprobs, strict=True):
        assert sorted(d) == sorted(w)
        for token in w:
            assert d[token].logprob == pytest.approx(w[token].logprob, abs=1e-4)


def test_thinking_budget_draft_chains(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> None:
    """A reasoning config whose thinking starts at the assistant header: vLLM forces the end
    of thinking once a request's budget is spent. Requests with a budget draft chains, which
    vLLM's verification keeps within it; the tokens are those without speculation."""
    reasoning = {"reasoning_start_str": "<|im_start|>", "reasoning_end_str": "<|vision_end|>"}
    params = [
        SamplingParams(temperature=0.0, max_tokens=32, thinking_token_budget=budget)
        for budget in (4, 9, None, 6)
    ]
    with engine(qwen_target, reasoning_config=reasoning) as llm:
        expected = output_tokens(llm.chat(MIXED_BATCH, params, use_tqdm=False))
        end = llm.get_tokenizer().convert_tokens_to_ids("<|vision_end|>")
    with engine(qwen_target, qwen_draft, k=29, vispec=ALWAYS, reasoning_config=reasoning) as llm:
        got, delta = _tree_delta(llm, lambda llm: llm.chat(MIXED_BATCH, params, use_tqdm=False))
    assert end in expected[0], "the budget never forced the end of thinking"
    assert output_tokens(got) == expected
    _assert_trees_drafted(delta)


def test_seeded_text_does_not_depend_on_load(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    """A seeded temperature-1 request drafts chains of ``chain`` tokens beside requests drafting
    trees: it gives the same text alone and beside two other requests."""
    seeded = SamplingParams(temperature=1.0, max_tokens=40, seed=7)
    others = SamplingParams(temperature=1.0, max_tokens=40)
    conversation = chat([(1, (224, 224))])
    with engine(qwen_target, qwen_draft, k=29, vispec={"tree": True}) as llm:
        alone = output_tokens(llm.chat([conversation], seeded, use_tqdm=False))
        together = llm.chat(
            [MIXED_BATCH[0], conversation, MIXED_BATCH[2]], [others, seeded, others], use_tqdm=False
        )
    assert output_tokens(together[1:2]) == alone
