"""The reference ViSpec draft pins the draft semantics of ViSpec (Kang et al., NeurIPS 2025; the
rules as written in ``vllm_vispec.layout`` and ``vllm_vispec.tools.reference``), rule by rule.

Expected values come from independently written code: plain loops over positions, attention
with an explicit mask, RoPE as a complex rotation and the adaptor through the per-head identity
that folds k_proj into the queries (never by calling the module's own helpers).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vllm_vispec.config import ViSpecConfig
from vllm_vispec.layout import check_spans, draft_layout, image_spans, unseen_intervals
from vllm_vispec.tools.reference import DraftInput, ViSpecDraft

H, V = 64, 128
IMG, VID = 120, 121  # image and video placeholder ids
IDS = (IMG, VID)


def make_config(num_q: int = 2, kv_heads: int = 4, qkv_bias: bool = False, fc_bias: bool = True):
    return ViSpecConfig(
        hidden_size=H,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=V,
        rope_theta=500.0,
        qkv_bias=qkv_bias,
        fc_bias=fc_bias,
        num_q=num_q,
    )


CONFIGS = {
    "mha-q2": make_config(),
    "gqa-q3": make_config(num_q=3, kv_heads=2, fc_bias=False),
    "qkv_bias-q3": make_config(num_q=3, qkv_bias=True),
    "qkv_bias-q2": make_config(num_q=2, qkv_bias=True),
}


def make_draft(config: ViSpecConfig, seed: int = 0, random_img_fc: bool = True) -> ViSpecDraft:
    """A float64 draft with every parameter random (biases and norm weight included).

    Weights have unit gain so that activations stay O(1) and attention does not saturate.
    """
    torch.manual_seed(seed)
    draft = ViSpecDraft(config, torch.randn(V, H, dtype=torch.float64))
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if name.startswith("img_fc") and not random_img_fc:
                continue
            noise = torch.randn_like(p)
            if p.dim() == 1:
                p.copy_(noise * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
            else:
                p.copy_(noise * p.shape[-1] ** -0.5)
    return draft.double()


def text_tokens(n: int, gen: torch.Generator) -> list[int]:
    return torch.randint(0, 100, (n,), generator=gen).tolist()


def make_input(pieces: list[int | str], seed: int = 1) -> DraftInput:
    """Token ids from pieces: an int is that many text tokens, "I5" an image of 5 tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids, images = [], []
    for piece in pieces:
        if isinstance(piece, int):
            ids += text_tokens(piece, gen)
        else:
            n = int(piece[1:])
            ids += [IMG] * n
            images.append(torch.randn(n, H, generator=gen, dtype=torch.float64))
    token_ids = torch.tensor(ids)
    hidden = torch.randn(len(ids) - 1, H, generator=gen, dtype=torch.float64)
    return DraftInput(token_ids, hidden, images, IDS)


# ---------------------------------------------------------------------------------------------
# Independent oracle


