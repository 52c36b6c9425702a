"""End to end through ``vllm serve``: ViSpec speculation changes no greedy answer of a real server.

Starts two real OpenAI-compatible servers on loopback for the tiny Qwen2.5-VL target, as users
run them (``vllm serve``, multiprocess engine, plugin loaded through the ``vllm.general_plugins``
entry point): a plain one and one with ``--speculative-config`` pointing at the plugin-format
ViSpec draft. Concurrent chat completions (text only, one base64 PNG, two PNGs of different
sizes) at temperature 0 must give the same text and the same token ids from both servers, and
the speculative server's ``/metrics`` must show that drafts were proposed and some draft tokens
accepted. This proves the CLI/JSON path (config parsing, draft loading, image inputs through the
HTTP front end, batching of concurrent requests) works with the plugin and keeps outputs lossless.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from vllm_vispec.tiny_targets import make_test_image

NUM_SPECULATIVE_TOKENS = 3
MAX_TOKENS = 32
START_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 120.0

# The CPU engine settings of ``cpu_engine_kwargs()``, as ``vllm serve`` flags.
CPU_FLAGS = [
    "--dtype", "float32",
    "--block-size", "32",
    "--max-model-len", "2048",
    "--max-num-seqs", "8",
    "--enforce-eager",
    "--limit-mm-per-prompt", json.dumps({"image": 2, "video": 0}),
    "--seed", "0",
]  # fmt: skip


def _vllm_command() -> list[str]:
    """``vllm`` as users run it (on CPU, make install adds the metadata its CLI needs)."""
    return [str(pathlib.Path(sys.executable).with_name("vllm"))]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    # conftest makes in-process engines for the other tests; a real server runs the engine core
    # in its own process, as for users.
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env.update(
        VLLM_CPU_KVCACHE_SPACE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def _tail(log: pathlib.Path, lines: int = 60) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """A ``vllm serve`` subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, model: pathlib.Path, args: list[str], log: pathlib.Path):
        self.name = name
        self.port = _free_port()
        self.log = log
        cmd = [
            *_vllm_command(), "serve", str(model),
            "--host", "127.0.0.1", "--port", str(self.port),
            *CPU_FLAGS, *args,
        ]  # fmt: skip
        self._log_file = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_server_env(),
            start_new_session=True,  # its own process group: the engine core dies with it
        )
        self.started = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> float:
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(
                    f"{self.name} server exited with code {code} before becoming healthy; "
                    f"last log lines ({self.log}):\n{_tail(self.log)}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        pytest.fail(
            f"{self.name} server not healthy after {timeout:.0f} s; "
            f"last log lines ({self.log}):\n{_tail(self.log)}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (the engine core, if the front end died first).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log_file.close()


@contextlib.contextmanager
def _servers(specs: list[tuple[str, pathlib.Path, list[str], pathlib.Path]]) -> Iterator[list]:
    """Start all servers at once, yield them once all are healthy, always stop them all."""
    with contextlib.ExitStack() as stack:
        servers = []
        for name, model, args, log in specs:
            server = Server(name, model, args, log)
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            elapsed = server.wait_healthy()
            print(f"{server.name} server healthy after {elapsed:.0f} s")
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


def _spec_counters(url: str) -> dict[str, float]:
    """The speculative-decoding counters of ``/metrics``, summed over label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("vllm:spec_decode_num_"):
            continue
        for sample in family.samples:
            if sample.name == family.name + "_total":
                out[family.name] = out.get(family.name, 0.0) + sample.value
    return out


# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_vllm_serve_vispec_matches_plain_server(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    spec_config = {
        "method": "eagle",
        "model": str(qwen_draft),
        "num_speculative_tokens": NUM_SPECULATIVE_TOKENS,
    }
    specs = [
        ("plain", qwen_target, [], tmp_path / "plain.log"),
        (
            "speculative",
            qwen_target,
            ["--speculative-config", json.dumps(spec_config)],
            tmp_path / "speculative.log",
        ),
    ]
    with _servers(specs) as (plain, spec):
        plain_answers = _ask_all(plain.url)
        before = _spec_counters(spec.url)
        spec_answers = _ask_all(spec.url)
        after = _spec_counters(spec.url)

    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    drafts = delta.get("vllm:spec_decode_num_drafts", 0.0)
    draft_tokens = delta.get("vllm:spec_decode_num_draft_tokens", 0.0)
    accepted = delta.get("vllm:spec_decode_num_accepted_tokens", 0.0)
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
    for name, (text, token_ids) in plain_answers.items():
        assert text, f"{name}: empty answer"
        assert token_ids, f"{name}: the server returned no token ids"

    # The draft ran as the plugin's model, not as some stock vLLM EAGLE head.
    assert "EagleViSpecForCausalLM" in (tmp_path / "speculative.log").read_text(errors="replace")
    assert drafts > 0, f"no drafts proposed by the speculative server ({report}, all: {delta})"
    assert draft_tokens >= drafts, report
    # The echo draft proposes the target's last token; the tiny target repeats tokens now and
    # then, so each run of these prompts accepts some (12 of ~520 draft tokens when measured).
    assert accepted > 0, report
