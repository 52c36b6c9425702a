"""ViSpec drafts under tensor parallelism: lossless at tensor_parallel_size=2, refused layouts.

The draft's attention shards its heads over the tensor-parallel ranks as vLLM's Llama does (the
vision adaptor, fc and img_fc are replicated, so every rank sees the same image features). On
this CPU, TP=2 runs one rank per core (``VLLM_CPU_OMP_THREADS_BIND=0|1``) with vLLM's
multiprocess executor; the engine core stays in-process as in the other engine tests.

The engines use the shipped trained toy models (a peaked target and a draft trained for it), so
that drafts are accepted often and equality is not the trivial one of rejected drafts (a random
SpecVLM draft for the same target checks that kind's sharding and lossless output). Each
engine starts once for the module and runs the same batch twice: the first pass is a mixed
batch (prompts with 1, 0 and 2 images) whose prefill is chunked with a budget that splits an
image, the second pass hits the prefix cache on every prompt. Greedy output at TP=2 with the
draft (mark attention and the attention that skips unseen slots, ``torch``) must equal TP=2 and
TP=1 without speculation, token for token.

Pipeline parallelism and head layouts that do not split over the ranks are refused at start-up
with one line (fast tests, no engine).
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from engines import counters, engine
from vllm import SamplingParams
from vllm.engine.arg_utils import EngineArgs

from vllm_vispec import checkpoint
from vllm_vispec.checkpoint import draft_config_for_target
from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
from vllm_vispec.tools.testing.tiny_drafts import random_tensors
from vllm_vispec.validation import ViSpecConfigError, precheck, tensor_parallel_problem

TOY = pathlib.Path(__file__).resolve().parents[1] / "models" / "toy"
TARGET, DRAFT = TOY / "target", TOY / "vispec"
IMAGE_TOKEN = 510  # the toy target's image placeholder id (config.json image_token_id)
# Prefill budget: splits the first prompt's image (tokens ~33..69) across two chunks, and still
# holds both images of a two-image prompt in vLLM's encoder cache.
CHUNK = 48
MAX_TOKENS = 64
SETTINGS: dict[str, Any] = {"max_num_batched_tokens": CHUNK, "enable_prefix_caching": True}
TP2: dict[str, Any] = {"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}
PASSES = 2  # the second pass over the same prompts hits the prefix cache


def _conversations() -> list[list[dict]]:
    """Toy-world questions about 1, 0, 2 and 1 pictures (the first one is split by CHUNK)."""
    from vllm_vispec.tools.toy.world import prompts

    items = [(image, question) for _, image, question in prompts(4, 31_000)]

    def chat(images: list, text: str) -> list[dict]:
        parts = [{"type": "image_pil", "image_pil": image} for image in images]
        return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]

    return [
        chat([items[0][0]], items[0][1]),
        chat([], items[1][1]),
        chat([items[1][0], items[2][0]], "Compare the two pictures. " + items[2][1]),
        chat([items[3][0]], items[3][1]),
    ]


def _run(
    attention: str | None,
    draft: pathlib.Path = DRAFT,
    goodput: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """One engine (with the draft and this draft attention, unless None; ``vispec.goodput``
    when given): greedy tokens of each pass, the prompts' token ids, counter deltas and the
    goodput policy's steps per K."""
    if attention is None:
        draft, vispec = None, None
    else:
        vispec = {"draft_attention": attention}
        if goodput is not None:
            vispec["goodput"] = goodput
    conversations = _conversations()
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    result: dict[str, Any] = {"tokens": [], "delta": []}
    with engine(TARGET, draft, vispec=vispec, **SETTINGS, **overrides) as llm:
        for _ in range(PASSES):
            before = counters(llm)
            outputs = llm.chat(conversations, params, use_tqdm=False)
            after = counters(llm)
            result["tokens"].append([list(o.outputs[0].token_ids) for o in outputs])
            result["delta"].append(
                {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int | float)}
            )
        result["prompts"] = [list(o.prompt_token_ids) for o in outputs]
        policy = getattr(llm.llm_engine.engine_core.engine_core.scheduler, "vispec_goodput", None)
        result["steps_per_k"] = dict(policy.counts) if policy is not None else {}
    return result


