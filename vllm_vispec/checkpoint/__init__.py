"""ViSpec draft checkpoints: the official layout, reading it, and the plugin's own format.

Official ViSpec checkpoints (HF repos such as ``JLKang/ViSpec-Qwen2.5-VL-7B-Instruct``) are a
Llama-style ``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``; ``num_q`` is only
the first dimension of ``imadpt.q``. The plugin format keeps the official tensor names in a
``model.safetensors`` and writes ``config.json`` with :meth:`ViSpecConfig.to_hf_dict`, so that vLLM
resolves the draft architecture and ``num_q`` is explicit.

Every problem a user can cause is a :class:`CheckpointError` whose message is one line that names
the problem and what to do about it.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import safetensors.torch
import torch

from vllm_vispec.checkpoint import nemo
from vllm_vispec.checkpoint.errors import CheckpointError
from vllm_vispec.config import FORMAT_VERSION, ViSpecConfig, is_plugin_config

if TYPE_CHECKING:
    from transformers import PretrainedConfig

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
INDEX_FILE = "model.safetensors.index.json"  # sharded safetensors (NeMo Automodel exports)
CONVERT_COMMAND = "vllm-vispec convert"
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # a hub id, as "JLKang/ViSpec-Qwen2.5-VL-7B-Instruct"
_HF_CACHE_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+$")

# Old EAGLE code saved RoPE's inverse frequencies as a persistent buffer; they are a function of
# rope_theta, so they are dropped instead of being reported as unexpected.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)
_READ_ERRORS = (
    safetensors.SafetensorError,
    OSError,
    RuntimeError,
    ValueError,
    EOFError,
    pickle.UnpicklingError,
)


def expected_shapes(cfg: ViSpecConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of an official ViSpec draft with this config."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    nh, hd = cfg.num_attention_heads, cfg.head_dim
    q, kv = nh * hd, cfg.num_key_value_heads * hd
    attn = "layers.0.self_attn."
    shapes: dict[str, tuple[int, ...]] = {
        "embed_tokens.weight": (v, h),
        attn + "q_proj.weight": (q, h),
        attn + "k_proj.weight": (kv, h),
        attn + "v_proj.weight": (kv, h),
        attn + "o_proj.weight": (h, q),
        "layers.0.mlp.gate_proj.weight": (i, h),
        "layers.0.mlp.up_proj.weight": (i, h),
        "layers.0.mlp.down_proj.weight": (h, i),
        "layers.0.post_attention_layernorm.weight": (h,),
        "fc.weight": (h, 2 * h),
    }
    if cfg.has_adaptor:
        shapes.update(
            {"img_fc.weight": (h, 2 * h), "imadpt.q": (cfg.num_q, nh, cfg.adaptor_head_dim)}
        )
        shapes.update({f"imadpt.{p}_proj.weight": (h, h) for p in "kvo"})
    if cfg.input_norm:
        shapes["layers.0.input_layernorm.weight"] = (h,)
    if cfg.final_norm:
        shapes["norm.weight"] = (h,)
    if cfg.qkv_bias:
        shapes.update({attn + "q_proj.bias": (q,), attn + "k_proj.bias": (kv,)})
        shapes.update({attn + "v_proj.bias": (kv,)})
    if cfg.fc_bias:
        shapes["fc.bias"] = (h,)
    if cfg.has_adaptor and cfg.qkv_bias:
        shapes.update({"imadpt.k_proj.bias": (h,), "imadpt.v_proj.bias": (h,)})
    if cfg.has_adaptor and cfg.fc_bias:
        shapes["img_fc.bias"] = (h,)
    return {**shapes, **_compressor_shapes(cfg)}


def _compressor_shapes(cfg: ViSpecConfig) -> dict[str, tuple[int, ...]]:
    """SpecVLM's compressor: what its possible choices need."""
    h, choices, shapes = cfg.hidden_size, cfg.compressor_choices, {}
    if "conv" in choices:  # a Conv1d over the image rows, kernel and stride = compression
        shapes["compressor.conv.weight"] = (h, h, cfg.compression)
        shapes["compressor.conv.bias"] = (h,)
    if "resampler" in choices:  # learned queries, laid out as ViSpec's adaptor
        nh = cfg.num_attention_heads
        shapes["compressor.resampler.q"] = (cfg.resampler_queries, nh, cfg.adaptor_head_dim)
        shapes.update({f"compressor.resampler.{p}_proj.weight": (h, h) for p in "kvo"})
        if cfg.qkv_bias:
            shapes.update({f"compressor.resampler.{p}_proj.bias": (h,) for p in "kv"})
    if len(choices) > 1:  # over cat(mean image embedding, mean text embedding before it)
        shapes["compressor.gate.weight"] = (len(choices), 2 * h)
        shapes["compressor.gate.bias"] = (len(choices),)
    return shapes


