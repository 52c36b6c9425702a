"""Ask a ``vllm serve`` running a ViSpec draft about one image, through the OpenAI API.

Start the server first. Serving needs no command of vllm-vispec: the plugin is found by vLLM
itself, and the draft is passed as vLLM's "eagle" method (a GPU; the authors' checkpoint by hub
id or folder, or a draft from examples/train_draft.py; the plugin's settings, e.g. draft trees,
go in --additional-config):

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct \\
        --speculative-config '{"method": "eagle", "num_speculative_tokens": 3,
                               "model": "JLKang/ViSpec-Qwen2.5-VL-7B-Instruct"}'

(On a CPU, with the tiny test models, add the small-engine flags of
vllm_vispec.tools.bench.cpu_engine.cpu_engine_kwargs: --dtype float32 --block-size 32
--enforce-eager --max-model-len 2048, and VLLM_CPU_KVCACHE_SPACE=1 in the environment.)

Then, from anywhere that reaches the server:

    python examples/serve_client.py --image photo.jpg --question "What is in this picture?"

The image travels inside the request as a base64 data URL, so the server needs no access to
the client's files. The answer is streamed as it is generated. Nothing here is ViSpec-specific:
speculative decoding is invisible to clients, except that answers come faster; the server's
/metrics shows the acceptance counters (vllm:spec_decode_*).
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
import pathlib


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-url",
        default="http://localhost:8000/v1",
        help="the server's OpenAI API (default %(default)s)",
    )
    parser.add_argument(
        "--model", help="model name to ask for (default: the first the server lists)"
    )
    parser.add_argument(
        "--image",
        help="image file (default: matplotlib's sample photo grace_hopper.jpg)",
    )
    parser.add_argument("--question", default="Describe this image in detail.")
    parser.add_argument("--max-tokens", type=int, default=512, help="default %(default)s")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="default %(default)s (greedy)"
    )
    parser.add_argument(
        "--api-key",
        default="EMPTY",
        help="only if the server was started with --api-key (default %(default)s)",
    )
    return parser.parse_args()


def image_data_url(path: str | None) -> str:
    """The image file as a data URL: data:<mime type>;base64,<bytes>."""
    if path is None:
        import matplotlib.cbook

        path = str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    mime = mimetypes.guess_type(path)[0] or "image/png"
    data = base64.b64encode(pathlib.Path(path).read_bytes()).decode()
    return f"data:{mime};base64,{data}"


def main() -> None:
    args = parse_args()
    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    # A server serves one model, under its path or its --served-model-name.
    model = args.model or client.models.list().data[0].id
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(args.image)}},
                {"type": "text", "text": args.question},
            ],
        }
    ]
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        stream=True,
    )
    print(f"model: {model}")
    print("answer: ", end="", flush=True)
    for chunk in stream:
        for choice in chunk.choices:
            print(choice.delta.content or "", end="", flush=True)
    print()


if __name__ == "__main__":
    main()