@pytest.fixture(scope="module")
def tp_env() -> Any:
    """One core per rank for TP=2 on this CPU (read by vLLM's multiprocess executor only)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
        yield mp


@pytest.fixture(scope="module")
def tp1_plain() -> dict[str, Any]:
    return _run(None)


@pytest.fixture(scope="module")
def tp1_vispec() -> dict[str, Any]:
    return _run("mark")


@pytest.fixture(scope="module")
def tp2_plain(tp_env: Any) -> dict[str, Any]:
    return _run(None, **TP2)


@pytest.fixture(scope="module", params=["mark", "torch"])
def tp2_vispec(request: pytest.FixtureRequest, tp_env: Any) -> dict[str, Any]:
    return _run(request.param, **TP2)


# --------------------------------------------------------------------------------------------
# Lossless greedy at TP=2


def test_the_batch_covers_chunked_images_and_prefix_hits(tp2_plain: dict[str, Any]) -> None:
    """The first prompt's image straddles the first chunk's end; the second pass hits the cache."""
    first = tp2_plain["prompts"][0]
    image = [i for i, t in enumerate(first) if t == IMAGE_TOKEN]
    assert image[0] < CHUNK <= image[-1], f"image tokens {image[0]}..{image[-1]} not split"
    assert [p.count(IMAGE_TOKEN) > 0 for p in tp2_plain["prompts"]] == [True, False, True, True]
    assert tp2_plain["delta"][1]["vllm:prefix_cache_hits"] > 0


def test_tp2_without_speculation_matches_tp1(
    tp1_plain: dict[str, Any], tp2_plain: dict[str, Any]
) -> None:
    """Control: the target alone gives the same greedy tokens at TP=1 and TP=2."""
    assert tp2_plain["tokens"] == tp1_plain["tokens"]


def test_tp2_vispec_is_lossless(
    tp2_vispec: dict[str, Any], tp2_plain: dict[str, Any], tp1_plain: dict[str, Any]
) -> None:
    """Mixed batch with chunked images (pass 1) and prefix-cache hits (pass 2) at TP=2 with
    the draft: the same tokens as TP=2 and TP=1 without speculation."""
    assert tp2_vispec["tokens"] == tp2_plain["tokens"]
    assert tp2_vispec["tokens"] == tp1_plain["tokens"]
    assert tp2_vispec["delta"][1]["vllm:prefix_cache_hits"] > 0


def test_tp2_vispec_drafts_are_accepted_as_at_tp1(
    tp2_vispec: dict[str, Any], tp1_vispec: dict[str, Any], record_property: Any
) -> None:
    """The sharded draft drafts what the unsharded one does: it is accepted as often."""
    assert tp1_vispec["tokens"] == tp2_vispec["tokens"]
    for i, (tp2, tp1) in enumerate(zip(tp2_vispec["delta"], tp1_vispec["delta"], strict=True)):
        drafted = tp2["vllm:spec_decode_num_draft_tokens"]
        accepted = tp2["vllm:spec_decode_num_accepted_tokens"]
        record_property(f"pass{i + 1}_tp2_accepted_of_drafted", f"{accepted}/{drafted}")
        record_property(
            f"pass{i + 1}_tp1_accepted_of_drafted",
            f"{tp1['vllm:spec_decode_num_accepted_tokens']}/"
            f"{tp1['vllm:spec_decode_num_draft_tokens']}",
        )
        assert drafted > 0, "the draft never ran"
        assert accepted > 0.3 * drafted, f"only {accepted} of {drafted} draft tokens accepted"
        tp1_accepted = tp1["vllm:spec_decode_num_accepted_tokens"]
        assert abs(accepted - tp1_accepted) <= 0.05 * tp1_accepted, (
            f"{accepted} draft tokens accepted at TP=2, {tp1_accepted} at TP=1"
        )


def test_tp2_specvlm_is_lossless(
    tp_env: Any, tp2_plain: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A SpecVLM draft (gated compressor, replicated on both ranks) at TP=2: the same tokens,
    chunked images and prefix-cache hits included, with drafts made. ``vispec.goodput`` picks
    each step's K (in the scheduler, so both ranks draft the same K), and K changes."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    folder = tmp_path_factory.mktemp("tp-specvlm") / "d"
    draft = build_tiny_draft(TARGET, folder, echo=True, kind="specvlm", input_norm=True)
    got = _run("mark", draft, {"hysteresis": 0, "explore_every": 4}, **TP2)
    assert got["tokens"] == tp2_plain["tokens"]
    assert all(d["vllm:spec_decode_num_draft_tokens"] > 0 for d in got["delta"])
    assert len(got["steps_per_k"]) >= 2, got["steps_per_k"]


# --------------------------------------------------------------------------------------------
# Layouts refused at start-up (no engine)


def _create_config(
    draft: pathlib.Path, speculative_extra: dict[str, Any] | None = None, **overrides: Any
) -> Any:
    spec = {"method": "eagle", "model": str(draft), "num_speculative_tokens": 3}
    spec.update(speculative_extra or {})
    args = EngineArgs(model=str(TARGET), speculative_config=spec, **cpu_engine_kwargs(**overrides))
    return args.create_engine_config()


def _refusal(draft: pathlib.Path, **kwargs: Any) -> str:
    with pytest.raises(ViSpecConfigError) as info:
        _create_config(draft, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"not a one-line message: {message!r}"
    return message


@pytest.fixture(scope="module")
def one_head_draft(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A well-formed draft for the toy target with a single attention head (head_dim 128)."""
    cfg = draft_config_for_target(TARGET, num_attention_heads=1, num_key_value_heads=1)
    folder = tmp_path_factory.mktemp("one-head") / "d"
    return checkpoint.save_draft(folder, cfg, random_tensors(cfg))


