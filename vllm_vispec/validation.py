"""Start-up checks of a speculative config that names a ViSpec draft.

They run while vLLM builds its config (before any weights load or request arrives), so a bad
set-up stops the engine with one message that says what to do.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from vllm.logger import init_logger

from vllm_vispec import checkpoint
from vllm_vispec.checkpoint.resolve import resolve_draft
from vllm_vispec.config import DRAFT_ARCHITECTURE, ViSpecConfig, is_plugin_config
from vllm_vispec.settings import SETTINGS_KEY, ViSpecSettings, setting, vispec_settings
from vllm_vispec.tree.settings import TREE_SETTING, TreeSettings

SUPPORTED_TARGETS = (
    "Qwen2_5_VLForConditionalGeneration",
    "LlavaNextForConditionalGeneration",
    "LlavaForConditionalGeneration",
    "Qwen3VLForConditionalGeneration",
    # The MoE only replaces the target's MLPs: the draft (dense) sees the same encoder output,
    # image tokens and hidden states as on dense Qwen3-VL.
    "Qwen3VLMoeForConditionalGeneration",
)
MAX_SPECULATIVE_TOKENS = 8

logger = init_logger(f"vllm.{__name__}")


class ViSpecConfigError(ValueError):
    """A ViSpec speculative config that cannot work; the message says how to fix it."""


def is_vispec_draft(speculative_config: Any) -> bool:
    """True when vLLM's speculative config selects a (converted) ViSpec draft."""
    draft = getattr(speculative_config, "draft_model_config", None)
    if draft is None:
        return False
    return DRAFT_ARCHITECTURE in (getattr(draft.hf_config, "architectures", None) or [])


def validate(vllm_config: Any) -> None:
    """Raise :class:`ViSpecConfigError` when the ViSpec set-up cannot run."""
    spec = vllm_config.speculative_config
    if spec is None or not is_vispec_draft(spec):
        additional = vllm_config.additional_config
        if isinstance(additional, dict) and SETTINGS_KEY in additional:
            logger.warning(
                "additional_config[%r] is set but the engine has no ViSpec draft: ignored",
                SETTINGS_KEY,
            )
        return
    try:
        settings = vispec_settings(vllm_config)
    except ValueError as e:
        raise ViSpecConfigError(str(e)) from None
    logger.info("ViSpec settings (additional_config): %s", json.dumps(settings.as_dict()))
    if spec.method != "eagle":
        raise ViSpecConfigError(
            f"ViSpec drafts run with method 'eagle', not {spec.method!r}; set "
            '"method": "eagle" in --speculative-config'
        )
    target = vllm_config.model_config.hf_config
    archs = getattr(target, "architectures", None) or []
    if not any(a in SUPPORTED_TARGETS for a in archs):
        raise ViSpecConfigError(
            f"ViSpec drafts support targets {', '.join(SUPPORTED_TARGETS)}; the target model is "
            f"{', '.join(archs) or 'unknown'}"
        )
    draft_cfg = checkpoint.check_draft(spec.model)
    _check_draft_fits(draft_cfg, vllm_config)
    _check_chains_and_cache(settings, draft_cfg, vllm_config)
    if settings.goodput is not None:
        _check_goodput(vllm_config)


def _check_goodput(vllm_config: Any) -> None:
    """Say at start-up when ``vispec.goodput`` cannot choose the steps' K."""
    from vllm_vispec.goodput.scheduler import goodput_candidates
    from vllm_vispec.goodput.settings import GOODPUT_SETTING, is_declared

    schedule = vllm_config.speculative_config.num_speculative_tokens_per_batch_size
    if schedule is None:
        logger.warning(
            "%s is off: vLLM runs one K on every step here (it drops batch-size schedules "
            "under data parallelism, where ranks must agree on K)",
            GOODPUT_SETTING,
        )
    elif not is_declared(schedule, goodput_candidates(vllm_config)):
        logger.info(
            "%s is off: num_speculative_tokens_per_batch_size is set, and that schedule "
            "decides each step's K",
            GOODPUT_SETTING,
        )


