"""``vllm_vispec.register()``: discoverable, idempotent, lazy, version-guarded, and routing.

* vLLM finds the plugin through the ``vllm.general_plugins`` entry point.
* Calling ``register()`` any number of times registers the draft architecture once and never
  stacks patches (the patched vLLM callables are the same objects after another call).
* It is cheap: in a fresh interpreter it does not import vLLM's EAGLE proposer module; importing
  that module later yields a patched ``EagleProposer.__new__`` that builds a ``ViSpecProposer``
  for ViSpec drafts only.
* Under an unsupported vLLM version it logs one warning naming the supported versions and
  registers nothing; each supported minor version maps to its runner adapter.
* vLLM's model-runner choice lists ViSpec among the features Model Runner V2 lacks (so ViSpec
  configs run on the V1 runner) and leaves other configs alone; a real engine runs V1's CPU
  runner with the plugin's proposer.

The fresh-interpreter checks run in subprocesses started together at the beginning of the module,
so their vLLM imports overlap with each other and with the in-process tests.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import vllm_vispec
from vllm_vispec.config import DRAFT_ARCHITECTURE
from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs

EAGLE_MODULE = "vllm.v1.spec_decode.eagle"
# The module whose first import applies the CPU top-k fix (runners/v1/cpu_top_k.py).
SAMPLER_TRIGGER = "vllm.v1.sample.ops.topk_topp_sampler"
SCHEDULER_TRIGGER = "vllm.v1.core.sched.scheduler"  # vispec.goodput's patch
PATCHES = "vllm_vispec.patches"
V1 = "vllm_vispec.runners.v1"
RESULT_MARK = "RESULT-JSON: "
VISPEC_FEATURE = "ViSpec drafts (vllm-vispec)"
# Runner modules whose load_model the tree hooks wrap on first import (ledger tree_hooks).
RUNNER_MODULES = ("vllm.v1.worker.cpu_model_runner", "vllm.v1.worker.gpu_model_runner")
REPO = pathlib.Path(__file__).resolve().parents[1]

# A fresh interpreter: register() (three times), then import the EAGLE module and use it.
FRESH_PROCESS = f"""
import json, sys
from types import SimpleNamespace as NS

from vllm import ModelRegistry

calls = []
register_model = ModelRegistry.register_model

def counting_register_model(*args, **kwargs):
    calls.append(args[0])
    return register_model(*args, **kwargs)

ModelRegistry.register_model = counting_register_model

import vllm_vispec

def finders():
    return sorted(f.name for f in sys.meta_path if type(f).__name__ == "_PatchOnImport")

vllm_vispec.register()
out = {{"eagle_imported_by_register": {EAGLE_MODULE!r} in sys.modules}}

from vllm.config.vllm import VllmConfig
from vllm.engine.arg_utils import EngineArgs

patched = [EngineArgs.create_engine_config, VllmConfig._get_v2_model_runner_unsupported_features]
out["patch_modules"] = [f.__module__ for f in patched]
out["pending_finders"] = finders()
vllm_vispec.register()
vllm_vispec.register()
now = [EngineArgs.create_engine_config, VllmConfig._get_v2_model_runner_unsupported_features]
out["patches_unchanged"] = all(a is b for a, b in zip(patched, now))
out["pending_finders_after_repeat"] = finders()
out["eagle_imported_after_repeat"] = {EAGLE_MODULE!r} in sys.modules

from vllm.v1.spec_decode.eagle import EagleProposer

new = EagleProposer.__new__
vllm_vispec.register()
out["eagle_new_module"] = new.__module__
out["eagle_new_unchanged"] = EagleProposer.__new__ is new
out["pending_finders_at_end"] = finders()
from vllm.v1.core.sched.scheduler import Scheduler

out["scheduler_init_module"] = Scheduler.__init__.__module__
out["register_model_calls"] = calls
out["registered"] = {DRAFT_ARCHITECTURE!r} in ModelRegistry.get_supported_archs()

vispec = NS(draft_model_config=NS(hf_config=NS(architectures=[{DRAFT_ARCHITECTURE!r}])))
plain = NS(draft_model_config=NS(hf_config=NS(architectures=["EagleLlamaForCausalLM"])))
trees = {{"vispec": {{"tree": True}}}}
out["proposer_for"] = {{
    name: type(
        EagleProposer.__new__(EagleProposer, NS(speculative_config=spec, additional_config=extra))
    ).__name__
    for name, spec, extra in (
        ("vispec", vispec, {{}}), ("vispec-trees", vispec, trees), ("plain", plain, trees),
        ("none", None, {{}}),
    )
}}
# The tree hooks go on a tree engine's own runner and attention: vLLM's classes stay vLLM's.
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

out["load_model_wrapped"] = hasattr(GPUModelRunner.load_model, "__wrapped__")
methods = [GPUModelRunner._prepare_inputs, GPUModelRunner._sample,
           GPUModelRunner.take_draft_token_ids, CPUAttentionBackendImpl.forward]