def _assert_names_the_fix(message: str) -> None:
    for word in ("tensor_parallel_size=2", "heads: 1", "divides its heads (1)"):
        assert word in message, f"{word!r} missing from: {message}"


def test_draft_heads_that_cannot_be_split_are_refused(one_head_draft: pathlib.Path) -> None:
    """The target's four heads split over two ranks, the draft's one head does not.

    ``draft_tensor_parallel_size=1`` passes vLLM's own head check, but an EAGLE draft runs on
    the target's ranks all the same: the plugin refuses it once the config is built.
    """
    _create_config(one_head_draft)  # TP=1: fine
    _assert_names_the_fix(
        _refusal(
            one_head_draft,
            speculative_extra={"draft_tensor_parallel_size": 1},
            **TP2,
        )
    )


def test_precheck_refuses_heads_that_cannot_be_split(one_head_draft: pathlib.Path) -> None:
    """Before vLLM builds its config (whose own check would raise a pydantic error that does not
    name the draft), given the engine's tensor_parallel_size."""
    spec = {"method": "eagle", "model": str(one_head_draft), "num_speculative_tokens": 3}
    precheck(spec)
    precheck(spec, tensor_parallel_size=1)
    with pytest.raises(ViSpecConfigError) as info:
        precheck(spec, tensor_parallel_size=2)
    _assert_names_the_fix(str(info.value))


def test_pipeline_parallelism_is_refused() -> None:
    message = _refusal(DRAFT, pipeline_parallel_size=2, distributed_executor_backend="mp")
    for word in ("pipeline_parallel_size=2", "tensor_parallel_size"):
        assert word in message, f"{word!r} missing from: {message}"


@pytest.mark.parametrize(
    "heads,kv_heads,tp,ok",
    [
        (4, 4, 2, True),
        (4, 2, 4, True),  # KV heads replicated over 2 ranks each
        (8, 1, 8, True),
        (4, 4, 1, True),
        (4, 4, 3, False),  # query heads do not divide
        (12, 3, 2, False),  # KV heads neither divide over the ranks nor divide them
        (12, 3, 6, True),
    ],
)
def test_which_head_layouts_split(heads: int, kv_heads: int, tp: int, ok: bool) -> None:
    """The rule of vLLM's QKVParallelLinear."""
    assert (tensor_parallel_problem(heads, kv_heads, tp) is None) == ok
