"""Official ViSpec checkpoints given straight to vLLM: converted once, into a cache by content.

``speculative_config.model`` may name an official checkpoint as its authors publish it (a local
folder, or a hub id that vLLM's own download function fetches). The front end converts it with
every check of ``vllm-vispec convert`` into ``<cache>/vispec-drafts/<sha256 of its files>`` and
runs that folder; a later start-up with the same files finds the copy. ``<cache>`` is the
engine's ``download_dir`` when set, else vLLM's cache root.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vllm.logger import init_logger

from vllm_vispec.checkpoint.drafts import save_draft
from vllm_vispec.checkpoint.folder import (
    BIN_FILE,
    CONFIG_FILE,
    INDEX_FILE,
    SAFETENSORS_FILE,
    find_weights,
)
from vllm_vispec.checkpoint.official import REPO_ID, load_official, provenance
from vllm_vispec.checkpoint.tensors import has_adaptor, tensor_names
from vllm_vispec.config import is_plugin_config

logger = init_logger(f"vllm.{__name__}")

CACHE_FOLDER = "vispec-drafts"
_CHUNK = 16 << 20


def resolve_draft(
    model: str, method: str | None, revision: str | None, download_dir: str | None
) -> str | None:
    """The converted copy to run when ``model`` is an official ViSpec checkpoint, else None
    (vLLM loads ``model`` as it is). CheckpointError for a broken official checkpoint."""
    folder = Path(model)
    if not folder.is_dir():
        if method != "eagle" or not REPO_ID.match(model):
            return None
        folder = _download(model, revision, download_dir)
        if folder is None:
            return None
    if not _is_official(folder):
        return None
    return str(converted_copy(folder, _cache_root(download_dir)))


def converted_copy(src: Path, cache_root: Path) -> Path:
    """``src`` converted into ``cache_root``, once per content (a file lock keeps concurrent
    start-ups from converting twice)."""
    from filelock import FileLock

    dst = cache_root / content_hash(src)
    cache_root.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{dst}.lock"):
        if (dst / CONFIG_FILE).is_file():
            logger.info("ViSpec: official checkpoint %s runs from its converted copy %s", src, dst)
            return dst
        cfg, tensors = load_official(src)
        save_draft(dst, cfg, tensors, provenance(src), overwrite=True)
    logger.info(
        "ViSpec: converted the official checkpoint %s (num_q %d, %d tensors) into %s; later "
        "start-ups reuse it",
        src,
        cfg.num_q,
        len(tensors),
        dst,
    )
    return dst


def content_hash(folder: Path) -> str:
    """sha256 of an official checkpoint's config.json and weights file."""
    h = hashlib.sha256()
    for file in (folder / CONFIG_FILE, *find_weights(folder)):
        h.update(file.name.encode())
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _is_official(folder: Path) -> bool:
    """A folder whose config is not the plugin's and whose weights hold the vision adaptor, or
    cannot be read (the conversion then says what is wrong with them)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # not a checkpoint vLLM can use either: vLLM says so
    if isinstance(config, dict) and is_plugin_config(config):
        return False
    names = tensor_names(folder)
    if names:
        return has_adaptor(names)
    return any((folder / name).is_file() for name in (SAFETENSORS_FILE, INDEX_FILE, BIN_FILE))


def _download(repo: str, revision: str | None, download_dir: str | None) -> Path | None:
    """A hub repo's config and weights, fetched by vLLM's weight downloader (offline: from the
    local hub cache); None when the hub has no such files (vLLM then reports the draft)."""
    from vllm.model_executor.model_loader.weight_utils import download_weights_from_hf

    try:
        config = download_weights_from_hf(repo, download_dir, [CONFIG_FILE], revision)
        if is_plugin_config(json.loads((Path(config) / CONFIG_FILE).read_text())):
            return None
        # One file, else the shards (vLLM's downloader fetches their index with them).
        patterns = [SAFETENSORS_FILE, "*.safetensors", BIN_FILE]
        return Path(download_weights_from_hf(repo, download_dir, patterns, revision))
    except (OSError, ValueError) as e:  # the hub's errors (offline misses are OSErrors too)
        logger.debug("ViSpec: %s is not a downloadable checkpoint (%s)", repo, e)
        return None


def _cache_root(download_dir: str | None) -> Path:
    from vllm import envs

    return Path(download_dir or envs.VLLM_CACHE_ROOT) / CACHE_FOLDER
