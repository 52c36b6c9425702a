"""Choose each step's draft from measured goodput: expected tokens per second of the batch.

For a step of ``B`` requests and a candidate draft ``c`` (:class:`Candidate`), in steady state
the target verifies ``B (1 + K)`` tokens, the draft runs ``c``'s passes, and each request gains
``E[tokens | c]`` tokens, so goodput is ``B E[tokens | c] / seconds(c, B)`` (SmartSpec's
criterion, arXiv 2406.14066, here per batch size rather than per request). Both factors are
measured while the engine serves:

* :class:`StepCosts`: step seconds as ``c0 + c1 tokens + g0 draft passes + g1 draft tokens +
  e images encoded``, least squares over the recent steps (prefill steps, which run the image
  encoder, tell the cost of a token at large batches before any large batch ran). While K
  rarely changes the draft's terms cannot be told from the target's, so they are pulled toward
  ``draft_ratio`` times the target's (the draft's share of the weights); the policy's
  occasional single-step tries of a neighbouring K give the data that overrules that prior.
* :class:`Acceptance`: chains, the probability that draft position ``i`` is accepted once the
  ones before it were; trees, the tokens a verified tree gives. Both decay, so a change of
  content or load is followed within a few hundred steps.

Batch sizes are grouped in powers of two; each group keeps its K until another promises
``hysteresis`` more goodput. Nothing here imports vLLM: the scheduler glue is
:mod:`vllm_vispec.goodput.scheduler`.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from vllm_vispec.goodput.settings import Candidate, GoodputSettings

PRIOR_ACCEPTANCE = 0.6  # a trained draft's per-position acceptance before any is measured
PRIOR_WEIGHT = 4.0  # ... worth this many verified drafts
TREE_PRIOR_GAIN = 1.15  # a tree's tokens before measured: a chain of its depth's, times this
DECAY = 0.995  # per step: acceptance counts halve in ~140 steps
KNEE_TOKENS = 64  # prior cost of one more verified token: a 64th of a step's fixed cost
MIN_FIT_STEPS = 24  # measured steps before the fit replaces the prior (5 coefficients)
TOKEN_PRIOR_STEPS = 64.0  # weight of "a draft token costs ratio x a target token"


class StepCosts:
    """Step seconds as a linear function of the step's work, fitted to the last ``window``
    measured steps; the draft's two coefficients are pulled toward ``draft_ratio`` x the
    target's with the weight of ``prior_steps`` steps."""

    def __init__(self, draft_ratio: float, window: int = 256, prior_steps: float = 8.0) -> None:
        self.ratio = draft_ratio
        self.prior_steps = prior_steps
        self.rows = np.zeros((window, 5))
        self.seconds = np.zeros(window)
        self.count = 0
        # Before any step is measured: relative units (only ratios of goodput matter).
        self.coef = np.array([1.0, 1 / KNEE_TOKENS, draft_ratio, draft_ratio / KNEE_TOKENS, 0.0])

    def add(
        self, tokens: int, passes: int, draft_tokens: int, seconds: float, images: int = 0
    ) -> None:
        i = self.count % len(self.seconds)
        self.rows[i] = (1.0, tokens, passes, draft_tokens, images)
        self.seconds[i] = seconds
        self.count += 1

    @property
    def measured(self) -> int:
        return min(self.count, len(self.seconds))

    def fit(self) -> None:
        """Least squares of relative errors (each row weighted by 1 / its seconds), so that a
        long prefill step weighs as much as a decoding step, not hundreds of times more."""
        n = self.measured
        if n < MIN_FIT_STEPS:
            return
        x, y = self.rows[:n], self.seconds[:n]
        weight = 1.0 / np.maximum(y, 1e-9)
        tokens, typical = float(np.median(x[:, 1])), float(np.median(y))
        # Pseudo-steps saying "a draft pass costs ratio x a target step's fixed cost, a draft
        # token ratio x a target token", in units of a typical step. The second is held
        # firmly: draft tokens grow with target tokens, so data hardly tells them apart, while
        # a pass's fixed cost (host work, on small machines the most of it) shows whenever K
        # changes at a given batch size.
        prior = np.array(
            [
                [-self.ratio, 0.0, 1.0, 0.0, 0.0],
                [0.0, -self.ratio * tokens, 0.0, tokens, 0.0],
            ]
        ) * (np.sqrt([[self.prior_steps], [TOKEN_PRIOR_STEPS]]) / typical)
        a = np.vstack([x * weight[:, None], prior])
        coef, *_ = np.linalg.lstsq(a, np.concatenate([y * weight, [0.0, 0.0]]), rcond=None)
        self.coef = np.maximum(coef, 0.0)

    def predict(self, tokens: float, passes: float, draft_tokens: float) -> float:
        """Seconds of a decoding step (no image encoded)."""
        return float(self.coef[:4] @ (1.0, tokens, passes, draft_tokens)) or 1e-9

    def typical(self) -> float:
        """The median measured step (seconds), for telling idle gaps from steps."""
        n = self.measured
        return float(np.median(self.seconds[:n])) if n else float("inf")


