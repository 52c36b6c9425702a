"""Tree drafting and tree verification (``vispec.tree``) never change what the target says.

Pure parts first (seconds): the tree walk against a brute-force enumeration of root-to-node
paths, ancestor rows and depths, the EAGLE-2 expansion's choice of nodes. Then real engines:
greedy token identity with no speculation for mixed batches (0/1/2 images) on an M-RoPE and a
1-D-position target and with the attention that skips unseen slots, prefill chunks splitting
images, prefix-cache hits, preemption, trees and chains in one batch; the target's committed KV
equal to a run without speculation; and temperature-1 draws from the target's distribution.
Every engine case checks that trees were drafted and some of their nodes accepted.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch
from engines import (
    MIXED_BATCH,
    committed_kv,
    counters,
    engine,
    greedy,
    models,
    output_tokens,
    plain_greedy,
    toy_conversations,
)
from test_lossless import _sampled_pit
from vllm import SamplingParams
from vllm_vispec.kernels.tree import ancestor_masks

from vllm_vispec.settings import ViSpecSettings
from vllm_vispec.tools.bench.offline import drafter, model_runner
from vllm_vispec.tree.expand import Expansion
from vllm_vispec.tree.settings import TreeSettings
from vllm_vispec.tree.walk import node_depths, walk_tree

TOY = pathlib.Path(__file__).resolve().parents[1] / "models" / "toy"
# Trees at every batch size (the default budget would draft chains past 2 requests).
ALWAYS = True  # trees of num_speculative_tokens nodes at every step


def _random_tree(rng: np.random.Generator, n: int, vocab: int) -> tuple[list[int], list[int]]:
    """Parents (root first, topological) and node tokens, distinct among siblings."""
    parents, tokens = [-1], [0]
    for i in range(1, n):
        p = int(rng.integers(0, i))
        used = {tokens[c] for c in range(1, i) if parents[c] == p}
        free = [t for t in range(vocab) if t not in used]
        if not free:
            break
        parents.append(p)
        tokens.append(int(rng.choice(free)))
    return parents, tokens


def _brute_force_walk(parents, tokens, picks) -> tuple[list[int], list[int]]:
    """The deepest node whose every edge matches the target's pick at its parent."""
    best = [0]
    for v in range(len(parents)):
        path = [v]
        while parents[path[0]] >= 0:
            path.insert(0, parents[path[0]])
        if all(picks[a] == tokens[b] for a, b in zip(path, path[1:], strict=False)):
            if len(path) > len(best):
                best = path
    out = [tokens[best[i + 1]] for i in range(len(best) - 1)] + [picks[best[-1]]]
    return out, best


def test_walk_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, vocab = int(rng.integers(1, 12)), int(rng.integers(2, 5))
        trees = [_random_tree(rng, n, vocab) for _ in range(3)]
        width = max(len(p) for p, _ in trees)
        par = torch.full((3, width), -1)
        tok = torch.zeros(3, width, dtype=torch.long)
        picks = torch.from_numpy(rng.integers(0, vocab, (3, width)))
        for r, (p, t) in enumerate(trees):
            par[r, : len(p)], tok[r, : len(t)] = torch.tensor(p), torch.tensor(t)
        out, path = walk_tree(par, tok, torch.tensor([len(p) for p, _ in trees]), picks)
        for r, (p, t) in enumerate(trees):
            want_out, want_path = _brute_force_walk(p, t, picks[r].tolist())
            got = out[r][out[r] >= 0].tolist(), path[r][path[r] >= 0].tolist()
            assert got == (want_out, want_path)


def test_ancestor_rows_and_depths() -> None:
    rng = np.random.default_rng(1)
    parents, _ = _random_tree(rng, 64, 64)
    masks = ancestor_masks(torch.tensor([parents]))[0].tolist()
    depths = node_depths(torch.tensor([parents]))[0].tolist()
    for v in range(len(parents)):
        chain, u = {v}, v
        while parents[u] >= 0:
            u = parents[u]
            chain.add(u)
        assert {j for j in range(64) if (masks[v] >> j) & 1} == chain
        assert depths[v] == len(chain) - 1


