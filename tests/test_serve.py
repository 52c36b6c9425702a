"""End to end through ``vllm serve``: ViSpec speculation changes no greedy answer of a real server.

Starts two real OpenAI-compatible servers on loopback for the tiny Qwen2.5-VL target, as users run
them (``vllm serve``, multiprocess engine, plugin loaded through the ``vllm.general_plugins`` entry
point): a plain one and one with ``--speculative-config`` pointing at an official-layout ViSpec
checkpoint (the tiny draft's weights as the authors publish them, converted by the plugin at
start-up) and ``--additional-config`` carrying the plugin's settings. Concurrent chat completions
(text only, one base64 PNG, two PNGs of different sizes) at temperature 0 must give the same text
and the same token ids from both servers, and the speculative server's ``/metrics`` must show that
drafts were proposed and some draft tokens accepted. This proves the CLI/JSON path (config parsing,
draft loading, image inputs through the HTTP front end, batching of concurrent requests) works with
the plugin and keeps outputs lossless.
"""

from __future__ import annotations

import base64
import contextlib
import io
import pathlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from vllm_vispec import checkpoint
from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
from vllm_vispec.tools.bench.server import VllmServer, spec_decode_counters
from vllm_vispec.tools.testing.tiny_drafts import write_official_checkpoint
from vllm_vispec.tools.testing.tiny_targets import make_test_image

NUM_SPECULATIVE_TOKENS = 3
MAX_TOKENS = 32
START_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 120.0


@contextlib.contextmanager
def _servers(
    specs: list[tuple[str, pathlib.Path, dict[str, Any], pathlib.Path]],
) -> Iterator[list[VllmServer]]:
    """Start all servers (name, model, engine kwargs, log) at once, yield them once all are
    healthy, always stop them all."""
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(VllmServer(m, kw, log)) for _, m, kw, log in specs]
        for (name, *_), server in zip(specs, servers, strict=True):
            try:
                elapsed = server.wait_healthy(START_TIMEOUT_S)
            except RuntimeError as e:  # it exited, or never answered: its log's tail says why
                pytest.fail(f"{name} server: {e}")
            print(f"{name} server healthy after {elapsed:.0f} s")
        yield servers


# --------------------------------------------------------------------------------------------
# Requests


