"""ViSpec draft checkpoints: the official layout, reading it, and the plugin's own format.

Official ViSpec checkpoints (HF repos such as ``JLKang/ViSpec-Qwen2.5-VL-7B-Instruct``) are a
Llama-style ``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``; ``num_q`` is only
the first dimension of ``imadpt.q``. The plugin format keeps the official tensor names in a
``model.safetensors`` and writes ``config.json`` with :meth:`ViSpecConfig.to_hf_dict`, so that vLLM
resolves the draft architecture and ``num_q`` is explicit.

Every problem a user can cause is a :class:`CheckpointError` whose message is one line that names
the problem and what to do about it.

This face hands on the names of its modules: ``folder`` (a checkpoint folder's files),
``tensors`` (a draft's tensor names and shapes, reading weights), ``official`` (the authors'
layout), ``nemo`` (NeMo Automodel exports), ``drafts`` (the folders the plugin writes),
``target`` (the target model a draft is for), ``errors``; ``convert`` is the ``vllm-vispec
convert`` command and ``resolve`` converts official checkpoints given straight to vLLM.
"""

from __future__ import annotations

from vllm_vispec.checkpoint import nemo
from vllm_vispec.checkpoint.drafts import (
    CONVERT_COMMAND,
    VISION_PREFIXES,
    WRITTEN_BY,
    check_destination,
    check_draft,
    load_draft,
    save_draft,
    save_eagle_draft,
)
from vllm_vispec.checkpoint.errors import CheckpointError
from vllm_vispec.checkpoint.folder import (
    BIN_FILE,
    CONFIG_FILE,
    INDEX_FILE,
    SAFETENSORS_FILE,
    find_weights,
)
from vllm_vispec.checkpoint.official import (
    REPO_ID,
    load_official,
    official_config_dict,
    provenance,
)
from vllm_vispec.checkpoint.target import (
    check_against_target,
    draft_config_for_target,
    load_target_text_config,
    target_embeddings,
)
from vllm_vispec.checkpoint.tensors import (
    expected_shapes,
    has_adaptor,
    read_tensors,
    tensor_names,
    validate_tensors,
)

__all__ = [
    "BIN_FILE",
    "CONFIG_FILE",
    "CONVERT_COMMAND",
    "INDEX_FILE",
    "REPO_ID",
    "SAFETENSORS_FILE",
    "VISION_PREFIXES",
    "WRITTEN_BY",
    "CheckpointError",
    "check_against_target",
    "check_destination",
    "check_draft",
    "draft_config_for_target",
    "expected_shapes",
    "find_weights",
    "has_adaptor",
    "load_draft",
    "load_official",
    "load_target_text_config",
    "nemo",
    "official_config_dict",
    "provenance",
    "read_tensors",
    "save_draft",
    "save_eagle_draft",
    "target_embeddings",
    "tensor_names",
    "validate_tensors",
]
