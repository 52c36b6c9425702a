"""Where images sit in a ViSpec draft's sequence.

The draft follows EAGLE: draft position ``t`` pairs the target's hidden state at token ``t`` with
token ``t + 1``. An image occupying tokens ``[s, e)`` therefore occupies the *shifted span*
``[s - 1, e - 1)`` of draft positions. Inside that span:

- the first ``num_q - 1`` vision-adaptor outputs sit, in order, at the last ``num_q - 1``
  positions ``e - num_q .. e - 2`` (*compressed* positions);
- every other position is *unseen*: it has no KV entry and nothing attends to it (the draft
  does not see it; "hidden" in this project means hidden states only).

An EagleVLM draft (``num_q`` None) keeps the whole span: position ``t`` is the image's token
``t + 1 - s``, paired with that token's image embedding. A SpecVLM draft gives each image its
own count of compressed positions (``num_q`` a sequence: the compressor's choice per image).

Every other draft position is *text*. A text position ``t`` uses the global feature (the last
adaptor output) of the latest image ``i`` with ``e_i - 1 <= t``, or zeros before the first image.

Spans are always given in token coordinates (as :func:`image_spans` returns them); layouts can be
computed for any window ``[lo, hi)`` of draft positions, so prefill chunks and decode steps
(positions past the prompt, all text) use the same rules as the whole request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import torch

Span = tuple[int, int]


def image_spans(
    token_ids: torch.Tensor | Sequence[int], image_token_ids: Collection[int]
) -> list[Span]:
    """Maximal runs ``[start, end)`` of image-placeholder tokens; each run is one image.

    Video placeholders count the same way when their id is in ``image_token_ids``.
    """
    ids = torch.as_tensor(token_ids)
    if ids.numel() == 0 or not image_token_ids:
        return []
    wanted = torch.tensor(list(image_token_ids), dtype=ids.dtype, device=ids.device)
    is_image = torch.isin(ids, wanted).to(torch.int8)
    edge = torch.zeros(1, dtype=torch.int8, device=ids.device)
    change = torch.diff(is_image, prepend=edge, append=edge)
    starts = (change == 1).nonzero().flatten().tolist()
    ends = (change == -1).nonzero().flatten().tolist()
    return list(zip(starts, ends, strict=True))


Keep = int | Sequence[int] | None  # ViSpec's num_q, per-image counts, or every position


def kept(spans: Sequence[Span], num_q: Keep) -> list[int]:
    """How many positions at the end of each image's shifted span stay visible."""
    if num_q is None:
        return [e - s for s, e in spans]
    if isinstance(num_q, int):
        return [num_q - 1] * len(spans)
    return list(num_q)


def check_spans(spans: Sequence[Span], num_q: Keep) -> None:
    """Reject spans the draft cannot represent.

    An image at token 0 has no draft position before it to start its shifted span, and an image
    shorter than its compressed tokens (``num_q - 1`` for ViSpec) has no room for them.
    """
    previous_end = 0
    for i, ((start, end), k) in enumerate(zip(spans, kept(spans, num_q), strict=True)):
        if start < 1:
            raise ValueError(
                f"image {i} starts at token {start}: a ViSpec draft needs at least one token "
                "before every image"
            )
        if end - start < max(k, 1):
            raise ValueError(
                f"image {i} has {end - start} tokens, fewer than its {k} compressed tokens"
                + (f" (a num_q={num_q} adaptor)" if isinstance(num_q, int) else "")
            )
        if start < previous_end:
            raise ValueError(f"image spans must be sorted and disjoint, got {list(spans)}")
        previous_end = end


@dataclasses.dataclass(frozen=True)
class DraftLayout:
    """The draft's view of draft positions ``positions = [lo, hi)``, one entry per position.

    ``image[k]``: index of the image whose shifted span holds the position, -1 for text.
    ``slot[k]``: index ``j`` of the adaptor output placed there (compressed), else -1.
    ``global_image[k]``: image whose global feature applies at the position, -1 for none
    (zeros). Only text positions use it; it is defined everywhere by the same rule.
    """

    positions: torch.Tensor
    image: torch.Tensor
    slot: torch.Tensor
    global_image: torch.Tensor

    @property
    def is_text(self) -> torch.Tensor:
        return self.image < 0

    @property
    def is_compressed(self) -> torch.Tensor:
        return self.slot >= 0

    @property
    def is_unseen(self) -> torch.Tensor:
        return (self.image >= 0) & (self.slot < 0)

    @property
    def visible(self) -> torch.Tensor:
        """Positions that get a KV entry and an output: text and compressed."""
        return (self.image < 0) | (self.slot >= 0)


def draft_layout(
    spans: Sequence[Span],
    num_q: Keep,
    lo: int,
    hi: int,
    device: torch.device | str | None = None,
) -> DraftLayout:
    """Kind and global-feature image of draft positions ``[lo, hi)`` of one request.

    ``spans`` are the request's image spans in token coordinates, all of them (earlier images
    decide the global feature of a window that holds none).
    """
    check_spans(spans, num_q)
    positions = torch.arange(lo, hi, device=device)
    none = torch.full_like(positions, -1)
    if not spans:
        return DraftLayout(positions, none, none, none)
    first = torch.tensor([s - 1 for s, _ in spans], device=device)  # shifted span starts
    stop = torch.tensor([e - 1 for _, e in spans], device=device)  # shifted span ends
    visible_from = stop - torch.tensor(kept(spans, num_q), device=device)
    latest = torch.searchsorted(first, positions, right=True) - 1
    end_of_latest = stop[latest.clamp(min=0)]
    inside = (latest >= 0) & (positions < end_of_latest)
    image = torch.where(inside, latest, none)
    slot = positions - visible_from[latest.clamp(min=0)]
    slot = torch.where(inside & (slot >= 0), slot, none)
    global_image = torch.searchsorted(stop, positions, right=True) - 1
    return DraftLayout(positions, image, slot, global_image)


def unseen_intervals(spans: Sequence[Span], num_q: Keep) -> list[Span]:
    """The unseen draft positions of a whole request as intervals ``[lo, hi)``, sorted.

    Image ``[s, e)`` hides ``[s - 1, e - num_q)``: its shifted span minus the ``num_q - 1``
    compressed positions at the end (the same positions :attr:`DraftLayout.is_unseen` marks).
    Images exactly ``num_q - 1`` tokens long hide nothing and give no interval.
    """
    check_spans(spans, num_q)
    pairs = zip(spans, kept(spans, num_q), strict=True)
    return [(s - 1, e - 1 - k) for (s, e), k in pairs if e - 1 - k > s - 1]
