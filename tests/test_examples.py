"""The scripts in examples/ run as users run them, here against the tiny local models.

Each script runs as a subprocess with tiny settings (a few output tokens, two training steps)
and must exit 0 with the output it promises: an answer and the acceptance figures, a streamed
answer from a real ``vllm serve`` with the ViSpec draft, a converted draft folder vLLM resolves
to the plugin's model, a trained draft folder. Every script's ``--help`` must work too.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
from vllm_vispec.tools.bench.server import VllmServer, spec_decode_counters

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ("offline_generate.py", "serve_client.py", "convert_checkpoint.sh", "train_draft.py")
TIMEOUT_S = 300


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run an example (python or bash) to the end; its stdout, or a failure with its output."""
    interpreter = "bash" if script.endswith(".sh") else sys.executable
    # As in an activated venv: `vllm`, `vllm-vispec` and `hf` are on PATH. The rest of the
    # environment (in-process engines, bounded CPU KV cache, offline) comes from conftest.
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], **(env or {})}
    done = subprocess.run(
        [interpreter, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, (
        f"{script} exited with {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr\n{done.stderr[-5000:]}"
    )
    return done.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    out = _run(script, "--help")
    assert "usage:" in out and "vllm" in out, out


@pytest.mark.slow
def test_offline_generate(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> None:
    out = _run(
        "offline_generate.py",
        "--target", str(qwen_target),
        "--draft", str(qwen_draft),
        "--max-tokens", "8",
        "--cpu",
    )  # fmt: skip
    answer = re.search(r"^answer \((\d+) tokens\): ", out, re.MULTILINE)
    assert answer and int(answer[1]) == 8, out
    figures = re.search(r"^acceptance: (\d+) drafts, (\d+) draft tokens, (\d+) accepted", out, re.M)
    assert figures, out
    drafts, draft_tokens, accepted = map(int, figures.groups())
    assert 0 < drafts <= draft_tokens <= 3 * drafts and 0 <= accepted <= draft_tokens, out
    assert "mean acceptance length" in out and "per position" in out, out


@pytest.mark.slow
def test_serve_client(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    spec = {"method": "eagle", "model": str(qwen_draft), "num_speculative_tokens": 3}
    log = tmp_path / "serve.log"
    with VllmServer(qwen_target, cpu_engine_kwargs(speculative_config=spec), log) as server:
        server.wait_healthy(240)
        before = spec_decode_counters(server.url)
        out = _run("serve_client.py", "--base-url", f"{server.url}/v1", "--max-tokens", "8")
        after = spec_decode_counters(server.url)
    assert f"model: {qwen_target}" in out, out
    answer = re.search(r"^answer: (.+)$", out, re.MULTILINE)
    assert answer and answer[1].strip(), out
    # The client's request went through the ViSpec draft.
    assert after.get("drafts", 0) > before.get("drafts", 0), (before, after)
    assert "EagleViSpecForCausalLM" in log.read_text(errors="replace")


def test_convert_checkpoint(qwen_target: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from vllm_vispec.checkpoint import draft_config_for_target
    from vllm_vispec.tools.testing.tiny_drafts import random_official_checkpoint

    src = random_official_checkpoint(tmp_path / "official", draft_config_for_target(qwen_target))
    dst = tmp_path / "converted"
    out = _run(
        "convert_checkpoint.sh", str(src), str(dst), str(qwen_target), env={"SKIP_DOWNLOAD": "1"}
    )
    config = json.loads((dst / "config.json").read_text())
    assert config["architectures"] == ["EagleViSpecForCausalLM"], config
    assert (dst / "model.safetensors").is_file()
    assert f"vllm serve {qwen_target} --speculative-config" in out, out
    assert f'"model": "{dst}"' in out, out


@pytest.mark.slow
def test_train_draft(qwen_target: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = _run(
        "train_draft.py",
        "--target", str(qwen_target),
        "--demo-data", str(tmp_path / "demo"),
        "--out", str(tmp_path / "draft"),
        "--batch-size", "2",
        "--max-steps", "2",
    )  # fmt: skip
    records = json.loads((tmp_path / "demo" / "data.json").read_text())
    assert len(records) == 2 and all((tmp_path / "demo" / r["image"]).is_file() for r in records)
    final = tmp_path / "draft" / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == [
        "EagleViSpecForCausalLM"
    ]
    assert len((tmp_path / "draft" / "train_log.jsonl").read_text().splitlines()) == 2
    assert f"vllm serve {qwen_target} --speculative-config" in out, out
    assert str(final) in out, out