def test_expansion_keeps_the_best_candidates_depth_first() -> None:
    """The chosen nodes are the best by cumulative log-probability, closed under parents, each
    after its parent, siblings best first; frontier rows mark exactly their forwarded ancestors."""
    torch.manual_seed(0)
    k, depth, n, vocab = 3, 3, 10, 16
    table = torch.randn(vocab, vocab).log_softmax(-1)  # a "draft": next log-probs per token
    root = torch.randn(2, vocab).log_softmax(-1)
    e = Expansion(root, k)
    for _ in range(depth):
        tokens, masks = e.next_pass()
        for b in range(2):
            for f in range(k):
                ancestors = {int(s) for s in range(64) if (int(masks[b, f]) >> s) & 1}
                assert len(ancestors) == e.passes + 1  # itself and one per earlier pass
        e.grow(table[tokens.reshape(-1)])
    tokens, parents, sizes = e.select(n)
    assert sizes.tolist() == [n, n]
    scores = torch.cat(e.scores, 1)
    for b in range(2):
        assert all(parents[b, i] < i for i in range(1, n + 1))
        # Cumulative score of each chosen node, recomputed along its path.
        chosen = []
        for i in range(1, n + 1):
            u, path = i, []
            while u > 0:
                path.insert(0, tokens[b, u - 1])
                u = parents[b, u]
            steps = zip(path, path[1:], strict=False)
            chosen.append(float(root[b, path[0]]) + sum(float(table[a, c]) for a, c in steps))
        best = torch.sort(scores[b], descending=True).values[:n]
        assert sorted(chosen, reverse=True) == pytest.approx(best.tolist(), abs=1e-5)
        for i in range(1, n + 1):  # siblings leave best first
            sibs = [j for j in range(1, n + 1) if parents[b, j] == parents[b, i]]
            vals = [chosen[j - 1] for j in sibs]
            assert vals == sorted(vals, reverse=True)


def test_confident_trees_keep_the_nodes_above_the_floor() -> None:
    """With a probability floor each request keeps the chosen nodes scoring at least it (its
    best always): a prefix of the fixed-size tree's choice, still closed under parents, padded
    after; a sure draft keeps many nodes, an unsure one few."""
    torch.manual_seed(1)
    k, n, vocab = 3, 10, 16
    table = torch.randn(vocab, vocab).mul(4).log_softmax(-1)
    sure = torch.full((vocab,), -30.0)
    sure[0] = 0.0  # the first request's draft is certain of its first token
    root = torch.stack([sure.log_softmax(-1), torch.zeros(vocab).log_softmax(-1)])
    e = Expansion(root, k)
    for _ in range(3):
        tokens, _ = e.next_pass()
        e.grow(table[tokens.reshape(-1)])
    all_tokens, all_parents, _ = e.select(n)
    floor = math.log(0.1)
    tokens, parents, sizes = e.select(n, floor)
    scores = torch.sort(torch.cat(e.scores, 1), descending=True).values[:, :n]
    assert sizes.tolist() == [max(1, int((row >= floor).sum())) for row in scores]
    assert sizes[1] == 1 and sizes[0] > 1  # uniform first token: only its best node
    for b, m in enumerate(sizes):
        kept = {tuple(_path(all_tokens[b], all_parents[b], i)) for i in range(1, m + 1)}
        assert kept <= {tuple(_path(all_tokens[b], all_parents[b], i)) for i in range(1, n + 1)}
        assert all(0 <= parents[b, i] < i for i in range(1, m + 1))
        assert (parents[b, m + 1 :] == -1).all() and (tokens[b, m:] == 0).all()
    assert not e.can_reach(0.0) and e.can_reach(-math.inf)


def _path(tokens: np.ndarray, parents: np.ndarray, node: int) -> list[int]:
    path = []
    while node > 0:
        path.insert(0, int(tokens[node - 1]))
        node = int(parents[node])
    return path


