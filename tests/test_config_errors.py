"""Bad ViSpec set-ups refuse to start with one clear message, before any weights load.

Each case builds vLLM's config the way ``LLM(...)`` and ``vllm serve`` do
(``EngineArgs.create_engine_config``, which the plugin wraps with its start-up validation) and
checks that the plugin's own error comes out: a ``ValueError`` subclass (``ViSpecConfigError`` or
``CheckpointError``, not an error vLLM wrapped in pydantic's ``ValidationError``) whose single-line
message names the problem and the fix. Two cases go through ``vllm.LLM`` with the engine
constructor replaced by a tripwire, which proves the error reaches a user of ``LLM`` before an
engine (and so any weight loading) starts.

Controls: the good tiny draft passes and is recognised as a ViSpec draft, and speculative configs
that are not ViSpec (ngram, a plain EAGLE draft) are left alone by the plugin.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import typing
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm.config.speculative import RejectionSampleMethod
from vllm.engine.arg_utils import EngineArgs

from vllm_vispec import checkpoint
from vllm_vispec.checkpoint import CheckpointError, draft_config_for_target
from vllm_vispec.feature_cache import FeatureCache
from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
from vllm_vispec.tools.testing.tiny_drafts import (
    random_official_checkpoint,
    random_tensors,
)
from vllm_vispec.validation import (
    MAX_SPECULATIVE_TOKENS,
    SUPPORTED_TARGETS,
    ViSpecConfigError,
    check_chain_rejection,
    is_vispec_draft,
)

PLUGIN_ERRORS = (ViSpecConfigError, CheckpointError)


def _spec(draft: pathlib.Path, k: int = 3, **extra: Any) -> dict[str, Any]:
    return {"method": "eagle", "model": str(draft), "num_speculative_tokens": k, **extra}


def _create_config(
    target: pathlib.Path, speculative_config: dict[str, Any] | None, **overrides: Any
) -> Any:
    """vLLM's VllmConfig for the tiny CPU set-up; no engine starts, no weights load."""
    args = EngineArgs(
        model=str(target), speculative_config=speculative_config, **cpu_engine_kwargs(**overrides)
    )
    return args.create_engine_config()


def _refusal(target: pathlib.Path, speculative_config: dict[str, Any], **overrides: Any) -> str:
    """The plugin's start-up error for this set-up (asserted to be one, on one line)."""
    with pytest.raises(ValueError) as info:
        _create_config(target, speculative_config, **overrides)
    assert isinstance(info.value, PLUGIN_ERRORS), f"not the plugin's error: {info.value!r}"
    message = str(info.value)
    assert "\n" not in message, f"not a one-line message: {message!r}"
    return message


def _vispec(**settings: Any) -> dict[str, Any]:
    """Engine arguments that give the plugin these ``vispec`` settings."""
    return {"additional_config": {"vispec": settings}}


def _assert_mentions(message: str, *words: str) -> None:
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


# --------------------------------------------------------------------------------------------
# Bad drafts and targets, built once for this module (no weights of consequence: config checks
# read config.json and safetensors headers only).


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("config-errors")