def validate_tensors(cfg: ViSpecConfig, tensors: Mapping[str, torch.Tensor], origin: str) -> None:
    """Raise unless ``tensors`` has exactly the names and shapes ``cfg`` implies."""
    expected = expected_shapes(cfg)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise CheckpointError(
            f"{origin}: {len(missing)} of the {len(expected)} tensors of a ViSpec draft are "
            f"missing ({_few(missing)}): the file is incomplete or config.json does not match it "
            f"({_flags(cfg)}); download or convert it again"
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{origin}: {_count(unexpected, 'unexpected tensor')} ({_few(unexpected)}) for "
            f"the ViSpec layout that config.json describes ({_flags(cfg)}); check that "
            f"config.json belongs to these weights"
        )
    wrong = [n for n, shape in expected.items() if tuple(tensors[n].shape) != shape]
    if wrong:
        name = wrong[0]
        others = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{origin}: {name} has shape {list(tensors[name].shape)}, expected "
            f"{list(expected[name])}{others} from config.json ({_sizes(cfg)}); check that "
            f"config.json belongs to these weights"
        )


def find_weights(folder: Path) -> list[Path]:
    """The weights files of a checkpoint folder: one safetensors or ``.bin`` file, or the
    safetensors shards its index names."""
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE]
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot parse {index} ({_reason(e)}); download it again") from e
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing or not shards:
            raise CheckpointError(
                f"{folder} lacks the shards {_few(missing)} that {INDEX_FILE} names; download "
                f"the whole repository"
            )
        return [folder / s for s in shards]
    if (folder / BIN_FILE).is_file():
        return [folder / BIN_FILE]
    raise CheckpointError(
        f"{folder} has no {SAFETENSORS_FILE}, {INDEX_FILE} or {BIN_FILE}: a ViSpec checkpoint "
        f"folder holds config.json and the weights; download the whole repository"
    )