out["vllm_methods_modules"] = sorted({{m.__module__ for m in methods}})
print({RESULT_MARK!r} + json.dumps(out))
"""

# A fresh interpreter under a vLLM that claims a version the plugin does not support.
WRONG_VERSION = f"""
import json, sys

import vllm

vllm.__version__ = "0.35.0"
import vllm_vispec

vllm_vispec.register()
vllm_vispec.register()
from vllm import ModelRegistry
from vllm.engine.arg_utils import EngineArgs

out = {{
    "registered": {DRAFT_ARCHITECTURE!r} in ModelRegistry.get_supported_archs(),
    "create_engine_config": EngineArgs.create_engine_config.__qualname__,
    "finders": [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_PatchOnImport"],
}}
print({RESULT_MARK!r} + json.dumps(out))
"""


class _Child:
    """A fresh ``python -c`` started now, read when a test needs its result."""

    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._output: str | None = None

    @property
    def output(self) -> str:
        if self._output is None:
            self._output, _ = self.proc.communicate(timeout=300)
        return self._output

    @property
    def result(self) -> dict[str, Any]:
        lines = [line for line in self.output.splitlines() if line.startswith(RESULT_MARK)]
        assert self.proc.returncode == 0 and len(lines) == 1, self.output[-4000:]
        return json.loads(lines[0][len(RESULT_MARK) :])


@pytest.fixture(scope="module", autouse=True)
def children() -> Any:
    """Both fresh interpreters, started before the first test of this module."""
    started = {"fresh": _Child(FRESH_PROCESS), "wrong_version": _Child(WRONG_VERSION)}
    yield started
    for child in started.values():
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


# --------------------------------------------------------------------------------------------
# In-process


def test_entry_point() -> None:
    plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
    ours = [ep for ep in plugins if ep.name == "vispec"]
    assert len(ours) == 1
    assert ours[0].value == "vllm_vispec:register"
    assert ours[0].load() is vllm_vispec.register


def test_register_is_idempotent_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm import ModelRegistry
    from vllm.config.vllm import VllmConfig
    from vllm.engine.arg_utils import EngineArgs

    vllm_vispec.register()
    assert DRAFT_ARCHITECTURE in ModelRegistry.get_supported_archs()
    patched = (
        EngineArgs.create_engine_config,
        VllmConfig._get_v2_model_runner_unsupported_features,
    )
    owners = [f.__module__ for f in patched]
    assert owners == [f"{PATCHES}.startup_validation", f"{V1}.runner_selection"]
    eagle = sys.modules.get(EAGLE_MODULE)
    eagle_new = eagle.EagleProposer.__new__ if eagle is not None else None
    finders = [f for f in sys.meta_path if type(f).__name__ == "_PatchOnImport"]

    calls: list[Any] = []
    monkeypatch.setattr(ModelRegistry, "register_model", lambda *a, **k: calls.append(a))
    for _ in range(3):
        vllm_vispec.register()

    assert calls == []
    assert EngineArgs.create_engine_config is patched[0]
    assert VllmConfig._get_v2_model_runner_unsupported_features is patched[1]
    if eagle is not None:
        assert eagle.EagleProposer.__new__ is eagle_new
    assert [f for f in sys.meta_path if type(f).__name__ == "_PatchOnImport"] == finders
    assert len({f.name for f in finders}) == len(finders)


def _create_config(target: pathlib.Path, speculative_config: dict[str, Any] | None) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(
        model=str(target), speculative_config=speculative_config, **cpu_engine_kwargs()
    )
    return args.create_engine_config()


@pytest.fixture(scope="module")
def vispec_config(qwen_target: pathlib.Path, qwen_draft: pathlib.Path) -> Any:
    spec = {"method": "eagle", "model": str(qwen_draft), "num_speculative_tokens": 3}
    return _create_config(qwen_target, spec)


def test_v2_runner_lists_vispec_as_unsupported(vispec_config: Any) -> None:
    features = vispec_config._get_v2_model_runner_unsupported_features()
    assert features.count(VISPEC_FEATURE) == 1
    # A fresh list each call: asking again does not accumulate entries.
    again = vispec_config._get_v2_model_runner_unsupported_features()
    assert again.count(VISPEC_FEATURE) == 1


@pytest.mark.parametrize("method", [None, "ngram"])
def test_v2_runner_features_untouched_without_vispec(
    qwen_target: pathlib.Path, method: str | None
) -> None:
    spec = None
    if method == "ngram":
        spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
    config = _create_config(qwen_target, spec)
    assert VISPEC_FEATURE not in config._get_v2_model_runner_unsupported_features()


def test_vllm_picks_the_v1_runner_for_vispec(
    monkeypatch: pytest.MonkeyPatch, qwen_target: pathlib.Path, vispec_config: Any
) -> None:
    """Where V2 would be the default (Triton present), ViSpec configs fall back to V1."""
    import vllm.config.vllm
    from vllm import envs

    if envs.VLLM_USE_V2_MODEL_RUNNER is not None:
        pytest.skip("VLLM_USE_V2_MODEL_RUNNER is set: vLLM does not choose the runner itself")
    monkeypatch.setattr(vllm.config.vllm, "HAS_TRITON", True)
    plain = _create_config(qwen_target, None)
    assert plain.use_v2_model_runner, plain._get_v2_model_runner_unsupported_features()
    assert not vispec_config.use_v2_model_runner


@pytest.mark.slow
def test_a_vispec_engine_runs_the_v1_runner_and_the_plugins_proposer(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path
) -> None:
    """A real engine on this vLLM (0.32, or 0.33 in ``make test-vllm033``): vLLM's V1 CPU
    runner, the plugin's proposer, and drafts accepted on an image prompt."""
    from engines import chat, counters, engine, greedy
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_vispec.runners.v1.proposer import ViSpecProposer
    from vllm_vispec.tools.bench.offline import model_runner

    with engine(qwen_target, qwen_draft) as llm:
        assert not llm.llm_engine.vllm_config.use_v2_model_runner
        runner = model_runner(llm)
        assert isinstance(runner, CPUModelRunner) and isinstance(runner, GPUModelRunner)
        assert type(runner.drafter) is ViSpecProposer
        greedy(llm, [chat([(1, (224, 224))])], max_tokens=16)
        assert counters(llm)["vllm:spec_decode_num_accepted_tokens"] > 0


# --------------------------------------------------------------------------------------------
# Fresh interpreters


def test_register_is_lazy_and_idempotent_in_a_fresh_process(children: dict[str, _Child]) -> None:
    out = children["fresh"].result
    assert out["eagle_imported_by_register"] is False
    assert out["eagle_imported_after_repeat"] is False
    assert out["patch_modules"] == [
        f"{PATCHES}.startup_validation",
        f"{V1}.runner_selection",
    ]
    assert out["patches_unchanged"] is True
    lazy = sorted([EAGLE_MODULE, SAMPLER_TRIGGER, SCHEDULER_TRIGGER, *RUNNER_MODULES])
    assert out["pending_finders"] == lazy
    assert out["pending_finders_after_repeat"] == lazy
    assert out["register_model_calls"] == [DRAFT_ARCHITECTURE]
    assert out["registered"] is True


def test_eagle_proposer_is_patched_on_first_import(children: dict[str, _Child]) -> None:
    out = children["fresh"].result
    assert out["eagle_new_module"] == f"{V1}.proposer_selection"
    assert out["eagle_new_unchanged"] is True
    assert out["pending_finders_at_end"] == sorted([SCHEDULER_TRIGGER, *RUNNER_MODULES])
    assert out["scheduler_init_module"] == "vllm_vispec.goodput.scheduler"
    assert out["proposer_for"] == {
        "vispec": "ViSpecProposer",
        "vispec-trees": "ViSpecTreeProposer",
        "plain": "EagleProposer",
        "none": "EagleProposer",
    }
    assert out["load_model_wrapped"] is True  # to hook a tree engine once it has loaded
    assert out["vllm_methods_modules"] == [
        "vllm.v1.attention.backends.cpu_attn",
        "vllm.v1.worker.gpu_model_runner",
    ]


def test_unsupported_vllm_version_warns_once_and_registers_nothing(
    children: dict[str, _Child],
) -> None:
    child = children["wrong_version"]
    out = child.result
    warnings = [line for line in child.output.splitlines() if "NOT registered" in line]
    assert len(warnings) == 1, child.output[-4000:]
    assert "supports vLLM 0.32.x, 0.33.x and 0.34.x only" in warnings[0]
    assert "found vLLM 0.35.0" in warnings[0]
    assert out["registered"] is False
    assert out["create_engine_config"] == "EngineArgs.create_engine_config"
    assert out["finders"] == []


@pytest.mark.parametrize(
    ("version", "adapter"),
    [
        ("0.32.0", "v1"),
        ("0.32.0+cpu", "v1"),
        ("0.33.0", "v1"),
        ("0.33.1rc1.dev12+g0123abc", "v1"),
        ("0.34.0", "v2"),
        ("0.34.0+cpu", "v2"),
        ("0.35.0", None),
        ("0.31.2", None),
        ("0.3", None),
        ("1.32.0", None),
        ("unknown", None),
    ],
)
def test_supported_versions_map_to_a_runner_adapter(version: str, adapter: str | None) -> None:
    assert vllm_vispec.adapter_for(version) == adapter
    assert vllm_vispec.SUPPORTED_VLLM == ("0.32", "0.33", "0.34")


def test_the_installed_vllm_is_supported() -> None:
    """The venv running this suite has a vLLM the plugin registers under (0.32, 0.33 in
    ``make test-vllm033``, 0.34 in ``make test-vllm034``): the engine tests would otherwise
    run without the plugin."""
    import vllm

    assert vllm_vispec.adapter_for(vllm.__version__) is not None, vllm.__version__