@pytest.fixture(scope="module")
def wrong_hidden_draft(qwen_target: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """A well-formed plugin draft with hidden size 64 (the target's is 128)."""
    cfg = draft_config_for_target(
        qwen_target,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return checkpoint.save_draft(work / "wrong-hidden", cfg, random_tensors(cfg))


@pytest.fixture(scope="module")
def wrong_vocab_draft(qwen_target: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """A well-formed plugin draft with vocab 640 (the target's is 512)."""
    cfg = draft_config_for_target(qwen_target, vocab_size=640)
    return checkpoint.save_draft(work / "wrong-vocab", cfg, random_tensors(cfg))


@pytest.fixture(scope="module")
def official_draft(qwen_target: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """An official-layout ViSpec checkpoint (Llama config.json, no vispec block) whose weights
    file was cut short in the download."""
    draft = random_official_checkpoint(work / "official", draft_config_for_target(qwen_target))
    weights = draft / checkpoint.SAFETENSORS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return draft


@pytest.fixture(scope="module")
def official_wrong_hidden_draft(qwen_target: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """A well-formed official checkpoint trained for a target of hidden size 64."""
    cfg = draft_config_for_target(
        qwen_target, hidden_size=64, num_attention_heads=2, num_key_value_heads=2
    )
    return random_official_checkpoint(work / "official-64", cfg, fmt="bin")


@pytest.fixture(scope="module")
def text_only_target(qwen_target: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """A tiny text-only Qwen2ForCausalLM with the Qwen2.5-VL target's sizes and tokenizer.

    Hidden size and vocabulary match the good draft, so the only thing wrong is the family.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    text = checkpoint.load_target_text_config(qwen_target)
    config = Qwen2Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    path = work / "qwen2-text-only"
    model.save_pretrained(path)
    shutil.copy(qwen_target / "tokenizer.json", path / "tokenizer.json")
    tokenizer_config = json.loads((qwen_target / "tokenizer_config.json").read_text())
    tokenizer_config.pop("processor_class", None)  # text-only: no processor
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return path


# --------------------------------------------------------------------------------------------
# Controls


def test_good_draft_passes_and_is_recognised(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    config = _create_config(qwen_target, _spec(qwen_draft))
    spec = config.speculative_config
    assert is_vispec_draft(spec)
    assert spec.method == "eagle"
    assert spec.num_speculative_tokens == 3


def test_largest_allowed_num_speculative_tokens_passes(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    config = _create_config(qwen_target, _spec(qwen_draft, k=MAX_SPECULATIVE_TOKENS))
    assert config.speculative_config.num_speculative_tokens == MAX_SPECULATIVE_TOKENS


def test_fp8_target_cache_with_16bit_draft_cache_passes(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    """The remedy the fp8 message gives works: an fp8 target cache, an "auto" draft cache."""
    _skip_unless_fp8_kv_cache_accepted(qwen_target)
    spec = _spec(qwen_draft, kv_cache_dtype="auto")
    config = _create_config(qwen_target, spec, kv_cache_dtype="fp8")
    assert is_vispec_draft(config.speculative_config)


def test_ngram_config_is_untouched(qwen_target: pathlib.Path) -> None:
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
    config = _create_config(qwen_target, spec)
    assert config.speculative_config.method == "ngram"
    assert not is_vispec_draft(config.speculative_config)


def test_plain_eagle_draft_is_untouched(
    qwen_target: pathlib.Path, qwen_eagle_draft: pathlib.Path
) -> None:
    """A non-ViSpec EAGLE draft passes (the plugin validates ViSpec drafts only)."""
    config = _create_config(qwen_target, _spec(qwen_eagle_draft))
    assert config.speculative_config.method == "eagle"
    assert not is_vispec_draft(config.speculative_config)


# --------------------------------------------------------------------------------------------
# Refusals


def test_draft_for_another_hidden_size(
    qwen_target: pathlib.Path, wrong_hidden_draft: pathlib.Path
) -> None:
    message = _refusal(qwen_target, _spec(wrong_hidden_draft))
    _assert_mentions(message, "hidden size", "64", "128", "another model")


def test_draft_for_another_vocab(
    qwen_target: pathlib.Path, wrong_vocab_draft: pathlib.Path
) -> None:
    message = _refusal(qwen_target, _spec(wrong_vocab_draft))
    _assert_mentions(message, "vocab", "640", "512", "another model")


def test_broken_official_checkpoints(
    qwen_target: pathlib.Path,
    official_draft: pathlib.Path,
    official_wrong_hidden_draft: pathlib.Path,
    work: pathlib.Path,
) -> None:
    """Official checkpoints are converted at start-up with every check of the converter: a
    corrupt one (never cached) or one for another target stops the engine with one line."""
    cache = work / "official-cache"
    message = _refusal(qwen_target, _spec(official_draft), download_dir=str(cache))
    _assert_mentions(message, "corrupt or truncated", str(official_draft))
    assert not list(cache.glob("vispec-drafts/*/config.json")), "a corrupt draft was cached"
    message = _refusal(qwen_target, _spec(official_wrong_hidden_draft), download_dir=str(cache))
    _assert_mentions(message, "hidden size 64", "another model")


def test_unsupported_target_family(
    text_only_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    # The target itself is fine for vLLM; only the ViSpec draft on it is refused.
    plain = _create_config(text_only_target, None)
    assert plain.model_config.architectures == ["Qwen2ForCausalLM"]
    message = _refusal(text_only_target, _spec(qwen_draft))
    _assert_mentions(message, "support targets", "Qwen2ForCausalLM", *SUPPORTED_TARGETS)


@pytest.mark.parametrize("k", [MAX_SPECULATIVE_TOKENS + 1, 12])
def test_num_speculative_tokens_out_of_range(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, k: int
) -> None:
    message = _refusal(qwen_target, _spec(qwen_draft, k=k))
    _assert_mentions(message, "num_speculative_tokens", str(MAX_SPECULATIVE_TOKENS), f"got {k}")


@pytest.mark.parametrize(
    "keep",
    [
        "half",
        "100-bytes",
    ],
)
def test_corrupt_draft_weights(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, work: pathlib.Path, keep: str
) -> None:
    """A truncated model.safetensors (data cut short, or a cut inside the header) is refused."""
    draft = work / f"corrupt-{keep}"
    shutil.copytree(qwen_draft, draft)
    weights = draft / checkpoint.SAFETENSORS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if keep == "half" else data[:100])

    with pytest.raises(CheckpointError) as info:
        _create_config(qwen_target, _spec(draft))
    message = str(info.value)
    assert "\n" not in message
    _assert_mentions(message, str(weights), "corrupt or truncated", "convert")


def _skip_unless_fp8_kv_cache_accepted(target: pathlib.Path) -> None:
    try:
        _create_config(target, None, kv_cache_dtype="fp8")
    except ValueError as e:  # pragma: no cover - depends on the vLLM build
        pytest.skip(f"this vLLM build refuses an fp8 KV cache at config time: {e}")


@pytest.mark.parametrize("where", ["engine", "speculative_config"])
def test_fp8_draft_kv_cache(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, where: str
) -> None:
    """An fp8 draft cache (inherited from the engine or set for the draft) is refused."""
    _skip_unless_fp8_kv_cache_accepted(qwen_target)
    if where == "engine":
        message = _refusal(qwen_target, _spec(qwen_draft), kv_cache_dtype="fp8")
    else:
        message = _refusal(qwen_target, _spec(qwen_draft, kv_cache_dtype="fp8"))
    _assert_mentions(message, "KV cache", '"kv_cache_dtype": "auto"')


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("fast", ("vispec.draft_attention='fast'", "auto, mark, triton, torch")),
        ("triton", ("needs a GPU", "'torch'", "TRITON_INTERPRET=1")),
    ],
)
def test_draft_attention_that_cannot_run_here(
    qwen_target: pathlib.Path,
    qwen_draft: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    words: tuple[str, ...],
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    message = _refusal(qwen_target, _spec(qwen_draft), **_vispec(draft_attention=value))
    _assert_mentions(message, *words)


@pytest.mark.parametrize("value", [0, -5, "lots", True])
def test_feature_cache_size_that_cannot_work(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, value
) -> None:
    message = _refusal(qwen_target, _spec(qwen_draft), **_vispec(feature_cache_mib=value))
    _assert_mentions(message, f"vispec.feature_cache_mib={value!r}", "positive number of MiB")


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"colour": "blue"}, ["vispec.colour is not a ViSpec setting", "draft_attention"]),
        ({"draft_attention": "Mark"}, ["vispec.draft_attention='Mark'"]),
    ],
)
def test_unknown_settings(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, settings: dict, words: list[str]
) -> None:
    _assert_mentions(_refusal(qwen_target, _spec(qwen_draft), **_vispec(**settings)), *words)


@pytest.mark.parametrize(
    ("tree", "k", "words"),
    [
        ({"depth": "two"}, 29, ["vispec.tree.depth='two'", "non-negative integer"]),
        ("on", 29, ['vispec.tree="on"', "true, false or an object"]),
        ({"budget": 64}, 29, ['vispec.tree={"budget": 64}', "an object with fields depth"]),
        (True, 20, ["depth x top_k", "num_speculative_tokens (20)"]),
        (True, 64, ["at most 63"]),
        ({"depth": 1, "top_k": 2}, 7, ["fewer candidates"]),
        ({"chain": 30}, 29, ["chain=30"]),
    ],
)
def test_tree_settings_that_cannot_work(
    qwen_target: pathlib.Path,
    qwen_draft: pathlib.Path,
    tree: Any,
    k: int,
    words: list[str],
) -> None:
    message = _refusal(qwen_target, _spec(qwen_draft, k=k), **_vispec(tree=tree))
    _assert_mentions(message, *words)


def test_trees_with_tensor_parallelism(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> None:
    """Tree verification has only been checked at TP=1: larger layouts are refused."""
    message = _refusal(
        qwen_target,
        _spec(qwen_draft, k=29),
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
        **_vispec(tree=True),
    )
    _assert_mentions(message, "tensor_parallel_size 1", "set vispec.tree to false")


def test_tree_with_many_nodes_passes(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> None:
    """Trees lift the chain's 1-8 range: 29 nodes (ViSpec's default tree) start; the settings
    are part of vLLM's config hash."""
    config = _create_config(qwen_target, _spec(qwen_draft, k=29), **_vispec(tree=True))
    assert config.speculative_config.num_speculative_tokens == 29
    other = _create_config(
        qwen_target, _spec(qwen_draft, k=29), **_vispec(tree={"depth": 2, "top_k": 4})
    )
    assert config.compute_hash() != other.compute_hash()


def test_feature_cache_is_bounded_in_bytes() -> None:
    """Oldest images go first once the bytes exceed the bound; the newest always stays."""
    cache = FeatureCache(capacity_bytes=3 * 4 * 8)  # three [2, 4] fp32 features
    for key in "abcd":
        cache.put(key, torch.zeros(2, 4))
    assert "a" not in cache and len(cache) == 3 and cache.nbytes == 96
    cache.get("b")  # b becomes the newest
    cache.put("e", torch.zeros(2, 4))
    assert "c" not in cache and "b" in cache
    cache.put("big", torch.zeros(100, 4))
    assert len(cache) == 1 and "big" in cache


@pytest.mark.parametrize("value", ["mark", "torch", "auto"])
def test_draft_attention_that_runs_here_passes(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, value
) -> None:
    config = _create_config(qwen_target, _spec(qwen_draft), **_vispec(draft_attention=value))
    assert config.speculative_config is not None


def test_method_other_than_eagle(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> None:
    """Without "method", vLLM runs a draft folder as a standalone model ("draft_model")."""
    spec = {"model": str(qwen_draft), "num_speculative_tokens": 3}
    message = _refusal(qwen_target, spec)
    _assert_mentions(message, "'draft_model'", '"method": "eagle"')


def test_unpadded_drafter_batch(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> None:
    message = _refusal(qwen_target, _spec(qwen_draft, disable_padded_drafter_batch=True))
    _assert_mentions(message, "padded drafter batch", "disable_padded_drafter_batch")


# vLLM 0.33 added FLy verification (lossy by design); 0.32's config has no such value.
HAS_FLY = "fly" in typing.get_args(RejectionSampleMethod)


@pytest.mark.skipif(not HAS_FLY, reason="this vLLM has no rejection_sample_method 'fly'")
@pytest.mark.parametrize(
    ("tree", "words"),
    [
        (None, ["rejection_sample_method='fly'", "lossy", "remove rejection_sample_method"]),
        (True, ["rejection_sample_method='fly'", "set vispec.tree to false"]),
    ],
    ids=["chains", "trees"],
)
def test_lossy_fly_verification(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, tree: Any, words: list[str]
) -> None:
    """FLy accepts draft tokens the target would not produce: chains and trees refuse it."""
    k = 29 if tree else 3
    settings = _vispec(tree=tree) if tree else {}
    spec = _spec(qwen_draft, k=k, rejection_sample_method="fly")
    _assert_mentions(_refusal(qwen_target, spec, **settings), *words)


@pytest.mark.skipif(HAS_FLY, reason="this vLLM accepts 'fly': the plugin refuses it (above)")
def test_vllm_without_fly_refuses_it_itself(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    with pytest.raises(ValueError, match="fly"):
        _create_config(qwen_target, _spec(qwen_draft, rejection_sample_method="fly"))


@pytest.mark.parametrize("method", ["standard", "synthetic", "block", "fly"])
def test_chain_rejection_methods(method: str) -> None:
    """The check itself, on any vLLM: only FLy is refused for chains (synthetic and block keep
    vLLM's own meaning; trees refuse both)."""
    spec = SimpleNamespace(rejection_sample_method=method)
    if method == "fly":
        with pytest.raises(ViSpecConfigError, match="lossy"):
            check_chain_rejection(spec)
    else:
        check_chain_rejection(spec)
    check_chain_rejection(SimpleNamespace())  # a vLLM without the field


@pytest.mark.parametrize(
    ("draft_fixture", "words"),
    [
        ("wrong_hidden_draft", ("hidden size",)),
        ("official_draft", ("corrupt or truncated",)),
    ],
)
def test_llm_refuses_before_the_engine_starts(
    qwen_target: pathlib.Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    draft_fixture: str,
    words: tuple[str, ...],
) -> None:
    """``vllm.LLM`` raises the plugin's message itself, before an engine is even constructed."""
    from vllm import LLM
    from vllm.v1.engine.llm_engine import LLMEngine

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the engine started: the ViSpec config error came too late")

    monkeypatch.setattr(LLMEngine, "__init__", tripwire)
    draft = request.getfixturevalue(draft_fixture)
    with pytest.raises(PLUGIN_ERRORS) as info:
        LLM(model=str(qwen_target), speculative_config=_spec(draft), **cpu_engine_kwargs())
    _assert_mentions(str(info.value), *words)


# --------------------------------------------------------------------------------------------
# Mistakes vLLM would otherwise report with its own error, later or without the fix.


def test_official_checkpoint_without_method(
    qwen_target: pathlib.Path, official_wrong_hidden_draft: pathlib.Path, work: pathlib.Path
) -> None:
    spec = {"model": str(official_wrong_hidden_draft), "num_speculative_tokens": 3}
    message = _refusal(qwen_target, spec, download_dir=str(work / "official-cache"))
    _assert_mentions(message, "'draft_model'", '"method": "eagle"')


def test_eagle3_method(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> None:
    message = _refusal(qwen_target, {**_spec(qwen_draft), "method": "eagle3"})
    _assert_mentions(message, '"method": "eagle"')


@pytest.mark.parametrize("requested", ["auto", "triton"])
def test_triton_attention_that_fails_its_startup_check(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, requested: str
) -> None:
    """On a GPU where the kernel does not compile or is wrong, ``auto`` falls back to the mark
    and an explicit ``triton`` stops the start-up with the reason and the remedy."""
    from vllm_vispec.kernels.attention import selfcheck

    from vllm_vispec.draft import attention_mode

    def broken(*args) -> None:
        raise RuntimeError("the Triton draft attention failed to run: no kernel")

    monkeypatch.setattr(selfcheck, "check_triton_attention", broken)
    if requested == "auto":
        assert attention_mode.checked_triton(28, 4, 128, 16, requested) == "mark"
        assert "no kernel" in caplog.text and "mark instead" in caplog.text
    else:
        with pytest.raises(RuntimeError, match="no kernel; set vispec.draft_attention to 'mark'"):
            attention_mode.checked_triton(28, 4, 128, 16, requested)