def read_tensors(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    """Load safetensors or ``.bin`` state dicts (shards merged) onto the CPU without running
    pickled code."""
    tensors: dict[str, Any] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                part = safetensors.torch.load_file(file)
            else:
                part = torch.load(file, map_location="cpu", weights_only=True)
        except _READ_ERRORS as e:
            raise CheckpointError(
                f"cannot read {file} ({_reason(e)}): the file is corrupt or truncated; download "
                f"it again"
            ) from e
        if not isinstance(part, dict) or not all(
            isinstance(t, torch.Tensor) for t in part.values()
        ):
            raise CheckpointError(
                f"{file} is not a flat state dict of tensors (a training checkpoint?); "
                f"save the draft's state_dict() alone"
            )
        tensors.update(part)
    return {k: v for k, v in tensors.items() if not k.endswith(_DERIVED_SUFFIXES)}


def load_official(src: str | Path) -> tuple[ViSpecConfig, dict[str, torch.Tensor]]:
    """Read and fully validate an official ViSpec checkpoint folder."""
    src = Path(src)
    d = _read_config(src, role="SRC")
    if is_plugin_config(d):
        raise CheckpointError(
            f"{src} is already in vllm-vispec format; pass it to vLLM as it is, no conversion "
            f"needed"
        )
    files = find_weights(src)
    file = files[0].parent / INDEX_FILE if len(files) > 1 else files[0]
    tensors = read_tensors(files)
    if nemo.is_nemo(d):
        d, tensors = nemo.official_config(d, src), nemo.official_names(tensors)
    if "imadpt.q" not in tensors:
        raise CheckpointError(
            f"{file} is not a ViSpec checkpoint: {_what_it_is(tensors)}; use a ViSpec draft "
            f"trained for your target (e.g. JLKang/ViSpec-Qwen2.5-VL-7B-Instruct)"
        )
    q = tensors["imadpt.q"]
    if q.dim() != 3:
        raise CheckpointError(
            f"{file}: imadpt.q has shape {list(q.shape)}, expected [num_q, heads, head_dim]; "
            f"download the checkpoint again"
        )
    cfg = _config_from_dict(d, src, num_q=q.shape[0])
    if d.get("vispec_num_query_tokens", cfg.num_q) != cfg.num_q:
        raise CheckpointError(
            f"{src / CONFIG_FILE} says vispec_num_query_tokens "
            f"{d['vispec_num_query_tokens']} but {file} has {cfg.num_q} adaptor queries; "
            f"download the checkpoint again"
        )
    validate_tensors(cfg, tensors, str(file))
    return cfg, tensors


def provenance(src: Path) -> dict[str, str]:
    """Where a converted draft came from, recorded in its config.json."""
    from vllm_vispec import __version__

    src = src.resolve()
    found = _HF_CACHE_SNAPSHOT.search(src.as_posix())
    return {
        # The hub repo id for a folder in the hub cache, else the absolute path.
        "converted_from": f"{found[1]}/{found[2]}" if found else str(src),
        "source_file": _source_file(find_weights(src)),
        "converter_version": __version__,
    }


def _source_file(files: list[Path]) -> str:
    return INDEX_FILE if len(files) > 1 else files[0].name


def official_config_dict(cfg: ViSpecConfig) -> dict[str, Any]:
    """The Llama-style ``config.json`` of a released ViSpec draft: no ``num_q``, no vispec block."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size,
        "qkv_bias": cfg.qkv_bias,
        "pretraining_tp": 1,
        "bias": cfg.fc_bias,
        "torch_dtype": "float32",
    }


def save_draft(
    dst: str | Path,
    cfg: ViSpecConfig,
    tensors: Mapping[str, torch.Tensor],
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a plugin-format draft folder atomically: a reader sees the old folder or the new one.

    ``overwrite`` only replaces an empty folder or an earlier vllm-vispec draft, so a mistyped
    destination can never delete unrelated data.
    """
    validate_tensors(cfg, tensors, "draft to save")
    return _write_folder(dst, cfg.to_hf_dict(**(provenance or {})), tensors, overwrite)


VISION_PREFIXES = ("imadpt.", "img_fc.")
WRITTEN_BY = "vllm-vispec"  # marks EAGLE baselines we wrote, so --force may replace them


def save_eagle_draft(
    dst: str | Path, cfg: ViSpecConfig, tensors: Mapping[str, torch.Tensor], overwrite: bool = False
) -> Path:
    """Write a plain EAGLE-1 draft in vLLM's built-in format (``EagleLlamaForCausalLM``).

    The baseline ViSpec is measured against: the same decoder layer and ``fc`` (no bias, as
    vLLM's EAGLE-1 Llama draft has none) without ``img_fc`` and the adaptor.
    """
    if cfg.fc_bias:
        raise CheckpointError(
            "vLLM's EAGLE-1 drafts have no fc bias; build the config with fc_bias=False"
        )
    expected = {n for n in expected_shapes(cfg) if not n.startswith(VISION_PREFIXES)}
    if set(tensors) != expected:
        raise CheckpointError(
            f"EAGLE draft to save: tensors {_few(sorted(set(tensors) ^ expected))} do not match "
            f"the EAGLE-1 layout"
        )
    # vLLM's Llama layer gives o_proj a bias when `attention_bias` (or `bias`) is set, and this
    # draft has none: announce the q/k/v biases through `qkv_bias` alone.
    config = {**official_config_dict(cfg), "attention_bias": False, "written_by": WRITTEN_BY}
    config.pop("bias")
    return _write_folder(dst, config, tensors, overwrite)


def _write_folder(
    dst: str | Path, config: dict[str, Any], tensors: Mapping[str, torch.Tensor], overwrite: bool
) -> Path:
    """Write config.json + model.safetensors to ``dst`` atomically (temp folder, then rename)."""
    dst = Path(dst).absolute()
    check_destination(dst, overwrite)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    except OSError as e:
        raise CheckpointError(f"cannot write next to {dst}: {e}; choose another DST") from e
    old = None
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            tmp / SAFETENSORS_FILE,
            metadata={"format": "pt"},
        )
        if dst.exists():
            old = dst.with_name(tmp.name.replace(".tmp-", ".old-"))
            dst.rename(old)
        tmp.rename(dst)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dst.exists():
            old.rename(dst)
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write {dst}: {e}; nothing was written") from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def check_draft(path: str | Path) -> ViSpecConfig:
    """Validate a plugin-format draft folder from config.json and the safetensors header.

    Reads no tensor data, so vLLM can run it at start-up before loading any weights.
    """
    path = Path(path)
    d = _read_config(path, role="draft")
    if not is_plugin_config(d):
        names = tensor_names(path)
        if has_adaptor(names):
            raise CheckpointError(
                f"{path} is an official ViSpec checkpoint that has not been converted; run "
                f"`{CONVERT_COMMAND} {path} DST` and use DST"
            )
        arch = ", ".join(d.get("architectures") or []) or "none"
        what = _what_it_is(names) if names else "no readable weights file"
        raise CheckpointError(
            f"{path} is not a ViSpec draft (architectures: {arch}; {what}); convert an official "
            f"ViSpec checkpoint with `{CONVERT_COMMAND} SRC DST` and use DST"
        )
    vispec = d["vispec"]
    version = vispec.get("format_version") if isinstance(vispec, dict) else None
    if not isinstance(version, int):
        raise CheckpointError(
            f"{path / CONFIG_FILE} has a malformed vispec block; convert the official checkpoint "
            f"again"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written in draft format {version} by a newer vllm-vispec (this one "
            f"reads format {FORMAT_VERSION}); upgrade vllm-vispec"
        )
    file = path / SAFETENSORS_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no {SAFETENSORS_FILE}; convert the official checkpoint again"
        )
    cfg = _config_from_dict(d, path)
    try:
        with safetensors.safe_open(file, "pt") as f:
            shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except _READ_ERRORS as e:
        raise CheckpointError(
            f"cannot read {file} ({_reason(e)}): the file is corrupt or truncated; convert the "
            f"official checkpoint again"
        ) from e
    validate_tensors(cfg, shapes, str(file))
    return cfg