class Acceptance:
    """Decayed counts of what verification accepted: per chain position, and per tree size."""

    def __init__(self, max_chain: int) -> None:
        self.reached = np.zeros(max_chain)
        self.accepted = np.zeros(max_chain)
        self.tree = collections.defaultdict(lambda: np.zeros(2))  # k -> (tokens, verified)
        self.drafts = 0  # totals, never decayed: what vLLM's spec-decode counters count
        self.accepted_tokens = 0

    def add(self, k: int, num_accepted: Sequence[int], tree: bool) -> None:
        """Verified drafts of ``k`` tokens (or tree nodes) that kept ``num_accepted`` each."""
        n = np.asarray(num_accepted)
        self.drafts += len(n)
        self.accepted_tokens += int(n.sum())
        if tree:
            self.tree[k] += (float((n + 1).sum()), len(n))
            return
        positions = np.arange(min(k, len(self.reached)))
        self.reached[positions] += (positions[:, None] <= n[None, :]).sum(1)
        self.accepted[positions] += (positions[:, None] < n[None, :]).sum(1)

    def decay(self) -> None:
        self.reached *= DECAY
        self.accepted *= DECAY
        for stats in self.tree.values():
            stats *= DECAY

    def rates(self) -> np.ndarray:
        """Per position, P(accepted | the ones before accepted); an unmeasured position takes
        the rate of the one before as its prior."""
        out = np.empty_like(self.reached)
        prior = PRIOR_ACCEPTANCE
        for i in range(len(out)):
            out[i] = (self.accepted[i] + PRIOR_WEIGHT * prior) / (self.reached[i] + PRIOR_WEIGHT)
            prior = out[i]
        return out

    def tokens(self, c: Candidate, rates: np.ndarray) -> float:
        """Expected tokens a request gains from a step that drafts ``c``."""
        if not c.tree:
            return 1.0 + float(np.cumprod(rates[: c.k]).sum())
        chain = 1.0 + float(np.cumprod(rates[: c.passes]).sum())
        total, verified = self.tree[c.k]
        return (total + PRIOR_WEIGHT * TREE_PRIOR_GAIN * chain) / (verified + PRIOR_WEIGHT)


