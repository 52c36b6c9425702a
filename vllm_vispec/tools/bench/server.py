"""A real ``vllm serve`` on loopback: start it, wait for it, read its counters, stop it.

``vllm-vispec bench`` (serve mode), the server tests and the example tests all need the same
thing: the ``vllm`` command users run, as a subprocess on 127.0.0.1 with engine arguments
written as flags, its own process group (so the engine core never outlives it), a log file to
show when it fails, and the speculative-decoding counters of its Prometheus ``/metrics``. This
module is that one set-up, kept in one place so that what the benchmark measures and what the
tests check is the same server.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

SERVER_START_TIMEOUT_S = 1200.0

SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted_tokens",
}
"""vLLM's speculative-decoding counters and the short names they are reported under."""
SPEC_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"
"""The accepted-tokens counter per draft position (label ``position``)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_flags(kwargs: dict[str, Any]) -> list[str]:
    """vllm.LLM keyword arguments as ``vllm serve`` flags (the engine arguments are the same)."""
    flags = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def server_env() -> dict[str, str]:
    """This environment, with the engine core in its own process as for users."""
    env = dict(os.environ)
    # The tests run in-process engines; a real server runs the engine core in its own process.
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


class VllmServer:
    """A ``vllm serve`` subprocess on 127.0.0.1 in its own process group, logging to a file.

    ``kwargs`` are vllm.LLM keyword arguments (e.g. ``cpu_engine_kwargs(speculative_config=
    {...})``); use it as a context manager so that it is always stopped.
    """

    def __init__(self, model: pathlib.Path, kwargs: dict[str, Any], log: pathlib.Path):
        vllm = shutil.which("vllm", path=str(pathlib.Path(sys.executable).parent))
        if vllm is None:
            raise RuntimeError(f"no `vllm` command beside {sys.executable}")
        self.port = free_port()
        self.log = log
        cmd = [
            vllm, "serve", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            *serve_flags(kwargs),
        ]  # fmt: skip
        self._log_file = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(),
            start_new_session=True,  # its own process group: the engine core dies with it
        )
        self.started = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def wait_healthy(self, timeout: float = SERVER_START_TIMEOUT_S) -> float:
        """Seconds until /health answered; RuntimeError with the log's tail if it never does."""
        while time.monotonic() < self.started + timeout:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"vllm serve exited with code {code}; last lines of {self.log}:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise RuntimeError(
            f"vllm serve not healthy after {timeout:.0f} s; last lines of {self.log}:\n"
            f"{self.tail()}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        # Whatever is left of the group (the engine core, if the front end died first).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log_file.close()


def spec_decode_counters(url: str) -> dict[str, Any]:
    """A server's vllm:spec_decode_* counters from /metrics, summed over engines ({} if none).

    Keys: the short names of :data:`SPEC_COUNTERS` and ``per_pos`` (accepted tokens per draft
    position). Counters only grow: compare a reading before and after the requests of interest.
    """
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, Any] = {}
    per_pos: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != family.name + "_total":
                continue
            if family.name in SPEC_COUNTERS:
                key = SPEC_COUNTERS[family.name]
                out[key] = out.get(key, 0.0) + sample.value
            elif family.name == SPEC_PER_POS:
                pos = int(sample.labels["position"])
                per_pos[pos] = per_pos.get(pos, 0.0) + sample.value
    if out:
        out["per_pos"] = [per_pos.get(i, 0.0) for i in range(len(per_pos))]
    return out
