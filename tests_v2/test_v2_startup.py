"""Start-up on vLLM 0.34: a ViSpec draft selects the ViSpec speculator, trees are refused.

Each case builds vLLM's config as ``LLM(...)`` and ``vllm serve`` do
(``EngineArgs.create_engine_config``, which the plugin wraps with its start-up validation); no
engine starts.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from vllm.engine.arg_utils import EngineArgs

from vllm_vispec.runners.v2.config import ViSpecSpeculatorConfig
from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
from vllm_vispec.validation import ViSpecConfigError


@pytest.fixture(scope="module")
def qwen_draft(qwen_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    return build_tiny_draft(qwen_target, tmp_path_factory.mktemp("qwen-draft") / "d", echo=True)


def _config(
    target: pathlib.Path, draft: pathlib.Path, method: str | None = "eagle", **vispec: Any
) -> Any:
    spec = {"model": str(draft), "num_speculative_tokens": 3}
    if method is not None:
        spec["method"] = method
    args = EngineArgs(
        model=str(target),
        speculative_config=spec,
        **cpu_engine_kwargs(additional_config={"vispec": vispec}),
    )
    return args.create_engine_config()


def test_vispec_draft_selects_the_vispec_speculator(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    config = _config(qwen_target, qwen_draft)
    speculator_config = config.speculative_config.speculator_config
    assert type(speculator_config) is ViSpecSpeculatorConfig
    assert speculator_config.num_lookahead_tokens == 3  # EAGLE's, inherited


def test_vispec_draft_without_method_runs_as_eagle(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    """vLLM 0.34 detects the method from the speculator the draft's model declares (0.32 and
    0.33 would run the folder as a standalone draft model, which the plugin refuses)."""
    config = _config(qwen_target, qwen_draft, method=None)
    assert config.speculative_config.method == "eagle"
    assert type(config.speculative_config.speculator_config) is ViSpecSpeculatorConfig


def test_plain_eagle_draft_keeps_vllms_speculator(
    qwen_target: pathlib.Path, qwen_eagle_draft: pathlib.Path
) -> None:
    config = _config(qwen_target, qwen_eagle_draft)
    assert type(config.speculative_config.speculator_config).__name__ == "EagleSpeculatorConfig"


def test_trees_are_refused_with_one_line(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    with pytest.raises(ViSpecConfigError) as error:
        _config(qwen_target, qwen_draft, tree={"depth": 3, "top_k": 2})
    message = str(error.value)
    assert "\n" not in message
    assert "needs vLLM 0.32 or 0.33" in message and "remove 'tree'" in message
