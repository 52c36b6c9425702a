"""``vispec.goodput``: each step's K chosen from measured goodput, and never a changed output.

The policy alone (no engine): its settings, candidates and declared schedule; the cost fit and
acceptance estimates against known truths; and a simulated server whose load goes 1 -> 4 -> 16
-> 32 -> 1 requests, where the policy must keep up with the best fixed K of every phase
without flip-flopping. Then real engines: greedy output token-for-token that of plain decoding
while load changes inside one run and the policy changes K (vLLM's V1 runner on 0.32/0.33, V2 on
0.34); the sampled case (KS) is ``test_lossless``'s ``vispec-goodput-trees``.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from engines import counters, engine, toy_conversations
from vllm import SamplingParams

from vllm_vispec.goodput.policy import GoodputPolicy, StepCosts
from vllm_vispec.goodput.settings import (
    Candidate,
    GoodputSettings,
    candidates,
    declared_schedule,
    is_declared,
)
from vllm_vispec.settings import ViSpecSettings
from vllm_vispec.tree.settings import TreeSettings
from vllm_vispec.validation import ViSpecConfigError, _declare_goodput

TOY = pathlib.Path(__file__).resolve().parents[1] / "models" / "toy"


# -- settings, candidates, declared schedule ---------------------------------------------------


def test_settings_parse_and_refuse_with_the_fix() -> None:
    assert ViSpecSettings.from_dict({}).goodput is None
    assert ViSpecSettings.from_dict({"goodput": True}).goodput == GoodputSettings()
    parsed = ViSpecSettings.from_dict({"goodput": {"hysteresis": 0, "explore_every": 0}})
    assert parsed.goodput == GoodputSettings(0.0, 0)
    assert parsed.as_dict()["goodput"] == {"hysteresis": 0.0, "explore_every": 0}
    for bad, words in [
        ("yes", "expected true, false or an object"),
        ({"hysteresis": 1.5}, "hysteresis=1.5 must be a number in [0, 1)"),
        ({"explore_every": 2}, "explore_every=2 must be 0 (never) or an integer >= 4"),
        ({"speed": 1}, "fields hysteresis, explore_every"),
    ]:
        with pytest.raises(ValueError, match=None) as e:
            ViSpecSettings.from_dict({"goodput": bad})
        assert words in str(e.value) and "\n" not in str(e.value)


def test_candidates_cover_chains_trees_and_nothing() -> None:
    chains = candidates(4, None, zero_step_drafts=False)
    assert [(c.k, c.passes, c.tree) for c in chains] == [(k, k, False) for k in range(5)]
    # V2 keeps the draft's first pass at K = 0.
    assert candidates(4, None, zero_step_drafts=True)[0].draft_work(10, 2) == (1, 10)
    tree = TreeSettings(depth=2, top_k=4, chain=2)
    with_trees = candidates(12, tree, zero_step_drafts=False)
    assert [c.k for c in with_trees] == [*range(8), 8, 12]
    assert [c.label for c in with_trees[-2:]] == ["tree of 8", "tree of 12"]
    # A tree step: first pass over the verified tokens, then depth passes of top_k per request.
    assert with_trees[-1].draft_work(40, 4) == (3, 40 + 2 * 4 * 4)
    schedule = declared_schedule(with_trees)
    assert schedule[0] == [1, 1, 0] and schedule[-1] == [10, 10, 12]
    assert is_declared([tuple(e) for e in schedule], with_trees)
    assert not is_declared([(1, 64, 3)], with_trees) and not is_declared(None, with_trees)


def test_a_users_schedule_wins_and_goodput_is_declared_otherwise() -> None:
    spec = {"method": "eagle", "model": "draft", "num_speculative_tokens": 3}
    on = {"vispec": {"goodput": True}}
    declared = _declare_goodput(spec, on)["num_speculative_tokens_per_batch_size"]
    assert [entry[2] for entry in declared] == [0, 1, 2, 3]
    own = {**spec, "num_speculative_tokens_per_batch_size": [[1, 64, 2]]}
    assert _declare_goodput(own, on) is own
    assert _declare_goodput(spec, {"vispec": {}}) is spec
    with pytest.raises(ViSpecConfigError, match="hysteresis"):
        _declare_goodput(spec, {"vispec": {"goodput": {"hysteresis": -1}}})


# -- the estimates -----------------------------------------------------------------------------


def test_step_costs_recover_the_draft_terms_from_explored_steps() -> None:
    """Known costs, K varied as exploration varies it: the fit finds the draft's own terms,
    not the prior's, within a few percent."""
    truth = np.array([8e-3, 2e-4, 1.5e-3, 5e-5])
    costs = StepCosts(draft_ratio=0.3)
    rng = np.random.default_rng(0)
    for _ in range(256):
        b = int(rng.integers(1, 33))
        k = int(rng.choice([0, 2, 3], p=[0.1, 0.1, 0.8]))
        c = Candidate(k, k, 1)
        tokens = b * (1 + k)
        work = (1.0, tokens, *c.draft_work(tokens, b))
        costs.add(tokens, *c.draft_work(tokens, b), float(truth @ work) * rng.normal(1, 0.02))
    costs.fit()
    np.testing.assert_allclose(costs.coef[:4], truth, rtol=0.15)


def test_acceptance_rates_follow_verified_chains() -> None:
    policy = GoodputPolicy(candidates(4, None, False), GoodputSettings(), 0.1)
    rng = np.random.default_rng(1)
    for _ in range(200):
        policy.observe_verified(4, _accepted(rng, 0.8, 4, 8))
    np.testing.assert_allclose(policy.acceptance.rates(), 0.8, atol=0.05)