def test_settings_from_additional_config() -> None:
    def tree(value) -> TreeSettings | None:
        return ViSpecSettings.from_dict({"tree": value}).tree

    assert ViSpecSettings.from_dict({}).tree is None
    assert tree(False) is None
    assert tree(True) == tree({}) == TreeSettings()
    assert tree({"depth": 2, "top_k": 4}) == TreeSettings(depth=2, top_k=4)
    assert tree({"min_prob": 0.05}).min_logprob == pytest.approx(math.log(0.05))
    assert tree({"min_prob": 0}).min_logprob == -math.inf
    bad_values = ({"depth": "x"}, {"width": 3}, {"depth": 0}, {"depth": True}, "on", 1,
                  {"min_prob": 1.0}, {"min_prob": -0.1}, {"min_prob": "0.1"})  # fmt: skip
    for bad in bad_values:
        with pytest.raises(ValueError, match="vispec.tree"):
            tree(bad)
    s = TreeSettings()
    assert s.min_nodes == 24
    assert [s.mode(k) for k in (0, 1, 8, 23, 24, 29)] == ["off", *["chain"] * 3, "tree", "tree"]
    for nodes, match in ((64, "at most"), (20, "look-ahead"), (29, None)):
        if match:
            with pytest.raises(ValueError, match=match):
                s.check(nodes)
        else:
            s.check(nodes)


# -- engines ------------------------------------------------------------------------------------


def _trees(tree: dict | bool = ALWAYS, attention: str = "mark") -> dict:
    """The ``vispec`` settings of a tree engine."""
    return {"tree": tree, "draft_attention": attention}


def _compare_trees(
    target, draft, conversations, k: int = 29, runs: int = 1, attention: str = "mark", **kw
):
    """Greedy outputs with trees equal those without speculation."""
    expected = plain_greedy(target, conversations, runs, **kw)
    with engine(target, draft, k=k, vispec=_trees(attention=attention), **kw) as llm:
        before = counters(llm)
        got = [greedy(llm, conversations) for _ in range(runs)]
        after = counters(llm)
        trees = drafter(llm).tree
    assert trees is not None
    assert got == expected
    delta = {n: after[n] - before.get(n, 0) for n in after if isinstance(after[n], int | float)}
    assert delta["vllm:spec_decode_num_draft_tokens"] > 4 * delta["vllm:spec_decode_num_drafts"], (
        "no trees were drafted"
    )
    assert delta["vllm:spec_decode_num_accepted_tokens"] > 0, "no tree node was accepted"
    return delta


@pytest.mark.parametrize(
    "name,attention",
    [
        ("qwen", "mark"),
        ("llava", "mark"),
        ("qwen3", "mark"),
        ("qwen", "torch"),
        ("llava-eaglevlm", "mark"),
        ("qwen-specvlm", "torch"),
    ],
)
def test_trees_mixed_batch_and_prefix_cache_hits(
    name: str, attention: str, request: pytest.FixtureRequest
) -> None:
    """A mixed batch, then the same prompts again, hitting the prefix cache on every image."""
    target, draft = models(name, request)
    delta = _compare_trees(
        target, draft, MIXED_BATCH, runs=2, attention=attention, enable_prefix_caching=True
    )
    assert delta["vllm:prefix_cache_hits"] > 0


def test_trees_chunked_prefill_and_preemption(request: pytest.FixtureRequest) -> None:
    """Prefill chunks that split images, and preemption by a KV cache of a few blocks."""
    target, draft = models("qwen", request)
    delta = _compare_trees(
        target,
        draft,
        MIXED_BATCH * 2,
        max_num_batched_tokens=64,
        num_gpu_blocks_override=24,
        max_model_len=448,
    )
    assert delta["vllm:num_preemptions"] > 0


def test_trees_at_the_model_length_limit(request: pytest.FixtureRequest) -> None:
    """Requests that run into max_model_len while drafting trees (tree slots past their last
    block) stop exactly where they stop without speculation."""
    target, draft = models("qwen", request)
    conversations = [MIXED_BATCH[0], MIXED_BATCH[0]]
    params = SamplingParams(temperature=0, max_tokens=200)
    with engine(target, max_model_len=96) as llm:
        plain = [o.outputs[0] for o in llm.chat(conversations, params)]
    with engine(target, draft, k=29, vispec=_trees(), max_model_len=96) as llm:
        got = [list(o.outputs[0].token_ids) for o in llm.chat(conversations, params)]
    assert got == [list(o.token_ids) for o in plain]
    assert plain[0].finish_reason == "length" and len(plain[0].token_ids) < 200


