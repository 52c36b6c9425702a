"""vLLM 0.34's V2 model runner on this CPU gives vLLM 0.32's V1 greedy tokens, plain and with
vLLM's own EAGLE-1 draft: the ground the V2 adapter will be tested on.

Same tiny Qwen2.5-VL, echo EAGLE-1 draft (K=3), one text and one image prompt, greedy, 24
tokens each (interpreted kernels cost about 20 ms a step). V1's tokens come from the 0.32 venv,
run in a subprocess on the same model files and picture; nothing here is a hard-coded token.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
from typing import Any

import greedy_engine
import pytest

K = 3
MAX_TOKENS = 24
V2_RUNNER = "vllm.v1.worker.cpu.model_runner.CPUModelRunner"
V2_BASE = "vllm.v1.worker.gpu.model_runner.GPUModelRunner"
V1_BASE = "vllm.v1.worker.gpu_model_runner.GPUModelRunner"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def v1(
    vllm032_python: pathlib.Path,
    qwen_target: pathlib.Path,
    qwen_eagle_draft: pathlib.Path,
    test_image: pathlib.Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """vLLM 0.32's results (V1), plain and EAGLE, from its own venv and without any plugin."""
    out = tmp_path_factory.mktemp("v1") / "results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(VLLM_PLUGINS="", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    args = [
        str(vllm032_python), greedy_engine.__file__, "--target", str(qwen_target),
        "--draft", str(qwen_eagle_draft), "--image", str(test_image),
        "--k", str(K), "--max-tokens", str(MAX_TOKENS), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def v2(
    qwen_target: pathlib.Path, qwen_eagle_draft: pathlib.Path, test_image: pathlib.Path
) -> dict[str, Any]:
    """vLLM 0.34's results (V2), plain and EAGLE, in this process, with the Triton kernels
    launched (interpreted) counted by name."""
    from triton.runtime.interpreter import InterpretedFunction

    results = {}
    for name, draft in (("plain", None), ("eagle", qwen_eagle_draft)):
        launches: collections.Counter[str] = collections.Counter()
        run = InterpretedFunction.run

        def counted(self, *args, _run=run, _launches=launches, **kwargs):
            _launches[f"{self.fn.__module__}.{self.fn.__qualname__}"] += 1
            return _run(self, *args, **kwargs)

        InterpretedFunction.run = counted
        try:
            results[name] = greedy_engine.run(
                str(qwen_target), str(test_image), None if draft is None else str(draft),
                K, MAX_TOKENS,
            )  # fmt: skip
        finally:
            InterpretedFunction.run = run
        results[name]["launches"] = dict(launches)
    return results


@pytest.mark.parametrize("mode", ["plain", "eagle"])
def test_v2_runner_runs_interpreted_triton_kernels(v2: dict[str, Any], mode: str) -> None:
    """The worker really runs V2 (vLLM's CPU runner, a V2 GPUModelRunner), with V2's EAGLE
    speculator when drafting, and V2's Triton kernels ran under the interpreter."""
    result = v2[mode]
    assert result["vllm"].startswith("0.34.")
    assert result["runner"] == V2_RUNNER
    assert V2_BASE in result["runner_mro"]
    if mode == "eagle":
        assert result["drafter"].startswith("vllm.v1.worker.gpu.spec_decode."), result["drafter"]
    else:
        assert result["drafter"] is None
    v2_kernels = {k: n for k, n in result["launches"].items() if k.startswith("vllm.v1.worker.")}
    assert v2_kernels, result["launches"]


@pytest.mark.parametrize("mode", ["plain", "eagle"])
def test_v2_greedy_tokens_equal_v1(v1: dict[str, Any], v2: dict[str, Any], mode: str) -> None:
    """Token for token, both prompts, V2 on vLLM 0.34 against V1 on vLLM 0.32."""
    assert v1[mode]["vllm"].startswith("0.32.")
    assert V1_BASE in v1[mode]["runner_mro"]  # the reference really is V1
    for prompt in greedy_engine.PROMPTS:
        assert len(v2[mode]["tokens"][prompt]) == MAX_TOKENS
        assert v2[mode]["tokens"][prompt] == v1[mode]["tokens"][prompt], prompt


def test_v2_eagle_is_lossless(v2: dict[str, Any]) -> None:
    """Greedy EAGLE on V2 gives V2's plain tokens, having drafted K tokens a step."""
    assert v2["eagle"]["tokens"] == v2["plain"]["tokens"]
    spec = v2["eagle"]["spec"]
    assert spec["vllm:spec_decode_num_drafts"] > 0
    assert spec["vllm:spec_decode_num_draft_tokens"] == K * spec["vllm:spec_decode_num_drafts"]


def test_v2_eagle_drafts_as_v1(v1: dict[str, Any], v2: dict[str, Any]) -> None:
    """Same drafts, draft tokens and acceptances (per position) as V1's EAGLE."""
    assert v2["eagle"]["spec"] == v1["eagle"]["spec"]
