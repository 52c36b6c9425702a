"""A cost-realistic toy target: the trained toy target plus work that changes no output.

On real models one ViSpec draft step costs a small fraction of a target step (by parameters
read, about 0.11 of Qwen2.5-VL-7B and 0.06 of LLaVA-1.6-7B); the trained toy target costs about
as much as its draft, so no draft can pay for itself on it. Training a bigger target does not fit
a CPU budget, so this builds one that computes the same function with more work that vLLM really
performs (weights it reads, products it computes):

* every MLP is widened to ``intermediate_size`` channels; the new gate/up rows are random and
  the new down_proj columns zero, so the new channels add exactly zero;
* ``extra_layers`` decoder layers follow the trained ones, with random attention and MLP weights
  whose output projections (o_proj, down_proj) are zero, so each adds exactly zero to the
  residual stream.

The final norm and lm_head then see the trained target's hidden states. The widened products sum
over more terms, so their float rounding may differ in the last bit; greedy tokens are checked in
vLLM against the trained target (``tests/test_costly_target.py``), on the bench's prompts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEFAULT_INTERMEDIATE = 4096
DEFAULT_EXTRA_LAYERS = 12
INIT_STD = 0.02
WEIGHTS = "model.safetensors"
MARKER = "costly_target.json"


def build_costly_target(
    src: str | Path,
    dst: str | Path,
    intermediate_size: int = DEFAULT_INTERMEDIATE,
    extra_layers: int = DEFAULT_EXTRA_LAYERS,
    seed: int = 0,
) -> Path:
    """Write the widened, deepened copy of the Qwen2.5-VL target ``src`` to ``dst``.

    Deterministic in its arguments; reuses ``dst`` when it was built with the same ones.
    """
    src, dst = Path(src), Path(dst)
    recipe = {
        "source_weights": _digest(src / WEIGHTS),
        "intermediate_size": intermediate_size,
        "extra_layers": extra_layers,
        "seed": seed,
    }
    marker = dst / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return dst
    config = json.loads((src / "config.json").read_text())
    text = config["text_config"]
    old_intermediate, layers = text["intermediate_size"], text["num_hidden_layers"]
    if intermediate_size < old_intermediate or extra_layers < 0:
        raise ValueError(
            f"a costly target only adds work: intermediate_size >= {old_intermediate} and "
            "extra_layers >= 0"
        )
    tensors = load_file(src / WEIGHTS)
    gen = torch.Generator().manual_seed(seed)
    for i in range(layers):
        _widen_mlp(tensors, f"model.layers.{i}.mlp.", intermediate_size, gen)
    for i in range(layers, layers + extra_layers):
        _add_silent_layer(tensors, f"model.layers.{i}.", layers - 1, gen)
    text["intermediate_size"] = intermediate_size
    text["num_hidden_layers"] = layers + extra_layers
    text["max_window_layers"] = layers + extra_layers
    if "layer_types" in text:
        text["layer_types"] = [text["layer_types"][0]] * (layers + extra_layers)

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(WEIGHTS, MARKER))
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, dst / WEIGHTS)
    marker.write_text(json.dumps(recipe, indent=2) + "\n")
    return dst


def _widen_mlp(
    tensors: dict[str, torch.Tensor], mlp: str, intermediate_size: int, gen: torch.Generator
) -> None:
    gate, up, down = (tensors[f"{mlp}{n}_proj.weight"] for n in ("gate", "up", "down"))
    new = intermediate_size - gate.shape[0]
    hidden = gate.shape[1]
    tensors[f"{mlp}gate_proj.weight"] = torch.cat([gate, _random((new, hidden), gen)])
    tensors[f"{mlp}up_proj.weight"] = torch.cat([up, _random((new, hidden), gen)])
    tensors[f"{mlp}down_proj.weight"] = torch.cat([down, down.new_zeros(hidden, new)], dim=1)


def _add_silent_layer(
    tensors: dict[str, torch.Tensor],
    prefix: str,
    template_layer: int,
    gen: torch.Generator,
) -> None:
    """A layer shaped like ``template_layer`` (after widening) whose outputs are zero."""
    template = f"model.layers.{template_layer}."
    for name, like in list(tensors.items()):
        if not name.startswith(template):
            continue
        suffix = name.removeprefix(template)
        if suffix.endswith(("o_proj.weight", "down_proj.weight")):
            value = torch.zeros_like(like)
        elif suffix.endswith("layernorm.weight"):
            value = torch.ones_like(like)
        else:
            value = _random(tuple(like.shape), gen)
        tensors[prefix + suffix] = value


def _random(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * INIT_STD


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m vllm_vispec.tools.toy.costly_target",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="the trained toy target (models/toy/target)")
    parser.add_argument("dst", type=Path, help="where to write the cost-realistic copy")
    parser.add_argument("--intermediate-size", type=int, default=DEFAULT_INTERMEDIATE)
    parser.add_argument("--extra-layers", type=int, default=DEFAULT_EXTRA_LAYERS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        build_costly_target(
            args.src, args.dst, args.intermediate_size, args.extra_layers, args.seed
        )
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