class GoodputPolicy:
    """The K of each step, per group of batch sizes (powers of two), with hysteresis."""

    DECIDE_EVERY = 16  # a group's steps between re-decisions

    def __init__(
        self, cands: Sequence[Candidate], settings: GoodputSettings, draft_ratio: float
    ) -> None:
        self.candidates = tuple(cands)
        self.by_k = {c.k: c for c in self.candidates}
        self.settings = settings
        self.costs = StepCosts(draft_ratio)
        self.acceptance = Acceptance(max(c.k for c in self.candidates if not c.tree))
        self.current: dict[int, int] = {}  # group -> index into candidates
        self.steps: collections.Counter[int] = collections.Counter()  # group -> steps
        self.counts: collections.Counter[int] = collections.Counter()  # K -> steps
        self.explored = 0
        self.switches = 0

    # -- choosing -----------------------------------------------------------------------------

    def k_for(self, num_reqs: int) -> int:
        """The K of a step of ``num_reqs`` requests (each call counts as one step)."""
        group = num_reqs.bit_length()
        seen = self.steps[group]
        self.steps[group] += 1
        if group not in self.current or seen % self.DECIDE_EVERY == 0:
            self._decide(group, num_reqs)
        index = self.current[group]
        every = self.settings.explore_every
        if every and seen % every == every - 1:
            index = self._neighbour(index, seen // every)
            self.explored += 1
        k = self.candidates[index].k
        self.counts[k] += 1
        return k

    def goodput(self, c: Candidate, num_reqs: int, rates: np.ndarray | None = None) -> float:
        """Predicted tokens per second of a batch of ``num_reqs`` decoding requests under ``c``."""
        rates = self.acceptance.rates() if rates is None else rates
        tokens = num_reqs * (1 + c.k)
        seconds = self.costs.predict(tokens, *c.draft_work(tokens, num_reqs))
        return num_reqs * self.acceptance.tokens(c, rates) / seconds

    def _decide(self, group: int, num_reqs: int) -> None:
        rates = self.acceptance.rates()
        scores = [self.goodput(c, num_reqs, rates) for c in self.candidates]
        best = int(np.argmax(scores))
        current = self.current.get(group)
        if current is None:
            self.current[group] = best
        elif best != current and scores[best] > (1 + self.settings.hysteresis) * scores[current]:
            self.current[group] = best
            self.switches += 1

    def _neighbour(self, index: int, turn: int) -> int:
        """The candidate next to ``index``, below and above in turns."""
        step = -1 if turn % 2 == 0 else 1
        if not 0 <= index + step < len(self.candidates):
            step = -step
        return min(max(index + step, 0), len(self.candidates) - 1)

    # -- measuring ----------------------------------------------------------------------------

    def observe_step(
        self, tokens: int, num_reqs: int, k: int, seconds: float, images: int = 0
    ) -> None:
        """A measured step: ``tokens`` run for ``num_reqs`` requests, drafting ``k``, after
        encoding ``images`` images."""
        c = self.by_k.get(k)
        if c is None:
            return
        self.costs.add(tokens, *c.draft_work(tokens, num_reqs), seconds, images)
        if self.costs.count % self.DECIDE_EVERY == 0:
            self.costs.fit()

    def observe_verified(self, k: int, num_accepted: Sequence[int]) -> None:
        """Drafts of ``k`` tokens (tree nodes if ``k`` is a tree candidate) and what each kept."""
        c = self.by_k.get(k)
        if c is None and k > len(self.acceptance.reached):
            return  # a tree cut short by max_model_len: neither a chain nor a candidate's tree
        self.acceptance.add(k, num_accepted, c is not None and c.tree)

    def end_step(self) -> None:
        self.acceptance.decay()

    # -- reporting ----------------------------------------------------------------------------

    def table(self, batch_sizes: Sequence[int]) -> list[tuple[int, Candidate, float]]:
        """(batch size, its group's candidate, predicted goodput over K = 0's): the group's
        current choice, or the predicted best for a group that has not stepped yet."""
        rates = self.acceptance.rates()
        rows = []
        for b in batch_sizes:
            scores = [self.goodput(c, b, rates) for c in self.candidates]
            chosen = self.current.get(b.bit_length(), int(np.argmax(scores)))
            rows.append((b, self.candidates[chosen], scores[chosen] / scores[0]))
        return rows
