"""Offline generation with a ViSpec draft: ``vllm.LLM`` + ``llm.chat`` on one image.

The draft is selected the vLLM way, ``method`` "eagle" with the ViSpec draft as ``model``: an
official checkpoint as its authors publish it (hub id or folder; the plugin converts it once at
start-up) or a folder written by ``vllm-vispec convert`` / ``train``. The plugin's settings go in
vLLM's ``additional_config`` under "vispec" (``--vispec-config``). The output is exactly what
the target alone would write under greedy decoding; the draft only makes it faster. At the end
the script prints how many draft tokens the target accepted (vLLM's vllm:spec_decode_*
counters).

On a GPU, with the authors' draft for Qwen2.5-VL-7B (downloaded by vLLM):

    python examples/offline_generate.py --target Qwen/Qwen2.5-VL-7B-Instruct \\
        --draft JLKang/ViSpec-Qwen2.5-VL-7B-Instruct --image photo.jpg

On a CPU (the tiny random models of the tests; --cpu is automatic on a CPU-only vLLM):

    python examples/offline_generate.py --target TINY_TARGET --draft TINY_DRAFT --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image
    from vllm import LLM


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--target",
        default="Qwen/Qwen2.5-VL-7B-Instruct",
        help="target VLM: Hugging Face id or local folder (default %(default)s)",
    )
    parser.add_argument(
        "--draft",
        default="JLKang/ViSpec-Qwen2.5-VL-7B-Instruct",
        help="ViSpec draft: an official checkpoint (hub id or folder, converted by the plugin "
        "at start-up) or a folder written by `vllm-vispec convert` or `vllm-vispec train` "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--vispec-config",
        type=json.loads,
        default={},
        metavar="JSON",
        help="the plugin's settings, vLLM's additional_config['vispec'] (e.g. "
        "'{\"tree\": true}' with -k 29 for ViSpec's draft trees; default: none)",
    )
    parser.add_argument(
        "--image",
        help="image file (default: matplotlib's sample photo grace_hopper.jpg)",
    )
    parser.add_argument("--question", default="Describe this image in detail.")
    parser.add_argument(
        "-k",
        "--num-speculative-tokens",
        type=int,
        default=3,
        help="draft tokens per step, 1-8; nodes per tree with draft trees (default %(default)s)",
    )
    parser.add_argument("--max-tokens", type=int, default=512, help="default %(default)s")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="small CPU engine settings (vllm_vispec.tools.bench.cpu_engine.cpu_engine_kwargs: "
        "float32, eager, bounded KV cache); on by itself when vLLM runs on CPU",
    )
    return parser.parse_args()


def load_image(path: str | None) -> Image:
    from PIL import Image

    if path is None:
        import matplotlib.cbook

        # A real photo that ships with matplotlib: no download needed.
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return Image.open(f).convert("RGB")
    return Image.open(path).convert("RGB")


def acceptance(llm: LLM) -> str:
    """The speculative-decoding counters of this process (vLLM keeps them per process)."""
    from vllm.v1.metrics.reader import Counter, Vector

    counters, per_pos = {}, []
    for metric in llm.get_metrics():
        if isinstance(metric, Counter) and metric.name.startswith("vllm:spec_decode_"):
            counters[metric.name.removeprefix("vllm:spec_decode_num_")] = metric.value
        elif isinstance(metric, Vector) and metric.name.startswith("vllm:spec_decode_"):
            per_pos = metric.values  # accepted tokens at draft position 1, 2, ...
    drafts = counters.get("drafts", 0)
    if not drafts:
        return "acceptance: no drafts were proposed"
    accepted = counters.get("accepted_tokens", 0)
    return (
        f"acceptance: {drafts} drafts, {counters.get('draft_tokens', 0)} draft tokens, "
        f"{accepted} accepted; mean acceptance length {1 + accepted / drafts:.2f} "
        f"(tokens per target step); per position "
        + " / ".join(f"{a / drafts:.2f}" for a in per_pos)
    )


def main() -> None:
    args = parse_args()
    # vLLM is imported only now, so that --help is instant.
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    engine_args = {
        "speculative_config": {
            "method": "eagle",  # ViSpec drafts are EAGLE-style: vLLM's "eagle" method
            "model": args.draft,
            "num_speculative_tokens": args.num_speculative_tokens,
        },
        "additional_config": {"vispec": args.vispec_config},
        "disable_log_stats": False,  # keep the metrics that get_metrics() reads
        "limit_mm_per_prompt": {"image": 1, "video": 0},
    }
    if args.cpu or current_platform.is_cpu():
        from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs

        engine_args = cpu_engine_kwargs(**engine_args)
    llm = LLM(model=args.target, **engine_args)

    messages = [
        {
            "role": "user",
            "content": [
                # vLLM also takes {"type": "image_url", "image_url": {"url": "https://..."}}.
                {"type": "image_pil", "image_pil": load_image(args.image)},
                {"type": "text", "text": args.question},
            ],
        }
    ]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)  # greedy: lossless
    output = llm.chat(messages, params)[0].outputs[0]
    print(f"answer ({len(output.token_ids)} tokens): {output.text}")
    print(acceptance(llm))


if __name__ == "__main__":
    main()
