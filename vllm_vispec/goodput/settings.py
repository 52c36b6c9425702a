"""``vispec.goodput``: which drafts a step may choose from, and how eagerly it changes them.

``false`` or absent: every step drafts vLLM's K (``num_speculative_tokens``, or the K of a
``num_speculative_tokens_per_batch_size`` schedule). ``true`` or an object of the fields below:
each step's K comes from :class:`~vllm_vispec.goodput.policy.GoodputPolicy` among the
*candidates*: no draft, chains of 1 to ``num_speculative_tokens`` tokens (at most 8) and, with
``vispec.tree``, trees of ``num_speculative_tokens`` nodes and of ``depth x top_k`` nodes.

* ``hysteresis`` (0.05): a batch size changes its K only for a predicted goodput this much higher
  than its current K's, so that steps keep their shape (and GPU graphs are reused).
* ``explore_every`` (64): every this many steps of a batch size, one step drafts a neighbouring
  candidate so that the cost of a draft pass stays measured; 0 never explores.

The candidates reach vLLM as a batch-size schedule (:func:`declared_schedule`), vLLM's own
switch for "K changes at run time" (piecewise CUDA graphs on V1, one graph per K on V2, no
dynamic K under data parallelism). A schedule the user gives wins: goodput then stays off.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from vllm_vispec.settings import setting

if TYPE_CHECKING:
    from vllm_vispec.tree.settings import TreeSettings

GOODPUT_SETTING = setting("goodput")
MAX_CHAIN = 8  # the longest chain a step may choose (validation's MAX_SPECULATIVE_TOKENS)


@dataclasses.dataclass(frozen=True)
class GoodputSettings:
    hysteresis: float = 0.05
    explore_every: int = 64

    @classmethod
    def parse(cls, value: object) -> GoodputSettings | None:
        """The setting's value (``true``, ``false`` or an object); ValueError with the fix."""
        if value is False:
            return None
        if value is True:
            return cls()
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(value, dict) or not set(value) <= set(fields):
            raise ValueError(
                f"{GOODPUT_SETTING}={value!r}: expected true, false or an object with fields "
                f'{", ".join(fields)} (e.g. {{"hysteresis": 0.1, "explore_every": 64}})'
            )
        h = value.get("hysteresis", cls.hysteresis)
        if isinstance(h, bool) or not isinstance(h, int | float) or not 0 <= h < 1:
            raise ValueError(f"{GOODPUT_SETTING}.hysteresis={h!r} must be a number in [0, 1)")
        e = value.get("explore_every", cls.explore_every)
        if isinstance(e, bool) or not isinstance(e, int) or e < 0 or 0 < e < 4:
            raise ValueError(
                f"{GOODPUT_SETTING}.explore_every={e!r} must be 0 (never) or an integer >= 4"
            )
        return cls(float(h), e)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One shape a step may draft: vLLM's ``k`` and the draft work it costs."""

    k: int
    passes: int  # draft passes of the step: the first over the step's tokens, then one per level
    width: int  # tokens per request in each pass after the first: 1 (chain) or top_k (tree)
    tree: bool = False

    def draft_work(self, num_tokens: int, num_reqs: int) -> tuple[int, int]:
        """(draft passes, draft tokens) of a step that verifies ``num_tokens`` target tokens."""
        if self.passes == 0:
            return 0, 0
        return self.passes, num_tokens + (self.passes - 1) * self.width * num_reqs

    @property
    def label(self) -> str:
        return f"tree of {self.k}" if self.tree else f"chain of {self.k}" if self.k else "none"


def candidates(
    num_speculative_tokens: int, tree: TreeSettings | None, zero_step_drafts: bool
) -> tuple[Candidate, ...]:
    """Every K a step may choose, in increasing order. ``zero_step_drafts``: the runner still
    runs the draft's first pass at K = 0 (vLLM 0.34's V2 runner keeps the draft KV that way)."""
    longest = min(num_speculative_tokens, MAX_CHAIN)
    if tree is not None:
        longest = min(longest, tree.min_nodes - 1)
    out = [Candidate(0, int(zero_step_drafts), 1)]
    out += [Candidate(k, k, 1) for k in range(1, longest + 1)]
    if tree is not None:
        for k in sorted({tree.min_nodes, num_speculative_tokens}):
            try:
                tree.check(k)
            except ValueError:
                continue
            out.append(Candidate(k, tree.depth + 1, tree.top_k, tree=True))
    return tuple(out)


def declared_schedule(cands: tuple[Candidate, ...]) -> list[list[int]]:
    """The batch-size schedule that tells vLLM which K a step may have: one batch size per
    candidate, so that vLLM's dense lookup (and V2's graph capture) holds every candidate K. The
    plugin's scheduler lookup answers in its place (:mod:`vllm_vispec.goodput.scheduler`)."""
    return [[i + 1, i + 1, c.k] for i, c in enumerate(cands)]


def is_declared(schedule: object, cands: tuple[Candidate, ...]) -> bool:
    """True when an engine's batch-size schedule is the one declared for ``cands`` (vLLM keeps
    it as tuples), i.e. the user gave none of their own."""
    if not isinstance(schedule, list | tuple):
        return False
    return [list(entry) for entry in schedule] == declared_schedule(cands)
