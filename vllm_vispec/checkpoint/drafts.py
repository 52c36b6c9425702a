"""The draft folders this plugin writes, and checking and loading them back.

The plugin's own format keeps the official tensor names in a ``model.safetensors`` and writes
``config.json`` with :meth:`ViSpecConfig.to_hf_dict`, so that vLLM resolves the draft architecture
and ``num_q`` is explicit. The plain EAGLE-1 baseline is written in vLLM's built-in format. Every
folder is written atomically, and only over an empty folder or one this plugin wrote.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from vllm_vispec.checkpoint.errors import CheckpointError, few, reason
from vllm_vispec.checkpoint.folder import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    config_from_dict,
    read_config,
)
from vllm_vispec.checkpoint.official import official_config_dict
from vllm_vispec.checkpoint.tensors import (
    READ_ERRORS,
    expected_shapes,
    has_adaptor,
    read_tensors,
    tensor_names,
    validate_tensors,
    what_it_is,
)
from vllm_vispec.config import FORMAT_VERSION, ViSpecConfig, is_plugin_config

CONVERT_COMMAND = "vllm-vispec convert"
VISION_PREFIXES = ("imadpt.", "img_fc.")
WRITTEN_BY = "vllm-vispec"  # marks EAGLE baselines we wrote, so --force may replace them


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
            f"EAGLE draft to save: tensors {few(sorted(set(tensors) ^ expected))} do not match "
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


def check_draft(path: str | Path) -> ViSpecConfig:
    """Validate a plugin-format draft folder from config.json and the safetensors header.

    Reads no tensor data, so vLLM can run it at start-up before loading any weights.
    """
    path = Path(path)
    d = read_config(path, role="draft")
    if not is_plugin_config(d):
        names = tensor_names(path)
        if has_adaptor(names):
            raise CheckpointError(
                f"{path} is an official ViSpec checkpoint that has not been converted; run "
                f"`{CONVERT_COMMAND} {path} DST` and use DST"
            )
        arch = ", ".join(d.get("architectures") or []) or "none"
        what = what_it_is(names) if names else "no readable weights file"
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
    cfg = config_from_dict(d, path)
    try:
        with safetensors.safe_open(file, "pt") as f:
            shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except READ_ERRORS as e:
        raise CheckpointError(
            f"cannot read {file} ({reason(e)}): the file is corrupt or truncated; convert the "
            f"official checkpoint again"
        ) from e
    validate_tensors(cfg, shapes, str(file))
    return cfg


def load_draft(path: str | Path) -> tuple[ViSpecConfig, dict[str, torch.Tensor]]:
    """Read and validate a plugin-format draft folder (what ``vllm-vispec convert`` writes)."""
    cfg = check_draft(path)
    return cfg, read_tensors([Path(path) / SAFETENSORS_FILE])
