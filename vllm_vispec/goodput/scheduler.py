"""The goodput policy inside vLLM's scheduler (ledger patch ``goodput.scheduler``).

The scheduler is where vLLM picks a step's K (``dynamic_sd_lookup[batch size]``, the dense
table of ``num_speculative_tokens_per_batch_size``) and where every step's output comes back, so
the policy lives there, once per engine: every tensor-parallel rank gets the same K through the
scheduler output, and either runner adapter is served. With ``vispec.goodput`` on, the
scheduler's lookup becomes :class:`PolicyLookup` and its ``update_from_output`` (of that one
scheduler object) also feeds the policy the step's wall time and what verification accepted.
Any other engine is left exactly as vLLM built it.
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vllm.logger import init_logger

from vllm_vispec import adapter_for
from vllm_vispec.goodput.policy import MIN_FIT_STEPS, GoodputPolicy
from vllm_vispec.goodput.settings import (
    GOODPUT_SETTING,
    Candidate,
    candidates,
    is_declared,
)
from vllm_vispec.settings import vispec_settings

if TYPE_CHECKING:
    from vllm_vispec.tree.settings import TreeSettings

logger = init_logger(f"vllm.{__name__}")

# A gap this many typical steps long was the engine waiting, not stepping (a safety net: the
# clock restarts whenever the engine runs out of requests, and empty steps are not timed).
IDLE_FACTOR = 100.0
TABLE_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def apply(module: ModuleType) -> None:
    init = module.Scheduler.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        attach(self)

    module.Scheduler.__init__ = __init__


class PolicyLookup:
    """Stands in for vLLM's dense ``batch size -> K`` list: asks the policy instead."""

    def __init__(self, policy: GoodputPolicy) -> None:
        self.policy = policy

    def __getitem__(self, num_reqs: int) -> int:
        return self.policy.k_for(num_reqs)


def attach(scheduler: Any) -> None:
    """Give ``scheduler`` the goodput policy if its engine asks for one."""
    config = scheduler.vllm_config
    spec = config.speculative_config
    if spec is None or scheduler.dynamic_sd_lookup is None:
        return
    from vllm_vispec.validation import is_vispec_draft

    if not is_vispec_draft(spec):
        return
    settings = vispec_settings(config)
    if settings.goodput is None:
        return
    cands = goodput_candidates(config)
    if not is_declared(spec.num_speculative_tokens_per_batch_size, cands):
        return  # the user's own schedule (validation said so at start-up)
    policy = GoodputPolicy(cands, settings.goodput, _draft_ratio(config))
    scheduler.dynamic_sd_lookup = PolicyLookup(policy)
    scheduler.vispec_goodput = policy
    _measure(scheduler, policy)
    logger.info(
        "ViSpec %s: each step's K from measured goodput among %s (hysteresis %d%%, a "
        "neighbouring K tried every %s steps); start (before any step is measured): %s",
        GOODPUT_SETTING,
        ", ".join(c.label for c in cands),
        round(100 * settings.goodput.hysteresis),
        settings.goodput.explore_every or "no",
        describe(policy, config.scheduler_config.max_num_seqs),
    )


def goodput_candidates(config: Any) -> tuple[Candidate, ...]:
    """The candidates of a built engine config."""
    tree = vispec_settings(config).tree
    return engine_candidates(config.speculative_config.num_speculative_tokens, tree)


def engine_candidates(
    num_speculative_tokens: int, tree: TreeSettings | None
) -> tuple[Candidate, ...]:
    """The candidates on the installed vLLM's runner (the same at config time and in the
    scheduler, which compares the declared schedule with them)."""
    import vllm

    runner = importlib.import_module(f"vllm_vispec.runners.{adapter_for(vllm.__version__)}")
    return candidates(num_speculative_tokens, tree, runner.ZERO_STEP_DRAFTS)


def describe(policy: GoodputPolicy, max_num_seqs: int) -> str:
    """The decision table: ``batch 1: chain of 3 (1.90x K=0), ...``: each batch size's current
    choice (the predicted best where none is made yet) and its predicted goodput over K = 0."""
    sizes = [b for b in TABLE_BATCH_SIZES if b <= max_num_seqs]
    return ", ".join(
        f"batch {b}: {c.label} ({gain:.2f}x K=0)" for b, c, gain in policy.table(sizes)
    )


def _draft_ratio(config: Any) -> float:
    """The draft's share of a step's weights: its layers over the target's."""
    target = config.model_config.hf_config.get_text_config().num_hidden_layers
    draft = config.speculative_config.draft_model_config.hf_config.num_hidden_layers
    return min(max(draft / max(target, 1), 0.02), 1.0)


def _measure(scheduler: Any, policy: GoodputPolicy) -> None:
    """Wrap this scheduler's ``update_from_output``: each step's wall time (from the previous
    step's output to this one's) and the drafts it verified go to the policy."""
    update = scheduler.update_from_output
    last: list[float | None] = [None]
    logged = [0]

    def update_from_output(scheduler_output: Any, model_runner_output: Any) -> Any:
        # Before vLLM's update, which trims a finishing request's tokens in place.
        _verified(policy, scheduler_output, model_runner_output)
        outputs = update(scheduler_output, model_runner_output)
        now = time.perf_counter()
        previous, last[0] = last[0], now
        if previous is not None and scheduler_output.total_num_scheduled_tokens:
            seconds = now - previous
            early = policy.costs.measured < MIN_FIT_STEPS
            if early or seconds < IDLE_FACTOR * policy.costs.typical():
                policy.observe_step(
                    scheduler_output.total_num_scheduled_tokens,
                    len(scheduler_output.num_scheduled_tokens),
                    scheduler_output.num_spec_tokens_to_schedule,
                    seconds,
                    sum(map(len, scheduler_output.scheduled_encoder_inputs.values())),
                )
        policy.end_step()
        if not scheduler.has_unfinished_requests():
            last[0] = None  # the next step follows a wait
        if policy.switches != logged[0]:
            logged[0] = policy.switches
            logger.info(
                "ViSpec %s: now %s; steps per K so far %s (%d tries of a neighbouring K)",
                GOODPUT_SETTING,
                describe(policy, scheduler.vllm_config.scheduler_config.max_num_seqs),
                dict(sorted(policy.counts.items())),
                policy.explored,
            )
        return outputs

    scheduler.update_from_output = update_from_output


def _verified(policy: GoodputPolicy, scheduler_output: Any, model_runner_output: Any) -> None:
    """What verification accepted of each request's drafts in this step, by draft length."""
    drafts = scheduler_output.scheduled_spec_decode_tokens
    if not drafts:
        return
    by_k: dict[int, list[int]] = {}
    for req_id, sampled in zip(
        model_runner_output.req_ids, model_runner_output.sampled_token_ids, strict=False
    ):
        k = len(drafts.get(req_id) or ())
        if k and len(sampled):
            by_k.setdefault(k, []).append(len(sampled) - 1)
    for k, accepted in by_k.items():
        policy.observe_verified(k, accepted)
