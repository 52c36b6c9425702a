"""What a checkpoint folder holds: the names of its files, its ``config.json``, its weights files.

Official drafts, NeMo Automodel exports and the plugin's own format are all such folders; only
what the config says and how the tensors are named differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vllm_vispec.checkpoint.errors import CheckpointError, few, reason
from vllm_vispec.config import ViSpecConfig

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
INDEX_FILE = "model.safetensors.index.json"  # sharded safetensors (NeMo Automodel exports)


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
            raise CheckpointError(f"cannot parse {index} ({reason(e)}); download it again") from e
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing or not shards:
            raise CheckpointError(
                f"{folder} lacks the shards {few(missing)} that {INDEX_FILE} names; download "
                f"the whole repository"
            )
        return [folder / s for s in shards]
    if (folder / BIN_FILE).is_file():
        return [folder / BIN_FILE]
    raise CheckpointError(
        f"{folder} has no {SAFETENSORS_FILE}, {INDEX_FILE} or {BIN_FILE}: a ViSpec checkpoint "
        f"folder holds config.json and the weights; download the whole repository"
    )


def read_config(folder: Path, role: str) -> dict[str, Any]:
    """A checkpoint folder's ``config.json`` as a dict; ``role`` names the folder in messages."""
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


def config_from_dict(d: dict[str, Any], folder: Path, num_q: int | None = None) -> ViSpecConfig:
    """The draft config a folder's ``config.json`` describes, its faults as CheckpointErrors."""
    try:
        return ViSpecConfig.from_hf_dict(d, num_q=num_q)
    except KeyError as e:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} lacks {e}: it is not a ViSpec draft config; download it again"
        ) from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {e}; download it again") from e
