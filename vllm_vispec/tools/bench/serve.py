"""The bench's serve mode: a real ``vllm serve`` per method, asked through the OpenAI API.

What users run in production: a batch is that many concurrent streaming chat completions
(images as base64 data URLs), timed by the client over waves that go through every prompt;
acceptance is read from the server's Prometheus /metrics. The server process itself is
:class:`~vllm_vispec.tools.bench.server.VllmServer`, which the tests share.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import time
from typing import Any

from tqdm import tqdm

from vllm_vispec.tools.bench.offline import WARMUP_TOKENS
from vllm_vispec.tools.bench.prompts import Prompt, waves, write_dataset
from vllm_vispec.tools.bench.report import Answer, acceptance, row
from vllm_vispec.tools.bench.server import VllmServer, spec_decode_counters

REQUEST_TIMEOUT_S = 1800.0


DATASET = "prompts.jsonl"  # in --out: the prompts for `vllm bench serve` (custom_image)


def vllm_bench_command(
    base_url: str,
    target: str,
    dataset: pathlib.Path,
    batch: int,
    num_prompts: int,
    max_tokens: int,
    temperature: float = 0.0,
    ignore_eos: bool = True,
) -> list[str]:
    """vLLM's own client for a serve row: the same prompts, ``batch`` concurrent requests."""
    return [
        "vllm", "bench", "serve", "--backend", "openai-chat", "--endpoint",
        "/v1/chat/completions", "--base-url", base_url, "--model", target,
        "--dataset-name", "custom_image", "--dataset-path", str(dataset), "--disable-shuffle",
        "--num-prompts", str(num_prompts), "--max-concurrency", str(batch),
        "--custom-output-len", str(max_tokens), "--temperature", f"{temperature:g}",
        *(["--ignore-eos"] if ignore_eos else []),
    ]  # fmt: skip


def measure(
    args: argparse.Namespace, method: str, kwargs: dict[str, Any], prompts: list[Prompt]
) -> list[dict[str, Any]]:
    """One ``vllm serve`` for every batch size; one row per batch size."""
    from vllm.logger import init_logger

    messages = [p.messages() for p in prompts]
    write_dataset(prompts, args.out / DATASET)
    with VllmServer(pathlib.Path(args.target), kwargs, args.out / f"serve_{method}.log") as server:
        elapsed = server.wait_healthy()
        init_logger(f"vllm.{__name__}").info("%s server healthy after %.0f s", method, elapsed)
        asyncio.run(_ask(server.url, messages, args, WARMUP_TOKENS))
        rows = []
        for batch in args.batch_sizes:
            before = spec_decode_counters(server.url)
            answers, seconds = [], 0.0
            for wave in tqdm(waves(messages, batch), desc=f"serve {method} batch {batch}"):
                wave_answers, wave_seconds = asyncio.run(
                    _ask(server.url, wave, args, args.max_tokens)
                )
                answers += wave_answers
                seconds += wave_seconds
            after = spec_decode_counters(server.url)
            spec = acceptance(before, after) if after else None
            rows.append(row("serve", method, batch, answers, seconds, spec))
    return rows


async def _ask(
    url: str,
    conversations: list[list[dict[str, Any]]],
    args: argparse.Namespace,
    max_tokens: int,
) -> tuple[list[Answer], float]:
    """All conversations at once as streaming chat completions; (answers, wall seconds).

    A small client rather than ``vllm bench serve``: that runs as its own process per batch,
    reads prompts from a dataset file and returns texts, while the lossless check needs the
    generated token ids (``return_token_ids``) and the batches here are in-memory image chats.
    """
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", timeout=REQUEST_TIMEOUT_S)
    model = (await client.models.list()).data[0].id

    async def one(messages: list[dict[str, Any]]) -> Answer:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=args.temperature,
            max_tokens=max_tokens,
            stream=True,
            extra_body={"return_token_ids": True, "ignore_eos": args.ignore_eos},
        )
        token_ids: list[int] = []
        first = None
        async for chunk in stream:
            for choice in chunk.choices:
                new = (choice.model_extra or {}).get("token_ids") or []
                if new and first is None:
                    first = time.perf_counter() - start
                token_ids += new
        latency = time.perf_counter() - start
        return Answer(token_ids, latency if first is None else first, latency)

    start = time.perf_counter()
    answers = await asyncio.gather(*(one(m) for m in conversations))
    seconds = time.perf_counter() - start
    await client.close()
    return list(answers), seconds
