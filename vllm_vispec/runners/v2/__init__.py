"""The adapter to vLLM's V2 model runner (vLLM 0.34).

V2 lets a draft model name its speculator: the ViSpec draft class registered here declares
:class:`~vllm_vispec.runners.v2.config.ViSpecSpeculatorConfig`, so that ``"method": "eagle"``
with a ViSpec draft builds :class:`~vllm_vispec.runners.v2.speculator.ViSpecSpeculator`, a
subclass of vLLM's ``EagleSpeculator`` that hands the draft its images. No vLLM method is
replaced for that; the ledger section (:mod:`~vllm_vispec.runners.v2.ledger`) lists what the
adapter relies on. Chains only: trees are refused at start-up on V2 (``validation``).
"""

from __future__ import annotations

# The draft class vLLM's registry resolves for ViSpec drafts on this runner.
DRAFT_MODEL = "vllm_vispec.runners.v2.draft:EagleViSpecForCausalLM"

# For the goodput policy: a step of K = 0 still runs the draft's first pass (V2's EAGLE
# loop keeps the draft KV that way).
ZERO_STEP_DRAFTS = True


def install() -> None:
    """Apply the runner-neutral ledger section (idempotent; nothing of V2 is imported here)."""
    from vllm_vispec.patches import LEDGER, apply_ledger
    from vllm_vispec.runners.v2.ledger import LEDGER as V2_LEDGER

    apply_ledger(LEDGER + V2_LEDGER)
