"""A request's images as the draft sees them: spans of the target sequence and what they hide.

Read once per request from vLLM's request state (each item's ``MultiModalFeatureSpec``: where
its placeholder sits and under which hash the encoder output is cached).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from vllm_vispec.layout import image_spans, unseen_intervals

# One request's rows of a step: rows lo..hi of the step, its first draft position, its images.
Window = tuple[int, int, int, list["ImageSpan"]]


@dataclasses.dataclass(frozen=True, order=True)
class ImageSpan:
    """One image of a request, or one run of a video's tokens: tokens [start, end) of the
    target sequence, fed by rows ``rows`` of the encoder output stored under ``key``.
    ``prefix`` (SpecVLM drafts): a digest of the prompt up to the span's end, which decides
    the compressor's choice with the image.

    A video whose placeholder interleaves text with its tokens (Qwen3-VL puts a timestamp
    before each frame group) gives a span per run of video tokens, each compressed like an
    image, exactly as the reference draft and training read the token ids.
    """

    start: int
    end: int
    key: str  # the encoder-cache identifier (image or video hash)
    rows: tuple[int, int]
    prefix: str = ""

    @property
    def feature_key(self) -> str:
        """Where the adaptor (or compressor) output of this span is kept."""
        return f"{self.key}:{self.rows[0]}:{self.prefix}"


@dataclasses.dataclass(frozen=True)
class RequestImages:
    """What a request's images mean to the draft; fixed for the request's lifetime."""

    spans: list[ImageSpan]
    unseen: list[tuple[int, int]]  # unseen raw positions [lo, hi), sorted (ViSpec, EagleVLM)
    prompt: np.ndarray | None = None  # the prompt's token ids (SpecVLM's gate reads its text)

    @classmethod
    def from_state(cls, state: Any, num_q: int | None, compresses: bool) -> RequestImages:
        """From vLLM's request state (its ``MultiModalFeatureSpec`` list, and its prompt when
        a compressor chooses per image); ``num_q``: ViSpec's adaptor outputs per image (None:
        every image position stays visible)."""
        spans = []
        for f in state.mm_features:
            p, row = f.mm_position, 0
            # Runs of the placeholder's embedding positions (flag 1); all of it without a mask.
            runs = [(0, p.length)] if p.is_embed is None else image_spans(p.is_embed.long(), (1,))
            for lo, hi in runs:
                spans.append(
                    ImageSpan(p.offset + lo, p.offset + hi, f.identifier, (row, row + hi - lo))
                )
                row += hi - lo
        spans.sort()
        if not compresses:
            return cls(spans, unseen_intervals([(s.start, s.end) for s in spans], num_q))
        prompt = np.asarray(state.prompt_token_ids, dtype=np.int64)
        spans = [
            dataclasses.replace(s, prefix=hashlib.blake2b(prompt[: s.end].tobytes()).hexdigest())
            for s in spans
        ]
        return cls(spans, [], prompt)

    def context(self, span: ImageSpan) -> np.ndarray:
        """The prompt's text tokens before ``span`` (what SpecVLM's gate reads with it)."""
        text = np.ones(span.start, dtype=bool)
        for s in self.spans:
            text[s.start : min(s.end, span.start)] = False
        return self.prompt[: span.start][text]