def _image_url(seed: int, size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    make_test_image(seed, size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _chat(images: list[tuple[int, tuple[int, int]]], text: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": _image_url(seed, size)}} for seed, size in images
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


REQUESTS = {
    "text": _chat([], "Tell me a story about a red bicycle."),
    "text-2": _chat([], "Hello there, how are you today?"),
    "image-224": _chat([(1, (224, 224))], "Describe the picture in detail."),
    "image-320x200": _chat([(4, (320, 200))], "What shapes do you see?"),
    "two-images": _chat([(2, (224, 224)), (3, (320, 200))], "Compare the two pictures."),
    "two-images-2": _chat([(5, (256, 256)), (6, (224, 224))], "Which one is brighter?"),
}


def _ask_all(url: str) -> dict[str, tuple[str, list[int] | None]]:
    """All REQUESTS at once (one thread each): name -> (answer text, generated token ids)."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", timeout=REQUEST_TIMEOUT_S)
    model = client.models.list().data[0].id

    def ask(messages: list[dict[str, Any]]) -> tuple[str, list[int] | None]:
        reply = client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=0,
            max_tokens=MAX_TOKENS,
            extra_body={"return_token_ids": True},
        )
        choice = reply.choices[0]
        return choice.message.content or "", (choice.model_extra or {}).get("token_ids")

    with ThreadPoolExecutor(max_workers=len(REQUESTS)) as pool:
        futures = {name: pool.submit(ask, messages) for name, messages in REQUESTS.items()}
        return {name: future.result() for name, future in futures.items()}


# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_vllm_serve_vispec_matches_plain_server(
    qwen_target: pathlib.Path,
    qwen_draft: pathlib.Path,
    qwen_specvlm_draft: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    """Also a third server with a SpecVLM draft (gated compressor) in the plugin's format."""
    cfg, tensors = checkpoint.load_draft(qwen_draft)
    official = write_official_checkpoint(tmp_path / "official", cfg, tensors)
    spec_config = {
        "method": "eagle",
        "model": str(official),
        "num_speculative_tokens": NUM_SPECULATIVE_TOKENS,
    }
    goodput = {"hysteresis": 0, "explore_every": 4}
    settings = {"vispec": {"draft_attention": "mark", "feature_cache_mib": 16, "goodput": goodput}}
    # Both with the CPU test engine settings, as ``vllm serve`` flags.
    specs = [
        ("plain", qwen_target, cpu_engine_kwargs(), tmp_path / "plain.log"),
        (
            "speculative",
            qwen_target,
            cpu_engine_kwargs(
                speculative_config=spec_config,
                additional_config=settings,
                download_dir=str(tmp_path / "cache"),
            ),
            tmp_path / "speculative.log",
        ),
        (
            "specvlm",
            qwen_target,
            cpu_engine_kwargs(speculative_config={**spec_config, "model": str(qwen_specvlm_draft)}),
            tmp_path / "specvlm.log",
        ),
    ]
    with _servers(specs) as (plain, spec, specvlm):
        plain_answers = _ask_all(plain.url)
        before = spec_decode_counters(spec.url)
        spec_answers = _ask_all(spec.url)
        after = spec_decode_counters(spec.url)
        specvlm_answers = _ask_all(specvlm.url)
        specvlm_drafts = spec_decode_counters(specvlm.url).get("drafts", 0.0)
        vllm_bench = _vllm_bench_serve(spec.url, qwen_target, tmp_path)

    keys = ("drafts", "draft_tokens", "accepted_tokens")
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    drafts, draft_tokens, accepted = (delta[k] for k in keys)
    report = (
        f"spec decode: drafts {drafts:.0f}, draft tokens {draft_tokens:.0f}, "
        f"accepted tokens {accepted:.0f}"
    )
    print(report)

    differing = [
        f"{name}:\n  plain       {plain_answers[name]!r}\n  speculative {spec_answers[name]!r}"
        for name in REQUESTS
        if spec_answers[name] != plain_answers[name]
    ]
    assert not differing, (
        f"{len(differing)}/{len(REQUESTS)} answers differ with ViSpec ({report}):\n"
        + "\n".join(differing)
    )
    assert specvlm_answers == plain_answers, "answers differ with the SpecVLM draft"
    assert specvlm_drafts > 0, "the SpecVLM server proposed no drafts"
    assert "SpecVLM draft: each image passes the elastic compressor" in (
        tmp_path / "specvlm.log"
    ).read_text(errors="replace")
    for name, (text, token_ids) in plain_answers.items():
        assert text, f"{name}: empty answer"
        assert token_ids, f"{name}: the server returned no token ids"

    # The draft ran as the plugin's model, not as some stock vLLM EAGLE head, from the copy
    # converted at start-up, with the settings given.
    log = (tmp_path / "speculative.log").read_text(errors="replace")
    assert "EagleViSpecForCausalLM" in log
    assert f"converted the official checkpoint {official}" in log
    assert '"feature_cache_mib": 16' in log and "adaptor outputs of up to 16 MiB" in log
    assert drafts > 0, f"no drafts proposed by the speculative server ({report}, all: {delta})"
    assert draft_tokens >= drafts, report
    # The echo draft proposes the target's last token; the tiny target repeats tokens now and
    # then, so each run of these prompts accepts some (12 of ~520 draft tokens when measured).
    assert accepted > 0, report
    # vispec.goodput chose each step's K in that server.
    assert "ViSpec vispec.goodput: each step's K from measured goodput" in log
    # vLLM's own client against the same server, on the bench's prompt file.
    assert vllm_bench.returncode == 0, vllm_bench.stdout[-2000:]
    assert "Successful requests:                     3" in vllm_bench.stdout
    assert "Acceptance length" in vllm_bench.stdout


def _vllm_bench_serve(url: str, target: pathlib.Path, folder: pathlib.Path) -> Any:
    """``vllm bench serve`` as README gives it (bench.md's command), at small scale."""
    import shutil
    import subprocess
    import sys

    from vllm_vispec.tools.bench.prompts import load_prompts, write_dataset
    from vllm_vispec.tools.bench.serve import vllm_bench_command

    dataset = folder / "prompts.jsonl"
    write_dataset(load_prompts("toy", 3), dataset)
    command = vllm_bench_command(url, str(target), dataset, 2, 3, 8)
    command[0] = shutil.which("vllm", path=str(pathlib.Path(sys.executable).parent))
    return subprocess.run(command, capture_output=True, text=True, timeout=REQUEST_TIMEOUT_S)