def _check_draft_fits(draft_cfg: ViSpecConfig, vllm_config: Any) -> None:
    """The draft belongs to this target and splits over its parallel layout."""
    text = vllm_config.model_config.hf_config.get_text_config()
    if draft_cfg.hidden_size != text.hidden_size:
        raise ViSpecConfigError(
            f"draft hidden size {draft_cfg.hidden_size} does not match the target's "
            f"{text.hidden_size}: this draft was trained for another model"
        )
    if draft_cfg.vocab_size != text.vocab_size:
        raise ViSpecConfigError(
            f"draft vocab size {draft_cfg.vocab_size} does not match the target's "
            f"{text.vocab_size}: this draft was trained for another model"
        )
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        raise ViSpecConfigError(
            f"ViSpec drafts cannot run with pipeline parallelism (pipeline_parallel_size="
            f"{parallel.pipeline_parallel_size}): vLLM runs the draft on the last stage and the "
            "vision encoder on the first, so the draft would never see the images; use "
            "tensor_parallel_size instead"
        )
    problem = tensor_parallel_problem(
        draft_cfg.num_attention_heads, draft_cfg.num_key_value_heads, parallel.tensor_parallel_size
    )
    if problem:
        raise ViSpecConfigError(problem)


def _check_chains_and_cache(
    settings: ViSpecSettings, draft_cfg: ViSpecConfig, vllm_config: Any
) -> None:
    """Draft lengths, the runner and the KV cache the draft's attention reads."""
    spec = vllm_config.speculative_config
    k = spec.num_speculative_tokens
    _check_runner(settings, vllm_config)
    if settings.tree is not None:
        _check_trees(settings.tree, vllm_config)
    else:
        check_chain_rejection(spec)
        if not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise ViSpecConfigError(
                f"num_speculative_tokens must be between 1 and {MAX_SPECULATIVE_TOKENS} for "
                f"ViSpec drafts (got {k}); 3-5 is usually best"
            )
    if getattr(spec, "disable_padded_drafter_batch", False):
        raise ViSpecConfigError(
            "ViSpec drafts need vLLM's padded drafter batch; remove "
            "disable_padded_drafter_batch from the speculative config"
        )
    cache_dtype = spec.kv_cache_dtype or vllm_config.cache_config.cache_dtype
    if str(cache_dtype).startswith("fp8"):
        raise ViSpecConfigError(
            "ViSpec drafts need a 16- or 32-bit draft KV cache (neither way of hiding image "
            'slots reads fp8); set "kv_cache_dtype": "auto" in the speculative config'
        )
    from vllm_vispec.draft.attention_mode import draft_attention

    try:
        attention = draft_attention(draft_cfg.head_dim, settings.draft_attention)
    except ValueError as e:
        raise ViSpecConfigError(str(e)) from None
    if attention != "mark":
        _check_cpu_kv_layout(
            vllm_config, draft_cfg.head_dim, f"{setting('draft_attention')}={attention}"
        )


def _check_runner(settings: ViSpecSettings, vllm_config: Any) -> None:
    """The model runner this vLLM's adapter drafts in, and what that adapter can draft."""
    import vllm

    from vllm_vispec import adapter_for

    adapter = adapter_for(vllm.__version__)
    if adapter == "v1" and vllm_config.use_v2_model_runner:
        raise ViSpecConfigError(
            "ViSpec drafts run on vLLM's V1 model runner with this vLLM; unset "
            "VLLM_USE_V2_MODEL_RUNNER (or set it to 0)"
        )
    if adapter == "v2" and settings.tree is not None:
        raise ViSpecConfigError(
            f"{TREE_SETTING} (draft trees) needs vLLM 0.32 or 0.33; on vLLM "
            f"{vllm.__version__} ViSpec drafts chains only: remove 'tree' from "
            f"additional_config[{SETTINGS_KEY!r}]"
        )


