"""SpecVLM's elastic compressor and the EagleVLM/SpecVLM reference drafts (no engine)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vllm_vispec.checkpoint import expected_shapes
from vllm_vispec.compressor import ElasticCompressor
from vllm_vispec.config import COMPRESSORS, ViSpecConfig
from vllm_vispec.layout import draft_layout, unseen_intervals
from vllm_vispec.tools.reference import DraftInput, ViSpecDraft

CFG = ViSpecConfig(
    hidden_size=16,
    intermediate_size=32,
    num_attention_heads=2,
    num_key_value_heads=2,
    vocab_size=40,
    qkv_bias=True,
    kind="specvlm",
    compression=3,
)
IMG = 39


@pytest.mark.parametrize("n", [1, 2, 3, 7, 9])
def test_primitives_give_their_token_counts_and_values(n: int) -> None:
    torch.manual_seed(0)
    compressor = ElasticCompressor(CFG)
    x = torch.randn(n, 16)
    for choice in COMPRESSORS:
        out = compressor(x, choice)
        assert out.shape == (compressor.num_tokens(n, choice), 16), choice
    groups = [x[i : i + 3] for i in range(0, n, 3)]
    assert torch.allclose(compressor(x, "pool"), torch.stack([g.mean(0) for g in groups]))
    assert torch.equal(compressor(x, "prune"), torch.stack([g[-1] for g in groups]))
    padded = torch.cat([x, x.new_zeros(len(groups) * 3 - n, 16)])
    conv = torch.nn.functional.conv1d(
        padded.t()[None], compressor.conv.weight, compressor.conv.bias, stride=3
    )
    assert torch.allclose(compressor(x, "conv"), conv[0].t())
    assert compressor.num_tokens(n, "resampler") == min(2, n)
    assert compressor.num_tokens(n, "text") == 0


def test_the_gate_picks_its_argmax_and_a_single_primitive_has_no_gate() -> None:
    compressor = ElasticCompressor(CFG)
    with torch.no_grad():
        compressor.gate.weight.zero_()
        compressor.gate.bias.copy_(torch.tensor([0.0, 0, 0, 5, 0]))
    assert compressor.choose(torch.randn(5, 16), torch.randn(3, 16)) == "resampler"
    alone = ElasticCompressor(dataclasses.replace(CFG, compressor="pool"))
    assert alone.gate is None and alone.conv is None and alone.resampler is None
    assert alone.choose(torch.randn(5, 16), torch.randn(0, 16)) == "pool"
    names = {n for n in expected_shapes(dataclasses.replace(CFG, compressor="pool"))}
    assert not any(n.startswith("compressor.") for n in names)


def test_per_image_kept_counts_hide_the_rest_of_each_image() -> None:
    spans = [(2, 8), (10, 13)]  # tokens; shifted spans [1, 7) and [9, 12)
    layout = draft_layout(spans, [2, 0], 0, 14)
    assert layout.is_compressed.nonzero().flatten().tolist() == [5, 6]
    assert layout.is_unseen.nonzero().flatten().tolist() == [1, 2, 3, 4, 9, 10, 11]
    assert unseen_intervals(spans, [2, 0]) == [(1, 5), (9, 12)]
    every = draft_layout(spans, None, 0, 14)  # EagleVLM: every image position, in order
    assert not every.is_unseen.any()
    assert every.slot[1:7].tolist() == list(range(6))


def _request(question_before: list[int], question_after: list[int]) -> DraftInput:
    image = torch.randn(7, 16, generator=torch.Generator().manual_seed(1))
    ids = [1, *question_before, *[IMG] * 7, *question_after, 2]
    hidden = torch.randn(len(ids) - 1, 16)
    return DraftInput(torch.tensor(ids), hidden, [image], {IMG})


def test_the_gate_reads_only_the_text_before_the_image() -> None:
    """A question after the image cannot change its tokens; text before it can."""
    torch.manual_seed(0)
    draft = ViSpecDraft(CFG, torch.randn(40, 16)).eval()
    with torch.no_grad():
        draft.compressor.gate.weight.mul_(100)
        base = draft.image_tokens(_request([3, 4], [5, 6]))
        after = draft.image_tokens(_request([3, 4], [7, 8, 9]))
        before = [draft.image_tokens(_request([t, t + 1], [5, 6])) for t in range(3, 30)]
    assert torch.equal(base[0], after[0])
    assert any(b[0].shape != base[0].shape or not torch.equal(b[0], base[0]) for b in before)


@pytest.mark.parametrize("kind", ["eaglevlm", "specvlm"])
def test_reference_draft_rows_follow_the_layout(kind: str) -> None:
    """EagleVLM: every position is a row; SpecVLM: the compressed tokens stand at the image's
    last positions, the others have no row."""
    cfg = dataclasses.replace(CFG, kind=kind, compressor="pool")
    torch.manual_seed(0)
    draft = ViSpecDraft(cfg, torch.randn(40, 16)).eval()
    inp = _request([3, 4], [5, 6])
    with torch.no_grad():
        x, positions, _ = draft.layer_inputs(inp)
        (out,) = draft([inp])
    image = torch.arange(2, 9)  # draft positions of the image's shifted span
    if kind == "eaglevlm":
        assert positions.tolist() == list(range(inp.hidden_states.shape[0]))
        assert out.visible.all()
    else:
        assert positions.tolist() == [0, 1, *image[-3:].tolist(), 9, 10, 11]
        assert out.visible.sum() == len(positions)
        tokens = draft.compressor(inp.image_embeds[0], "pool")
        rows = draft.fc(torch.cat([tokens, inp.hidden_states[image[-3:]]], dim=-1))
        assert torch.allclose(x[2:5], rows)