def load_draft(path: str | Path) -> tuple[ViSpecConfig, dict[str, torch.Tensor]]:
    """Read and validate a plugin-format draft folder (what ``vllm-vispec convert`` writes)."""
    cfg = check_draft(path)
    return cfg, read_tensors([Path(path) / SAFETENSORS_FILE])


def load_target_text_config(target_dir: str | Path) -> PretrainedConfig:
    """The language model's config of a target (a transformers ``PretrainedConfig``).

    Goes through transformers so that keys omitted because they equal the defaults (LLaVA-NeXT's
    ``text_config`` has no ``hidden_size``) and top-level sizes of older Qwen2.5-VL configs
    resolve the same way they do when the target is loaded.
    """
    target_dir = Path(target_dir)
    if not (target_dir / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"target {target_dir} has no {CONFIG_FILE}: pass the local folder of the target "
            f"model (e.g. a downloaded Qwen/Qwen2.5-VL-7B-Instruct)"
        )
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    # Only sizes are read: transformers' warnings about unrelated fields would be noise here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(target_dir)
    except (OSError, ValueError, KeyError, TypeError, StrictDataclassError) as e:
        raise CheckpointError(
            f"cannot read the target's {target_dir / CONFIG_FILE} ({_reason(e)}); pass the "
            f"folder of a Hugging Face model"
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    return config.get_text_config()


def draft_config_for_target(
    target_dir: str | Path, num_q: int = 2, **overrides: Any
) -> ViSpecConfig:
    """A draft config sized for a target, following the released ViSpec configs.

    Draft heads equal the target's, with plain multi-head attention (kv heads = heads) even on a
    grouped-query target; q/k/v biases follow the target's attention (Qwen2 has them without a
    config key; Llama and Qwen3 say ``attention_bias``, false in the released models).
    """
    text = load_target_text_config(target_dir)
    rope = getattr(text, "rope_parameters", None) or {}
    fields: dict[str, Any] = {
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_attention_heads,
        "vocab_size": text.vocab_size,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", getattr(text, "rope_theta", 10000.0)),
        "max_position_embeddings": text.max_position_embeddings,
        "qkv_bias": bool(getattr(text, "attention_bias", text.model_type.startswith("qwen2"))),
        "num_q": num_q,
    }
    return ViSpecConfig(**{**fields, **overrides})


def target_embeddings(target_dir: str | Path) -> torch.Tensor:
    """The language model's input embedding matrix [vocab, hidden] of a local HF target."""
    target_dir = Path(target_dir)
    with safetensors.safe_open(target_dir / SAFETENSORS_FILE, "pt") as f:
        names = [k for k in f.keys() if k.endswith("embed_tokens.weight") and "vision" not in k]
        if len(names) != 1:
            raise ValueError(f"cannot tell the text embedding of {target_dir} among {names}")
        return f.get_tensor(names[0])


def check_against_target(cfg: ViSpecConfig, target_dir: str | Path) -> None:
    """Raise unless the draft's hidden size and vocabulary fit the target's language model."""
    text = load_target_text_config(target_dir)
    for what, ours, theirs in (
        ("hidden size", cfg.hidden_size, text.hidden_size),
        ("vocab size", cfg.vocab_size, text.vocab_size),
    ):
        if ours != theirs:
            raise CheckpointError(
                f"draft {what} {ours} does not match the {what} {theirs} of target "
                f"{target_dir}: this draft was trained for another model; use the ViSpec "
                f"checkpoint released for this target"
            )


def check_destination(dst: str | Path, overwrite: bool) -> None:
    """Raise unless a draft may be written to ``dst``; cheap, so callers check before loading."""
    dst = Path(dst)
    if not (dst.exists() or dst.is_symlink()):
        return
    if not overwrite:
        raise CheckpointError(f"{dst} already exists; pass --force to replace it")
    if dst.is_symlink() or not dst.is_dir():
        raise CheckpointError(f"{dst} exists and is not a folder; choose another DST")
    config = dst / CONFIG_FILE
    try:
        d = json.loads(config.read_text()) if config.is_file() else {}
        ours = is_plugin_config(d) or d.get("written_by") == WRITTEN_BY
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ours = False
    if not ours and any(dst.iterdir()):
        raise CheckpointError(
            f"{dst} exists and is not a vllm-vispec draft; refusing to delete it even with "
            f"--force; choose another DST"
        )


def _read_config(folder: Path, role: str) -> dict[str, Any]:
    if not folder.exists():
        raise CheckpointError(f"{role} {folder} does not exist; pass a checkpoint folder")
    if not folder.is_dir():
        raise CheckpointError(f"{role} {folder} is not a folder; pass a checkpoint folder")
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{folder} has no {CONFIG_FILE}: a ViSpec checkpoint folder holds {CONFIG_FILE} and "
            f"the weights; download the whole repository"
        )
    try:
        d = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot parse {file} ({e}); download it again") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{file} is not a JSON object; download it again")
    return d