# Rejection methods (vLLM's speculative_config) that chains of ViSpec drafts refuse, and why.
# vLLM 0.33 added "fly"; 0.32's config refuses that value itself, so the check is safe there.
LOSSY_REJECTION_METHODS = {
    "fly": "FLy accepts some draft tokens the target would not have produced (vLLM calls it lossy)",
}


def check_chain_rejection(spec: Any) -> None:
    """Chains are verified by vLLM's rejection sampler: refuse the methods that make the output
    differ from the target's (trees refuse every method but 'standard' in :func:`_check_trees`)."""
    method = getattr(spec, "rejection_sample_method", "standard")
    if method in LOSSY_REJECTION_METHODS:
        raise ViSpecConfigError(
            f"ViSpec drafts keep the target's output, and rejection_sample_method={method!r} "
            f"does not: {LOSSY_REJECTION_METHODS[method]}; remove rejection_sample_method from "
            "the speculative config (or set it to 'standard')"
        )


def _check_trees(tree: TreeSettings, vllm_config: Any) -> None:
    """What tree verification needs beyond a chain's."""
    try:
        tree.check(vllm_config.speculative_config.num_speculative_tokens)
    except ValueError as e:
        raise ViSpecConfigError(str(e)) from None
    tp = vllm_config.parallel_config.tensor_parallel_size
    if tp > 1:
        raise ViSpecConfigError(
            f"{TREE_SETTING} (trees and the tree/chain policy) is tested at tensor_parallel_size 1 "
            f"only (got {tp}); set {TREE_SETTING} to false to draft chains"
        )
    if vllm_config.scheduler_config.async_scheduling:
        raise ViSpecConfigError(
            f"{TREE_SETTING} needs synchronous scheduling (the next step's positions depend on "
            "which tree nodes were accepted); pass --no-async-scheduling"
        )
    if vllm_config.parallel_config.data_parallel_size > 1:
        raise ViSpecConfigError(
            f"{TREE_SETTING} is not supported with data parallelism (data_parallel_size="
            f"{vllm_config.parallel_config.data_parallel_size}): vLLM's drafter synchronises "
            "the ranks once per draft pass and each rank would pick its own tree or chain; "
            f"set {TREE_SETTING} to false to draft chains"
        )
    spec = vllm_config.speculative_config
    _check_schedule(tree, vllm_config)
    for option, value, default in (
        ("draft_sample_method", spec.draft_sample_method, "greedy"),
        ("rejection_sample_method", spec.rejection_sample_method, "standard"),
    ):
        if value != default:
            raise ViSpecConfigError(
                f"{TREE_SETTING} verifies trees with greedy drafts and its own tree walk, which "
                f"{option}={value!r} would change; remove {option} from the speculative "
                f"config or set {TREE_SETTING} to false"
            )
    _check_tree_target(vllm_config)


def _check_tree_target(vllm_config: Any) -> None:
    """What the target's attention must allow for tree rows to be masked."""
    if str(vllm_config.cache_config.cache_dtype).startswith("fp8"):
        raise ViSpecConfigError(
            f"{TREE_SETTING} reads the target's KV cache without fp8 scales; drop --kv-cache-dtype "
            f"{vllm_config.cache_config.cache_dtype} or set {TREE_SETTING} to false to draft chains"
        )
    if vllm_config.lora_config is not None:
        raise ViSpecConfigError(
            f"{TREE_SETTING} has not been verified with LoRA adapters on the target; drop "
            f"--enable-lora or set {TREE_SETTING} to false to draft chains"
        )
    model = vllm_config.model_config
    _check_cpu_kv_layout(vllm_config, model.get_head_size(), TREE_SETTING)
    text = model.hf_config.get_text_config()
    if getattr(text, "use_sliding_window", False):
        raise ViSpecConfigError(
            f"{TREE_SETTING} cannot verify trees on a target with sliding-window attention; set "
            f"{TREE_SETTING} to false to draft chains"
        )
    from vllm.platforms import current_platform

    graphs = vllm_config.compilation_config.cudagraph_mode
    if graphs is not None and graphs.has_full_cudagraphs():
        raise ViSpecConfigError(
            f"{TREE_SETTING} masks tree rows in Python around the attention kernel, which a full "
            "CUDA graph would replay without; pass --compilation-config "
            '\'{"cudagraph_mode": "PIECEWISE"}\''
        )
    backend = vllm_config.attention_config.backend
    if not current_platform.is_cpu() and getattr(backend, "name", backend) != "TRITON_ATTN":
        raise ViSpecConfigError(
            f"{TREE_SETTING} verifies trees with vLLM's Triton attention backend on GPUs; pass "
            "--attention-backend TRITON_ATTN"
        )


