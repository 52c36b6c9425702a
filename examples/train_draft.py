"""Train a ViSpec draft for your own target on your own LLaVA-style data, then serve it.

Training is online distillation: each step runs the frozen target on a batch of conversations
(its hidden states and logits are the teacher, nothing is dumped to disk) and trains the small
draft to predict them. The data is a JSON list of conversations with images:

    [
      {
        "id": "sample-1",
        "image": "images/cat.png",                 <- relative to --image-root
        "conversations": [
          {"from": "human", "value": "<image>\\nWhat is in this picture?"},
          {"from": "gpt", "value": "A grey cat sleeping on a red sofa ..."}
        ]
      },
      ...
    ]

"<image>" marks where the image goes; "image" may also be a list of paths (one "<image>" each).
Records without "image" (ShareGPT text chats) are fine too. The longer and more image-grounded
the answers, the better the draft learns to use the image; --regenerate (an option of
`vllm-vispec train`) replaces the answers by the target's own. --demo-data DIR writes a
two-record example of this format (toy pictures) to look at or to try the script on.

On GPUs (bf16; several GPUs: `accelerate launch -m vllm_vispec.tools.cli train ...` with the same
options):

    hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir Qwen2.5-VL-7B-Instruct
    python examples/train_draft.py --target Qwen2.5-VL-7B-Instruct \\
        --data my_data.json --image-root my_images/ --out vispec-qwen7b-mine

On a CPU, with the tiny test target and the demo data (seconds):

    python examples/train_draft.py --target TINY_TARGET --demo-data demo/ \\
        --out tiny-draft --batch-size 2 --max-steps 2

Any further option is passed on to `vllm-vispec train` (see `vllm-vispec train --help`: loss
recipes, learning rate, --init from a stage-1 draft, --save-every, --resume, ...). The draft is
written to OUT/final, a folder vLLM loads as it is.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--target",
        type=pathlib.Path,
        default=pathlib.Path("Qwen2.5-VL-7B-Instruct"),
        help="local folder of the target VLM, Qwen2.5-VL or LLaVA-1.6 (default %(default)s)",
    )
    parser.add_argument(
        "--data",
        type=pathlib.Path,
        nargs="+",
        default=[pathlib.Path("data.json")],
        help="LLaVA-style / ShareGPT JSON or JSONL files (default %(default)s)",
    )
    parser.add_argument(
        "--image-root",
        type=pathlib.Path,
        default=pathlib.Path("."),
        help="folder the image paths are relative to (default: the current folder)",
    )
    parser.add_argument(
        "--demo-data",
        type=pathlib.Path,
        metavar="DIR",
        help="write a 2-record example data set (JSON + images) to DIR and train on it "
        "(replaces --data and --image-root)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("vispec-draft"),
        help="folder for the checkpoints; the draft is OUT/final (default %(default)s)",
    )
    parser.add_argument("--epochs", type=float, default=2, help="default %(default)s")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="conversations per step, all GPUs together (default %(default)s)",
    )
    parser.add_argument(
        "--recipe",
        default="specvlm",
        help="loss recipe: specvlm, vispec-stage1 or vispec-stage2 (default %(default)s)",
    )
    parser.add_argument(
        "--max-steps", type=int, help="stop after this many steps (overrides --epochs)"
    )
    return parser.parse_known_args()


def write_demo_data(folder: pathlib.Path) -> pathlib.Path:
    """Two toy-world records (a picture of shapes + a long description) in LLaVA format."""
    from vllm_vispec.tools.toy.world import make_samples

    records = make_samples(2, seed=0, image_dir=folder / "images")
    for record in records:
        record["image"] = f"images/{record['image']}"  # relative to --image-root (folder)
        del record["scene"]  # the toy world's ground truth; not part of the format
    data = folder / "data.json"
    data.write_text(json.dumps(records, indent=2) + "\n")
    print(f"demo data: {data} (images in {folder / 'images'}); first record:")
    print(json.dumps(records[0], indent=2))
    return data


def main() -> int:
    args, passed_on = parse_args()
    if args.demo_data is not None:
        args.data = [write_demo_data(args.demo_data)]
        args.image_root = args.demo_data

    argv = [
        "train",
        "--target", str(args.target),
        "--data", *map(str, args.data),
        "--image-root", str(args.image_root),
        "--out", str(args.out),
        "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size),
        "--recipe", args.recipe,
        *(["--max-steps", str(args.max_steps)] if args.max_steps else []),
        *passed_on,
    ]  # fmt: skip
    print("running: vllm-vispec " + shlex.join(argv), flush=True)
    from vllm_vispec.tools import cli  # imports torch: after --help

    code = cli.main(argv)
    if code:
        return code

    final = args.out / "final"
    spec = {"method": "eagle", "model": str(final), "num_speculative_tokens": 3}
    print(f"\ntrained draft: {final}\nuse it with vLLM:")
    print(f"  vllm serve {args.target} --speculative-config {shlex.quote(json.dumps(spec))}")
    print(f"  LLM({str(args.target)!r}, speculative_config={spec!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