def _config_from_dict(d: dict[str, Any], folder: Path, num_q: int | None = None) -> ViSpecConfig:
    try:
        return ViSpecConfig.from_hf_dict(d, num_q=num_q)
    except KeyError as e:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} lacks {e}: it is not a ViSpec draft config; download it again"
        ) from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {e}; download it again") from e


def tensor_names(folder: Path) -> set[str]:
    """Names in a folder's weights files without reading the data; empty if there are none."""
    names: set[str] = set()
    try:
        for file in find_weights(folder):
            if file.suffix == ".safetensors":
                with safetensors.safe_open(file, "pt") as f:
                    names.update(f.keys())
            else:
                names.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    except (CheckpointError, *_READ_ERRORS):
        return set()
    return names


def has_adaptor(names: set[str]) -> bool:
    """True for the tensor names of a ViSpec draft (released or NeMo layout)."""
    return "imadpt.q" in names or bool(names & nemo.QUERY_NAMES)


def _what_it_is(names: Iterable[str]) -> str:
    """A guess at what a non-ViSpec state dict is, for error messages."""
    names = set(names)
    if any(n.startswith("midlayer.") for n in names):
        return "it looks like an EAGLE-3 draft (midlayer.*)"
    if any(n.startswith(("model.layers.", "language_model.")) for n in names):
        return "it looks like a full model (model.layers.*), not a draft"
    if any(n.startswith("fc.") for n in names):
        return "it looks like a plain EAGLE draft (no imadpt.* vision adaptor tensors)"
    return "it has no imadpt.* vision adaptor tensors"


def _reason(e: BaseException) -> str:
    """The root cause of an exception as a short single line, for embedding in a message."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(e).__name__}: {first if len(first) <= 150 else first[:147] + '...'}"


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _flags(cfg: ViSpecConfig) -> str:
    norms = (
        f", input_norm={cfg.input_norm}, final_norm={cfg.final_norm}"
        if (cfg.input_norm or cfg.final_norm)
        else ""
    )
    return f"qkv_bias={cfg.qkv_bias}, bias={cfg.fc_bias}{norms}"


def _sizes(cfg: ViSpecConfig) -> str:
    return (
        f"hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size}, "
        f"heads={cfg.num_attention_heads}, kv_heads={cfg.num_key_value_heads}, "
        f"head_dim={cfg.head_dim}, "
        f"vocab_size={cfg.vocab_size}, num_q={cfg.num_q}"
    )