def _check_schedule(tree: TreeSettings, vllm_config: Any) -> None:
    """Every K that vLLM's batch-size schedule can give a step is a chain or a tree here."""
    spec = vllm_config.speculative_config
    if spec.num_speculative_tokens_per_batch_size is None:
        return
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    lookup = build_dynamic_sd_schedule_lookup(
        spec.num_speculative_tokens_per_batch_size,
        vllm_config.scheduler_config.max_num_seqs,
        spec.num_speculative_tokens,
    )
    for k in sorted(set(lookup[1:])):
        if tree.mode(k) == "chain" and k > MAX_SPECULATIVE_TOKENS:
            raise ViSpecConfigError(
                f"num_speculative_tokens_per_batch_size gives steps K={k}, neither a chain "
                f"(1-{MAX_SPECULATIVE_TOKENS}) nor a tree ({TREE_SETTING} drafts trees of "
                f"depth x top_k = {tree.min_nodes} nodes or more); change that K"
            )
        if tree.mode(k) == "tree":
            try:
                tree.check(k)
            except ValueError as e:
                raise ViSpecConfigError(
                    f"num_speculative_tokens_per_batch_size gives steps K={k}: {e}"
                ) from None


def _check_cpu_kv_layout(vllm_config: Any, head_size: int, who: str) -> None:
    """The plugin's own attention reads vLLM's CPU KV cache in the layouts of the ``vec`` and
    ``vec16`` ISAs only; refuse the ones vLLM would pick otherwise (``amx``, ``neon``, ...)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from vllm_vispec.kernels.attention import CPU_KV_LAYOUT_ISAS

    cache = vllm_config.cache_config
    dtype = vllm_config.model_config.dtype
    try:
        isa = _get_attn_isa(dtype, cache.block_size, head_size, cache.cache_dtype)
    except NotImplementedError:
        return  # vLLM refuses this cache itself, with its own message
    if isa not in CPU_KV_LAYOUT_ISAS:
        raise ViSpecConfigError(
            f"{who} reads vLLM's CPU KV cache in its {' and '.join(CPU_KV_LAYOUT_ISAS)} layouts "
            f"only, and vLLM picks the {isa!r} layout here ({dtype}, block size "
            f"{cache.block_size}); turn {who} off (chains with the 'mark' draft attention run "
            "on every CPU)"
        )


def tensor_parallel_problem(num_heads: int, num_kv_heads: int, tp: int) -> str | None:
    """Why the draft's heads cannot be split over ``tp`` tensor-parallel ranks (None if they can).

    The rule of vLLM's ``QKVParallelLinear``, which the draft's attention uses: query heads
    divide evenly over the ranks; KV heads either divide evenly too or, when fewer than the
    ranks, are replicated, which needs the rank count to be a multiple of them.
    """
    if _heads_split(num_heads, num_kv_heads, tp):
        return None
    fits = [n for n in range(1, num_heads + 1) if _heads_split(num_heads, num_kv_heads, n)]
    return (
        f"the ViSpec draft's attention (heads: {num_heads}, KV heads: {num_kv_heads}) cannot be "
        f"split over tensor_parallel_size={tp} (an EAGLE draft runs on the target's "
        f"tensor-parallel ranks); use a tensor_parallel_size that divides its heads "
        f"({', '.join(map(str, fits))})"
    )


def _heads_split(num_heads: int, num_kv_heads: int, tp: int) -> bool:
    return num_heads % tp == 0 and (num_kv_heads % tp == 0 or tp % num_kv_heads == 0)


def precheck(
    speculative_config: Any,
    tensor_parallel_size: int | None = None,
    download_dir: str | None = None,
    additional_config: Any = None,
) -> Any:
    """Checks of the raw speculative config that must run before vLLM builds its own; returns
    the speculative config vLLM should build.

    An official ViSpec checkpoint (a folder or a hub id) becomes its converted copy
    (:mod:`vllm_vispec.checkpoint.resolve`). vLLM parses the draft's config.json and safetensors
    header and resolves its architecture while it builds ``SpeculativeConfig``; a broken ViSpec
    draft or a wrong method would otherwise stop it with vLLM's own error (wrapped by pydantic,
    without the file or the fix). So would draft heads that do not divide by
    ``tensor_parallel_size`` (the engine's, when the caller passes it). With ``vispec.goodput``
    on (in ``additional_config``), the draft lengths the plugin may choose are declared to vLLM
    as a batch-size schedule (:func:`~vllm_vispec.goodput.settings.declared_schedule`).
    """
    if not isinstance(speculative_config, dict):
        return speculative_config
    draft_path = speculative_config.get("model")
    if not isinstance(draft_path, str):
        return speculative_config
    method = speculative_config.get("method")
    revision = speculative_config.get("revision")
    converted = resolve_draft(draft_path, method, revision, download_dir)
    if converted is not None:
        speculative_config = {**speculative_config, "model": converted, "revision": None}
        draft_path = converted
    if not pathlib.Path(draft_path).is_dir():
        return speculative_config
    try:
        d = json.loads((pathlib.Path(draft_path) / checkpoint.CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return speculative_config  # not a checkpoint folder vLLM can use either; vLLM says so
    if not (isinstance(d, dict) and is_plugin_config(d)):
        return speculative_config
    if method is not None and method != "eagle":
        raise ViSpecConfigError(
            f"ViSpec drafts run with method 'eagle', not {method!r}; set "
            '"method": "eagle" in --speculative-config'
        )
    cfg = checkpoint.check_draft(draft_path)
    if tensor_parallel_size is not None:
        problem = tensor_parallel_problem(
            cfg.num_attention_heads, cfg.num_key_value_heads, tensor_parallel_size
        )
        if problem:
            raise ViSpecConfigError(problem)
    return _declare_goodput(speculative_config, additional_config)


def _declare_goodput(speculative_config: dict, additional_config: Any) -> dict:
    """With ``vispec.goodput`` on and no schedule of the user's, the speculative config plus
    the schedule that declares the goodput candidates' K."""
    raw = additional_config.get(SETTINGS_KEY) if isinstance(additional_config, dict) else None
    k = speculative_config.get("num_speculative_tokens")
    if raw is None or speculative_config.get("num_speculative_tokens_per_batch_size"):
        return speculative_config  # off, or the user's schedule (validate() says so)
    try:
        settings = ViSpecSettings.from_dict(raw)
    except ValueError as e:
        raise ViSpecConfigError(str(e)) from None
    if settings.goodput is None or isinstance(k, bool) or not isinstance(k, int) or k < 1:
        return speculative_config  # no K: vLLM or validate() says what is missing
    from vllm_vispec.goodput.scheduler import engine_candidates
    from vllm_vispec.goodput.settings import declared_schedule

    schedule = declared_schedule(engine_candidates(k, settings.tree))
    return {**speculative_config, "num_speculative_tokens_per_batch_size": schedule}
