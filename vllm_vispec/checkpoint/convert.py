"""``vllm-vispec convert``: turn an official ViSpec checkpoint into a draft vLLM can load."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DESCRIPTION = """\
Convert an official ViSpec draft checkpoint into the vllm-vispec draft format.

SRC is a local folder holding a checkpoint as the ViSpec authors release it: a Llama-style
config.json and model.safetensors (or an older pytorch_model.bin), with the draft's decoder
layer, fc, img_fc and the imadpt vision adaptor. Download one first, e.g.
  hf download JLKang/ViSpec-Qwen2.5-VL-7B-Instruct --local-dir ViSpec-Qwen2.5-VL-7B
(older huggingface_hub: huggingface-cli download ... --local-dir ...).

Everything is validated before anything is written: every tensor name and shape, num_q (read
from imadpt.q) and, with --target, the hidden and vocabulary sizes of the target model.
DST then receives, atomically, a config.json that vLLM resolves to the ViSpec draft (with num_q
and where the weights came from) and a model.safetensors with the official tensor names."""

EPILOG = """\
example:
  vllm-vispec convert ViSpec-Qwen2.5-VL-7B vispec-qwen7b --target Qwen2.5-VL-7B-Instruct
  vllm serve Qwen/Qwen2.5-VL-7B-Instruct --speculative-config \\
    '{"method": "eagle", "model": "vispec-qwen7b", "num_speculative_tokens": 3}'"""

DTYPES = ("keep", "float32", "bfloat16", "float16")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an official ViSpec checkpoint into a draft for vLLM",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="folder of the official ViSpec checkpoint")
    parser.add_argument("dst", metavar="DST", help="folder to write the converted draft to")
    parser.add_argument(
        "--target",
        metavar="TARGET_DIR",
        help="local folder of the target VLM (its config.json is enough): check that the draft "
        "matches its hidden size and vocabulary",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="keep",
        help="dtype of the written weights (default: keep the checkpoint's)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing DST (only an earlier converted draft or an empty folder)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert; a user mistake prints ``error: ...`` on stderr and returns 2."""
    # Imported here so that `--help` does not wait for torch.
    from vllm_vispec.checkpoint.errors import CheckpointError

    try:
        summary = convert(Path(args.src), Path(args.dst), args.target, args.dtype, args.force)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def convert(src: Path, dst: Path, target: str | None, dtype: str, force: bool) -> str:
    """Validate everything, then write DST atomically; returns a short summary for the user."""
    import torch

    from vllm_vispec.checkpoint.drafts import check_destination, save_draft
    from vllm_vispec.checkpoint.errors import CheckpointError
    from vllm_vispec.checkpoint.official import REPO_ID, load_official, provenance
    from vllm_vispec.checkpoint.target import check_against_target

    if not src.exists() and REPO_ID.match(str(src)):
        raise CheckpointError(
            f"SRC {src} is not a local folder; download it first: "
            f"hf download {src} --local-dir {src.name}"
        )
    if dst.resolve() == src.resolve():
        raise CheckpointError("DST is SRC; write the converted draft to a new folder")
    check_destination(dst, force)
    cfg, tensors = load_official(src)
    if target is not None:
        check_against_target(cfg, target)
    if dtype != "keep":
        tensors = _cast(tensors, getattr(torch, dtype))
    origin = provenance(src)
    out = save_draft(dst, cfg, tensors, origin, overwrite=force)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    return (
        f"converted {origin['converted_from']} ({origin['source_file']}) -> {out}\n"
        f"  num_q {cfg.num_q}, hidden {cfg.hidden_size}, heads {cfg.num_attention_heads} "
        f"(kv {cfg.num_key_value_heads}), intermediate {cfg.intermediate_size}, "
        f"vocab {cfg.vocab_size}, qkv_bias {cfg.qkv_bias}, {len(tensors)} tensors, "
        f"{'/'.join(dtypes)}\n"
        f"use it with: --speculative-config "
        f'\'{{"method": "eagle", "model": "{out}", "num_speculative_tokens": 3}}\''
    )


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast, refusing a dtype whose range turns finite weights into inf (float16 from bf16)."""
    import torch

    from vllm_vispec.checkpoint.errors import CheckpointError

    cast = {k: v.to(dtype) for k, v in tensors.items()}
    for name, t in cast.items():
        if not torch.isfinite(t).all() and torch.isfinite(tensors[name]).all():
            raise CheckpointError(
                f"{name} overflows {str(dtype).removeprefix('torch.')}; "
                f"use --dtype bfloat16 or keep"
            )
    return cast