def _accepted(rng: np.random.Generator, rate: float, k: int, n: int) -> list[int]:
    """Accepted lengths of ``n`` chains of ``k`` whose positions pass with ``rate`` each."""
    return [int(np.argmin(np.append(rng.random(k) < rate, False))) for _ in range(n)]


# -- a simulated server --------------------------------------------------------------------------


class Server:
    """A target whose step costs ``c0 + c1 tokens`` plus the draft's ``g0 passes + g1 tokens``
    (noisy), with chains accepted position by position with ``rate``."""

    def __init__(self, rate: float, seed: int = 0) -> None:
        self.coef = np.array([10e-3, 0.5e-3, 1.0e-3, 0.02e-3])
        self.rate = rate
        self.rng = np.random.default_rng(seed)

    def seconds(self, c: Candidate, verified: int, num_reqs: int) -> float:
        work = np.array([1.0, verified, *c.draft_work(verified, num_reqs)])
        return float(self.coef @ work)

    def fixed_goodput(self, c: Candidate, num_reqs: int) -> float:
        tokens = 1 + sum(self.rate**i for i in range(1, c.k + 1))
        return num_reqs * tokens / self.seconds(c, num_reqs * (1 + c.k), num_reqs)

    def run(self, policy: GoodputPolicy, num_reqs: int, steps: int) -> float:
        """Steps of ``num_reqs`` requests under ``policy``; goodput of the last half."""
        drafted = self.previous
        tokens = seconds = 0.0
        for step in range(steps):
            k = policy.k_for(num_reqs)
            c = policy.by_k[k]
            verified = num_reqs * (1 + drafted)
            took = self.seconds(c, verified, num_reqs) * self.rng.normal(1, 0.05)
            accepted = _accepted(self.rng, self.rate, drafted, num_reqs) if drafted else []
            policy.observe_step(verified, num_reqs, k, took)
            if drafted:
                policy.observe_verified(drafted, accepted)
            policy.end_step()
            if step >= steps // 2:
                tokens += num_reqs + sum(accepted)
                seconds += took
            drafted = k
        self.previous = drafted
        return tokens / seconds

    previous = 0


def test_goodput_keeps_up_with_the_best_fixed_k_as_load_changes() -> None:
    """Load 1 -> 4 -> 16 -> 32 -> 1 requests: every phase within 5% of its best fixed K (which
    moves from 3-4 to 0 here), and the choice does not flip-flop."""
    server = Server(rate=0.7)
    cands = candidates(4, None, zero_step_drafts=False)
    policy = GoodputPolicy(cands, GoodputSettings(), draft_ratio=0.05)
    best_ks = []
    for num_reqs in (1, 4, 16, 32, 1):
        got = server.run(policy, num_reqs, 600)
        fixed = {c.k: server.fixed_goodput(c, num_reqs) for c in cands}
        best_ks.append(max(fixed, key=fixed.get))
        assert got >= 0.95 * max(fixed.values()), (num_reqs, got, fixed, dict(policy.counts))
    assert best_ks[0] >= 3 and best_ks[3] == 0
    assert policy.switches <= 12, policy.switches
    table = {b: c.k for b, c, _ in policy.table([1, 32])}
    assert table[1] >= 3 and table[32] == 0, table


def test_hysteresis_holds_a_choice_against_noise() -> None:
    """Two K that are worth the same: noisy steps never make the policy alternate."""
    server = Server(rate=0.5, seed=3)
    server.coef = np.array([10e-3, 0.5e-3, 0.5e-3, 0.0])
    policy = GoodputPolicy(candidates(2, None, False), GoodputSettings(), draft_ratio=0.05)
    server.run(policy, 8, 2000)
    assert policy.switches <= 2, policy.switches


# -- real engines ------------------------------------------------------------------------------


def test_goodput_is_lossless_while_load_and_k_change() -> None:
    """The toy world's trained target and draft, 12 requests of 8 to 74 tokens through 8 seats:
    the batch fills, then drains to one request, and the policy (no hysteresis, a neighbour
    tried every 4 steps) drafts several K within the run. Greedy tokens equal plain decoding's;
    drafts were accepted; the policy saw exactly the verifications vLLM counted."""
    conversations = toy_conversations(12)
    params = [SamplingParams(temperature=0, max_tokens=8 + 6 * i) for i in range(12)]
    with engine(TOY / "target", max_num_seqs=8) as llm:
        expected = [list(o.outputs[0].token_ids) for o in llm.chat(conversations, params)]
    eager = {"goodput": {"hysteresis": 0.0, "explore_every": 4}}
    with engine(TOY / "target", TOY / "vispec", k=4, vispec=eager, max_num_seqs=8) as llm:
        before = counters(llm)
        got = [list(o.outputs[0].token_ids) for o in llm.chat(conversations, params)]
        after = counters(llm)
        policy = llm.llm_engine.engine_core.engine_core.scheduler.vispec_goodput
    assert got == expected
    accepted = "vllm:spec_decode_num_accepted_tokens"
    assert after[accepted] - before.get(accepted, 0) > 50
    # The policy saw every verification vLLM counted (its acceptance estimates rest on them).
    drafts = after["vllm:spec_decode_num_drafts"] - before.get("vllm:spec_decode_num_drafts", 0)
    assert policy.acceptance.drafts == drafts
    assert policy.acceptance.accepted_tokens == after[accepted] - before.get(accepted, 0)
    assert len([k for k, n in policy.counts.items() if n]) >= 3, policy.counts
    assert policy.explored > 0 and policy.costs.measured > 20