def test_trees_and_chains_in_one_batch(request: pytest.FixtureRequest) -> None:
    """Requests still short of min_tokens draft chains beside requests drafting trees; both
    give the tokens of a run without speculation."""
    target, draft = models("qwen", request)
    conversations = MIXED_BATCH * 2
    params = [
        SamplingParams(temperature=0, max_tokens=40, min_tokens=30 if i % 2 else 0)
        for i in range(len(conversations))
    ]
    with engine(target) as llm:
        expected = [list(o.outputs[0].token_ids) for o in llm.chat(conversations, params)]
    with engine(target, draft, k=29, vispec=_trees()) as llm:
        lengths = _record_draft_lengths(llm)
        got = [list(o.outputs[0].token_ids) for o in llm.chat(conversations, params)]
    assert got == expected
    assert {3, 29} <= lengths


def test_trees_follow_vllms_batch_size_schedule(request: pytest.FixtureRequest) -> None:
    """vLLM's num_speculative_tokens_per_batch_size gives each step its K: no draft pass while
    3-4 requests run, chains of 3 at two, trees of 12 nodes alone; with images split across
    prefill chunks, the tokens stay those of a run without speculation."""
    target, draft = models("qwen", request)
    schedule = [[1, 1, 12], [2, 2, 3], [3, 8, 0]]
    params = [SamplingParams(temperature=0, max_tokens=m) for m in (6, 12, 30, 48)]
    chunked = {"max_num_batched_tokens": 64}
    with engine(target, **chunked) as llm:
        expected = output_tokens(llm.chat(MIXED_BATCH, params, use_tqdm=False))
    spec = {"method": "eagle", "model": str(draft), "num_speculative_tokens": 12,
            "num_speculative_tokens_per_batch_size": schedule}  # fmt: skip
    trees = _trees({"depth": 3, "top_k": 4})
    with engine(target, speculative_config=spec, vispec=trees, **chunked) as llm:
        lengths = _record_draft_lengths(llm)
        got = output_tokens(llm.chat(MIXED_BATCH, params, use_tqdm=False))
        proposer = drafter(llm)
    assert got == expected
    assert lengths == {3, 12}
    # K = 0 steps drafted nothing; their rows reached the draft's KV when drafting resumed.
    assert proposer.skipped.peak_rows > 0 and proposer.skipped.extensions > 0


def _record_draft_lengths(llm) -> set[int]:
    """The per-request draft lengths the proposer chose, collected over the engine's steps."""
    verifier = drafter(llm).verifier
    lengths: set[int] = set()
    offer = verifier.offer

    def spy(proposal):
        lengths.update(proposal.lengths.values())
        return offer(proposal)

    verifier.offer = spy
    return lengths


def _wrapped_attention(model: torch.nn.Module) -> set[bool]:
    """Per decoder attention layer of a target: whether its forward is the tree hook's."""
    from vllm.model_executor.layers.attention import Attention

    return {"forward" in vars(m.impl) for m in model.modules() if isinstance(m, Attention)}


def _record_tree_steps(llm) -> list:
    """The verified steps of the engine, as the draft's first pass receives them."""
    verifier = drafter(llm).verifier
    steps: list = []
    take_verified = verifier.take_verified

    def spy():
        step = take_verified()
        if step is not None:
            steps.append(step)
        return step

    verifier.take_verified = spy
    return steps