def naive_rope(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """Rotate pairs (i, i + hd/2) by pos * theta^(-2i/hd), as a complex multiplication."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:])
    angle = pos * theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1)


def naive_layer(draft: ViSpecDraft, rows: list[torch.Tensor], positions: list[int]):
    """Llama layer without input norm over rows in order, causal, RoPE at the given positions."""
    cfg, sd = draft.config, dict(draft.named_parameters())
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def lin(name, x):
        b = sd.get(name + ".bias")
        return x @ sd[name + ".weight"].T + (0 if b is None else b)

    x = torch.stack(rows)
    q = lin("layers.0.self_attn.q_proj", x).view(-1, nh, hd)
    k = lin("layers.0.self_attn.k_proj", x).view(-1, nkv, hd)
    v = lin("layers.0.self_attn.v_proj", x).view(-1, nkv, hd)
    q = torch.stack([naive_rope(q[i], p, cfg.rope_theta) for i, p in enumerate(positions)])
    k = torch.stack([naive_rope(k[i], p, cfg.rope_theta) for i, p in enumerate(positions)])
    heads = []
    for head in range(nh):
        kv = head // (nh // nkv)  # query heads share kv heads in consecutive groups
        scores = q[:, head] @ k[:, kv].T / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones_like(scores).triu(1).bool(), float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, kv])
    x = x + lin("layers.0.self_attn.o_proj", torch.cat(heads, dim=-1))
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)
    normed = normed * sd["layers.0.post_attention_layernorm.weight"]
    act = F.silu(lin("layers.0.mlp.gate_proj", normed)) * lin("layers.0.mlp.up_proj", normed)
    return x + lin("layers.0.mlp.down_proj", act)


def naive_adaptor(draft: ViSpecDraft, x: torch.Tensor) -> torch.Tensor:
    """Section 1's identity: per head, score image rows against W_k,h^T q_h, pool X, then W_v."""
    sd = dict(draft.named_parameters())
    q, wk, wv = sd["imadpt.q"], sd["imadpt.k_proj.weight"], sd["imadpt.v_proj.weight"]
    bv = sd.get("imadpt.v_proj.bias")
    num_q, nh, hd = q.shape
    out = torch.zeros(num_q, nh * hd, dtype=x.dtype)
    for j in range(num_q):
        for h in range(nh):
            rows = slice(h * hd, (h + 1) * hd)
            p = torch.softmax(x @ (wk[rows].T @ q[j, h]) / math.sqrt(hd), dim=0)
            out[j, rows] = wv[rows] @ (p @ x) + (0 if bv is None else bv[rows])
    return out @ sd["imadpt.o_proj.weight"].T


def naive_vispec(
    draft: ViSpecDraft,
    inp: DraftInput,
    compressed_at: str = "end",
    raw_positions: bool = True,
    pooled: list[torch.Tensor] | None = None,
) -> dict[int, torch.Tensor]:
    """Draft outputs by visible position, read off the draft rules position by position.

    ``compressed_at="start"`` and ``raw_positions=False`` are deliberately wrong variants that
    tests use to show the reference is sensitive to those rules.
    """
    cfg, sd = draft.config, dict(draft.named_parameters())
    tokens = inp.token_ids.tolist()
    runs, t = [], 0  # maximal runs of placeholder tokens
    while t < len(tokens):
        if tokens[t] in IDS:
            start = t
            while t < len(tokens) and tokens[t] in IDS:
                t += 1
            runs.append((start, t))
        else:
            t += 1
    if pooled is None:
        pooled = [naive_adaptor(draft, x) for x in inp.image_embeds]
    rows, positions = [], []
    for t in range(inp.hidden_states.shape[0]):
        run = next((r for r, (s, e) in enumerate(runs) if s <= t + 1 < e), None)
        if run is not None:  # token t + 1 is an image token
            s, e = runs[run]
            first = e - cfg.num_q if compressed_at == "end" else s - 1
            slot = t - first
            if 0 <= slot < cfg.num_q - 1:
                rows.append(pooled[run][slot])
                positions.append(t)
            continue
        done = [r for r, (_, e) in enumerate(runs) if e <= t + 1]
        g = pooled[done[-1]][-1] if done else torch.zeros(H, dtype=torch.float64)
        h = torch.cat((inp.hidden_states[t], g)) @ sd["img_fc.weight"].T
        if "img_fc.bias" in sd:
            h = h + sd["img_fc.bias"]
        emb = draft.embed_tokens.weight[tokens[t + 1]]
        x = torch.cat((emb, h)) @ sd["fc.weight"].T
        rows.append(x + sd["fc.bias"] if "fc.bias" in sd else x)
        positions.append(t)
    layer_pos = positions if raw_positions else list(range(len(positions)))
    out = naive_layer(draft, rows, layer_pos)
    return dict(zip(positions, out, strict=True))


def visible_outputs(draft: ViSpecDraft, inp: DraftInput) -> dict[int, torch.Tensor]:
    out = draft([inp])[0]
    return {t: out.hidden_states[t] for t in out.visible.nonzero().flatten().tolist()}


def assert_same(a: dict, b: dict, atol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for t in a:
        torch.testing.assert_close(a[t], b[t], atol=atol, rtol=0, msg=f"position {t}")


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-6


# ---------------------------------------------------------------------------------------------
# Spans and the shifted layout


def test_spans_and_layout_exact_indices():
    # tokens: 0 1 | 2 3 4 5 (image 0) | 6 7 | 8 9 10 (video, image 1) | 11 12
    tokens = [7, 8, IMG, IMG, IMG, IMG, 9, 10, VID, VID, VID, 11, 12]
    spans = image_spans(torch.tensor(tokens), IDS)
    assert spans == [(2, 6), (8, 11)]
    assert image_spans(tokens, {IMG}) == [(2, 6)]
    assert image_spans(tokens, ()) == []

    layout = draft_layout(spans, num_q=3, lo=0, hi=14)
    # shifted spans [1, 5) and [7, 10); compressed = last num_q - 1 = 2 positions of each
    assert layout.image.tolist() == [-1, 0, 0, 0, 0, -1, -1, 1, 1, 1, -1, -1, -1, -1]
    assert layout.slot.tolist() == [-1, -1, -1, 0, 1, -1, -1, -1, 0, 1, -1, -1, -1, -1]
    assert layout.is_unseen.nonzero().flatten().tolist() == [1, 2, 7]
    assert layout.is_compressed.nonzero().flatten().tolist() == [3, 4, 8, 9]
    # image 0's global feature from position e_0 - 1 = 5, image 1's from e_1 - 1 = 10 on
    assert layout.global_image.tolist() == [-1] * 5 + [0] * 5 + [1] * 4

    two = draft_layout(spans, num_q=2, lo=0, hi=12)
    assert two.is_compressed.nonzero().flatten().tolist() == [4, 9]
    assert two.is_unseen.nonzero().flatten().tolist() == [1, 2, 3, 7, 8]

    for lo in range(14):  # any window agrees with the whole request
        for hi in range(lo, 16):
            window = draft_layout(spans, num_q=3, lo=lo, hi=hi)
            full = draft_layout(spans, num_q=3, lo=0, hi=16)
            for field in ("positions", "image", "slot", "global_image"):
                assert torch.equal(getattr(window, field), getattr(full, field)[lo:hi])


@pytest.mark.parametrize("num_q", [1, 2, 3])
def test_unseen_intervals_are_the_layouts_unseen_positions(num_q: int) -> None:
    """The intervals the skipping attention uses hide exactly the layout's unseen positions,
    including an image of exactly num_q - 1 tokens (nothing hidden) and back-to-back images."""
    spans = [(2, 6), (8, 11), (12, 14), (14, 20)]
    hi = 24
    mask = torch.zeros(hi, dtype=torch.bool)
    for lo_, hi_ in unseen_intervals(spans, num_q):
        assert lo_ < hi_
        mask[lo_:hi_] = True
    assert torch.equal(mask, draft_layout(spans, num_q, 0, hi).is_unseen)
    assert unseen_intervals([], num_q) == []


def test_span_errors():
    with pytest.raises(ValueError, match="starts at token 0"):
        check_spans(image_spans([IMG, IMG, 3], IDS), num_q=2)
    with pytest.raises(ValueError, match="fewer than its 2 compressed"):
        draft_layout([(1, 3), (5, 6)], num_q=3, lo=0, hi=8)
    check_spans([(1, 3), (5, 7)], num_q=3)  # exactly num_q - 1 tokens is enough
    with pytest.raises(ValueError, match="sorted and disjoint"):
        check_spans([(5, 7), (1, 3)], num_q=2)
    draft = make_draft(CONFIGS["mha-q2"])
    inp = make_input([3, "I4", 3])
    with pytest.raises(ValueError, match="image_embeds"):
        draft([DraftInput(inp.token_ids, inp.hidden_states, [], IDS)])
    with pytest.raises(ValueError, match="len\\(hidden_states\\) \\+ 1"):
        draft([DraftInput(inp.token_ids[:-1], inp.hidden_states, inp.image_embeds, IDS)])


# ---------------------------------------------------------------------------------------------
# Parameters and checkpoint names


def official_shapes(cfg: ViSpecConfig) -> dict[str, tuple[int, ...]]:
    hd, kv = cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    shapes = {
        "embed_tokens.weight": (V, H),
        "layers.0.self_attn.q_proj.weight": (H, H),
        "layers.0.self_attn.k_proj.weight": (kv, H),
        "layers.0.self_attn.v_proj.weight": (kv, H),
        "layers.0.self_attn.o_proj.weight": (H, H),
        "layers.0.mlp.gate_proj.weight": (128, H),
        "layers.0.mlp.up_proj.weight": (128, H),
        "layers.0.mlp.down_proj.weight": (H, 128),
        "layers.0.post_attention_layernorm.weight": (H,),
        "fc.weight": (H, 2 * H),
        "img_fc.weight": (H, 2 * H),
        "imadpt.q": (cfg.num_q, cfg.num_attention_heads, hd),
        "imadpt.k_proj.weight": (H, H),
        "imadpt.v_proj.weight": (H, H),
        "imadpt.o_proj.weight": (H, H),
    }
    if cfg.qkv_bias:
        shapes["layers.0.self_attn.q_proj.bias"] = (H,)
        shapes["layers.0.self_attn.k_proj.bias"] = (kv,)
        shapes["layers.0.self_attn.v_proj.bias"] = (kv,)
        shapes["imadpt.k_proj.bias"] = (H,)
        shapes["imadpt.v_proj.bias"] = (H,)
    if cfg.fc_bias:
        shapes["fc.bias"] = (H,)
        shapes["img_fc.bias"] = (H,)
    return shapes


@pytest.mark.parametrize("name", CONFIGS)
def test_official_state_dict_loads_strictly(name):
    cfg = CONFIGS[name]
    draft = ViSpecDraft(cfg, torch.randn(V, H))
    shapes = official_shapes(cfg)
    assert {k: tuple(v.shape) for k, v in draft.state_dict().items()} == shapes
    official = {k: torch.randn(s) for k, s in shapes.items()}
    draft.load_state_dict(official, strict=True)
    for k, v in draft.state_dict().items():
        assert torch.equal(v, official[k])

    fresh = ViSpecDraft(cfg)
    w = fresh.img_fc.weight
    assert torch.equal(w[:, :H], torch.eye(H)) and not w[:, H:].any()
    assert fresh.img_fc.bias is None or not fresh.img_fc.bias.any()
    trainable = {k for k, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == set(shapes) - {"embed_tokens.weight"}


def test_lm_head_stays_frozen_while_training():
    draft = make_draft(CONFIGS["qkv_bias-q2"])
    lm_head = draft.lm_head_weight.clone()
    out = draft([make_input([3, "I3", 4])])[0]
    (out.logits.pow(2).sum() + out.hidden_states.sum()).backward()
    assert draft.lm_head_weight.grad is None and draft.embed_tokens.weight.grad is None
    assert draft.fc.weight.grad is not None and draft.imadpt.q.grad.abs().sum() > 0
    assert draft.img_fc.weight.grad[:, H:].abs().sum() > 0  # g reaches the loss through img_fc
    assert torch.equal(draft.lm_head_weight, lm_head)


# ---------------------------------------------------------------------------------------------
# The draft against the oracle


@pytest.mark.parametrize("name", CONFIGS)
def test_text_only_is_plain_eagle_at_img_fc_init(name):
    cfg = CONFIGS[name]
    draft = make_draft(cfg, random_img_fc=False)
    inp = make_input([12], seed=3)
    sd = dict(draft.named_parameters())
    # plain EAGLE-1: fc(cat(embedding of token t + 1, h_t)) through the layer at positions t
    emb = draft.embed_tokens.weight[inp.token_ids[1:]]
    x = torch.cat((emb, inp.hidden_states), dim=-1) @ sd["fc.weight"].T
    x = x + sd["fc.bias"] if cfg.fc_bias else x
    expected = naive_layer(draft, list(x), list(range(len(x))))
    out = draft([inp])[0]
    torch.testing.assert_close(out.hidden_states, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(out.logits, expected @ draft.lm_head_weight.T, atol=1e-9, rtol=0)
    assert out.visible.all()


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("pieces", [[4, "I5", 3, "I3", 2, "I4", 1], [1, "I6", 5]])
def test_matches_oracle(name, pieces):
    draft = make_draft(CONFIGS[name])
    inp = make_input(pieces, seed=4)
    assert_same(visible_outputs(draft, inp), naive_vispec(draft, inp))


def test_hidden_rows_are_zero_and_logits_follow_hidden_states():
    draft = make_draft(CONFIGS["mha-q2"])
    inp = make_input([3, "I5", 4])
    out = draft([inp])[0]
    hidden = ~out.visible
    assert hidden.nonzero().flatten().tolist() == [2, 3, 4, 5]  # span [2, 7), compressed at 6
    assert not out.hidden_states[hidden].any() and not out.logits[hidden].any()
    visible_logits = out.hidden_states[out.visible] @ draft.lm_head_weight.T
    torch.testing.assert_close(out.logits[out.visible], visible_logits, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ["mha-q2", "gqa-q3"])
def test_compressed_tokens_sit_at_span_end_with_raw_positions(name):
    draft = make_draft(CONFIGS[name])
    inp = make_input([3, "I6", 5, "I4", 4], seed=5)
    got = visible_outputs(draft, inp)
    assert_same(got, naive_vispec(draft, inp))
    after = [t for t in got if t >= 3 + 6 + 5 + 4 - 1]
    for wrong in (dict(compressed_at="start"), dict(raw_positions=False)):
        other = naive_vispec(draft, inp, **wrong)
        assert any(differs(got[t], other[t]) for t in after if t in other), wrong


def test_unseen_positions_do_not_affect_visible_outputs():
    draft = make_draft(CONFIGS["qkv_bias-q3"])
    inp = make_input([3, "I6", 4, "I5", 3], seed=6)
    base = visible_outputs(draft, inp)
    tokens, hidden = inp.token_ids.clone(), inp.hidden_states.clone()
    # every shifted-span position: hidden states (unused even at compressed positions) and the
    # embedding of the next token (a video instead of an image placeholder: same image)
    for s, e in image_spans(tokens, IDS):
        hidden[s - 1 : e - 1] = torch.randn(e - s, H, dtype=torch.float64) * 10
        tokens[s : e - 1] = VID
    assert_same(visible_outputs(draft, DraftInput(tokens, hidden, inp.image_embeds, IDS)), base)
    # control: the same change at one text position does change later outputs
    hidden[1] += 1.0
    changed = visible_outputs(draft, DraftInput(tokens, hidden, inp.image_embeds, IDS))
    assert differs(changed[len(hidden) - 1], base[len(hidden) - 1])


def test_image_embeddings_change_outputs_from_the_compressed_tokens_on():
    draft = make_draft(CONFIGS["mha-q2"])
    inp = make_input([4, "I5", 6], seed=7)  # shifted span [3, 8), compressed at 7
    base = visible_outputs(draft, inp)
    embeds = [inp.image_embeds[0] + torch.randn(5, H, dtype=torch.float64)]
    changed = visible_outputs(draft, DraftInput(inp.token_ids, inp.hidden_states, embeds, IDS))
    assert all(torch.equal(changed[t], base[t]) for t in range(3))
    assert all(differs(changed[t], base[t]) for t in range(7, 14))


def test_adaptor_is_order_free_pooling_matching_the_per_head_formula():
    for name in ("mha-q2", "qkv_bias-q3"):
        draft = make_draft(CONFIGS[name])
        x = torch.randn(9, H, dtype=torch.float64)
        out = draft.imadpt(x)
        assert out.shape == (draft.config.num_q, H)
        torch.testing.assert_close(out, naive_adaptor(draft, x), atol=1e-9, rtol=0)
        perm = torch.randperm(9)
        torch.testing.assert_close(draft.imadpt(x[perm]), out, atol=1e-9, rtol=0)
        assert differs(draft.imadpt(x[:8]), out)  # every row counts


def test_global_feature_of_latest_image_reaches_later_text_only():
    cfg = CONFIGS["mha-q2"]
    draft = make_draft(cfg)
    inp = make_input([3, "I4", 4, "I3", 3], seed=8)  # shifted spans [2, 6), [10, 13)
    sd = dict(draft.named_parameters())

    # Stand-in adaptor: compressed token = first image row, global feature = second image row.
    draft.imadpt.forward = lambda x: x[: cfg.num_q]
    img0, img1 = inp.image_embeds
    x, positions, g_after = draft.layer_inputs(inp)
    rows = dict(zip(positions.tolist(), x, strict=True))
    assert sorted(rows) == [0, 1, 5, 6, 7, 8, 9, 12, 13, 14, 15]  # compressed at 5 and 12

    def text_row(t, g):
        h = torch.cat((inp.hidden_states[t], g)) @ sd["img_fc.weight"].T + sd["img_fc.bias"]
        emb = draft.embed_tokens.weight[inp.token_ids[t + 1]]
        return torch.cat((emb, h)) @ sd["fc.weight"].T + sd["fc.bias"]

    zeros = torch.zeros(H, dtype=torch.float64)
    expected_g = {0: zeros, 1: zeros, 6: img0[1], 7: img0[1], 8: img0[1], 9: img0[1]}
    expected_g |= {13: img1[1], 14: img1[1], 15: img1[1]}
    for t, g in expected_g.items():
        torch.testing.assert_close(rows[t], text_row(t, g), atol=1e-9, rtol=0)
    torch.testing.assert_close(rows[5], img0[0], atol=0, rtol=0)  # compressed: no fc
    torch.testing.assert_close(rows[12], img1[0], atol=0, rtol=0)
    torch.testing.assert_close(g_after, img1[1], atol=0, rtol=0)

    # Image 0's global feature feeds text between the images, not text after image 1.
    img0_moved = img0.clone()
    img0_moved[1] += 1.0
    moved = DraftInput(inp.token_ids, inp.hidden_states, [img0_moved, img1], IDS)
    x2, _, _ = draft.layer_inputs(moved)
    changed = {t for t, a, b in zip(positions.tolist(), x, x2, strict=True) if differs(a, b)}
    assert changed == {6, 7, 8, 9}


def test_batch_equals_one_request_at_a_time():
    draft = make_draft(CONFIGS["gqa-q3"])
    pieces = [[9], [3, "I4", 6], [2, "I3", 2, "I5", 4]]
    inputs = [make_input(p, seed=i) for i, p in enumerate(pieces)]
    batch = draft(inputs)
    for inp, out in zip(inputs, batch, strict=True):
        alone = draft([inp])[0]
        assert torch.equal(out.visible, alone.visible)
        torch.testing.assert_close(out.hidden_states, alone.hidden_states, atol=1e-10, rtol=0)
        torch.testing.assert_close(out.logits, alone.logits, atol=1e-10, rtol=0)


@pytest.mark.parametrize("pieces", [[8], [3, "I5", 4, "I4", 3]])
def test_greedy_chain_feeds_back_its_own_hidden_state(pieces):
    draft = make_draft(CONFIGS["qkv_bias-q3"])
    with torch.no_grad():
        draft.lm_head_weight[list(IDS)] = 0  # keep drafted ids off the placeholders
    for seed in range(6):  # several prompts, so that small errors flip some argmax
        inp = make_input(pieces, seed=seed)
        tokens, hidden = inp.token_ids, inp.hidden_states
        expected = []
        for _ in range(5):  # EAGLE-1 by hand: extend the request by one position per step
            with torch.no_grad():
                out = naive_vispec(draft, DraftInput(tokens, hidden, inp.image_embeds, IDS))
            last = out[len(hidden) - 1]
            expected.append(int((last @ draft.lm_head_weight.T).argmax()))
            tokens = torch.cat((tokens, torch.tensor(expected[-1:])))
            hidden = torch.cat((hidden, last[None]))
        assert draft.greedy_chain(inp, 5) == expected
