"""The adapter to vLLM's V1 model runner (vLLM 0.32 and 0.33).

Everything that touches V1's runner, its ``EagleProposer``, input batch or sampling metadata is
here: the proposers (chains, trees), the hooks that verify trees in the runner and the target's
attention, the patches that route ViSpec drafts to V1 and build its proposer, and the ledger
section (:mod:`~vllm_vispec.runners.v1.ledger`) that the upgrade guard checks.
"""

from __future__ import annotations

# The draft class vLLM's registry resolves for ViSpec drafts on this runner.
DRAFT_MODEL = "vllm_vispec.draft.model:EagleViSpecForCausalLM"

# For the goodput policy: a step of K = 0 runs no draft pass (its rows wait in SkippedRows).
ZERO_STEP_DRAFTS = False


def install() -> None:
    """Apply the V1 section of the ledger (idempotent; no V1 module is imported here)."""
    from vllm_vispec.patches import LEDGER, apply_ledger
    from vllm_vispec.runners.v1.ledger import LEDGER as V1_LEDGER

    apply_ledger(LEDGER + V1_LEDGER)