def test_committed_kv_equals_a_run_without_speculation() -> None:
    """After tree steps that accepted side branches (the trained toy draft), every committed
    position's target K/V equals the no-speculation run's at that position."""
    from vllm_vispec.tools.toy.world import prompts

    _, image, question = prompts(1, 30_000)[0]
    prompt = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        f"{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    params = SamplingParams(temperature=0, max_tokens=400)

    def run(draft) -> tuple[int, list[torch.Tensor], int]:
        vispec = _trees() if draft is not None else None
        with engine(TOY / "target", draft, k=29, vispec=vispec) as llm:
            llm.llm_engine.add_request("r", {"prompt": prompt, "multi_modal_data":
                                              {"image": image}}, params)  # fmt: skip
            steps = _record_tree_steps(llm) if draft is not None else []
            n, kv = 0, []
            for _ in range(target_steps):
                llm.llm_engine.step()
                n, kv = committed_kv(llm)
                if draft is None and n >= want:
                    break
            moved = 0
            for step in steps:
                depth = torch.arange(step.path.shape[1])
                moved += int(((step.path > 0) & (step.path != depth)).sum())
            return n, kv, moved

    target_steps, want = 12, 0
    n_spec, kv_spec, moved = run(TOY / "vispec")
    target_steps, want = 400, n_spec
    n_ref, kv_ref, _ = run(None)
    assert moved > 0, "no accepted node needed moving: compaction untested"
    assert n_ref >= n_spec > 40
    for a, b in zip(kv_spec, kv_ref, strict=True):
        torch.testing.assert_close(a, b[:n_spec], atol=1e-4, rtol=1e-4)


def test_tree_sampling_follows_the_target_distribution() -> None:
    """Temperature 1 with confidence-sized trees of the trained toy draft (often accepted, side
    branches too): every token is a draw from the target's conditional distribution
    (randomised PIT + KS)."""
    conversations = toy_conversations(96)
    spec = {"method": "eagle", "model": str(TOY / "vispec"), "num_speculative_tokens": 8}
    trees = _trees({"depth": 2, "top_k": 4, "min_prob": 0.02})
    pvalue, accepted = _sampled_pit(TOY / "target", spec, conversations, False, trees)
    assert accepted > 500, f"only {accepted} tree nodes accepted"
    assert pvalue > 1e-3, f"sampled tokens do not follow the target (KS p = {pvalue:.2g})"


def test_trees_sized_by_confidence() -> None:
    """With min_prob each request's tree keeps the nodes the trained toy draft is sure of, so
    sizes vary with the picture and the position; the tokens stay those without speculation."""
    conversations = toy_conversations(4)
    expected = plain_greedy(TOY / "target", conversations, max_tokens=64)[0]
    with engine(TOY / "target", TOY / "vispec", k=29, vispec=_trees({"min_prob": 0.05})) as llm:
        lengths = _record_draft_lengths(llm)
        got = greedy(llm, conversations, 64)
    assert got == expected
    assert len(lengths) > 3 and 1 <= min(lengths) and max(lengths) <= 29, lengths


def test_two_engines_with_their_own_settings_in_one_process(
    request: pytest.FixtureRequest,
) -> None:
    """Settings live in each engine's config, not in the process: an engine drafting trees and
    one drafting chains with the skipping attention run side by side, both lossless; the tree
    hooks sit on the tree engine's runner and target attention only."""
    target, draft = models("qwen", request)
    expected = plain_greedy(target, MIXED_BATCH)[0]
    with (
        engine(target, draft, k=29, vispec=_trees()) as trees,
        engine(target, draft, vispec={"draft_attention": "torch"}) as chains,
    ):
        assert greedy(trees, MIXED_BATCH) == expected
        assert greedy(chains, MIXED_BATCH) == expected
        assert greedy(trees, MIXED_BATCH[:1]) == expected[:1]
        tree_runner, chain_runner = model_runner(trees), model_runner(chains)
        tree_drafter, chain_drafter = tree_runner.drafter, chain_runner.drafter
        hooked = [
            {"_prepare_inputs", "_sample", "take_draft_token_ids"} & set(vars(r))
            for r in (tree_runner, chain_runner)
        ]
        wrapped = [_wrapped_attention(r.model) for r in (tree_runner, chain_runner)]
    assert type(tree_drafter).__name__ == "ViSpecTreeProposer"
    assert type(chain_drafter).__name__ == "ViSpecProposer"
    assert hooked == [{"_prepare_inputs", "_sample", "take_draft_token_ids"}, set()]
    assert wrapped == [{True}, {False}]
    attention = [d.draft.model.layers[0].self_attn.mode for d in (tree_drafter, chain_drafter)]
    assert attention == ["mark", "torch"]
