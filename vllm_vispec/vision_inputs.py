"""Per-pass vision inputs of the draft, and the builder that makes them once per ``propose()``.

The proposer hands the builder what vLLM knows about the batch (request ids, computed tokens,
each request's multimodal features, the encoder cache); the builder runs the adaptor on images
it has not seen, and returns :class:`VisionInputs` for the draft's first pass and later steps.
Data flows one way: the draft never reaches back into the proposer or the runner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from vllm.logger import init_logger

from vllm_vispec.feature_cache import FeatureCache
from vllm_vispec.layout import draft_layout, hidden_intervals

logger = init_logger(f"vllm.{__name__}")

@dataclasses.dataclass
class VisionContext:
    """Per-row vision inputs of one draft forward (rows = tokens, or requests in later steps).

    ``features`` holds every vector the rows refer to: compressed image tokens as the adaptor
    gave them, global features already projected by img_fc's image half; row 0 is all zeros
    (no image yet).
    """

    features: torch.Tensor  # [M, H]
    global_index: torch.Tensor  # [n] int64: row of the projected global feature (img_fc's W_g g)
    # [n] int64: feature row that replaces fc's output (a compressed image token), -1 = none
    compressed_index: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # [n] bool: position invisible to the draft's attention
    # Per request of the batch, the same raw positions as intervals (start [S], end [S],
    # cu [B + 1], int32): what the ``triton``/``torch`` attentions skip. None: nothing hidden.
    hidden_intervals: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def fit_rows(rows: torch.Tensor, n: int, fill: int | bool) -> torch.Tensor:
    """The first n rows; rows past the real tokens (CUDA-graph padding) get ``fill``."""
    if rows.shape[0] >= n:
        return rows[:n]
    return torch.cat([rows, rows.new_full((n - rows.shape[0],), fill)])


@dataclasses.dataclass
class VisionInputs:
    """The two kinds of draft forward in one ``propose()``: the first pass (a row per scheduled
    token) and the K-1 later steps (a row per request). None: no image in the batch."""

    first_pass: VisionContext | None
    later_steps: VisionContext | None


@dataclasses.dataclass(frozen=True, order=True)
class ImageSpan:
    """One image (or video) of a request: tokens [start, end) of the target sequence."""

    start: int
    end: int
    key: str  # the encoder-cache identifier (image hash)


@dataclasses.dataclass(frozen=True)
class RequestImages:
    """What a request's images mean to the draft; fixed for the request's lifetime."""

    spans: list[ImageSpan]
    hidden: list[tuple[int, int]]  # hidden raw positions [lo, hi), sorted

    @classmethod
    def from_features(cls, mm_features: Sequence[Any], num_q: int) -> RequestImages:
        """From vLLM's ``MultiModalFeatureSpec`` list of a request."""
        spans = sorted(
            ImageSpan(p.offset, p.offset + p.length, f.identifier)
            for f in mm_features
            for p in [f.mm_position]
        )
        return cls(spans, hidden_intervals([(s.start, s.end) for s in spans], num_q))


class VisionInputsBuilder:
    """Builds :class:`VisionInputs` per step; caches per-request images and adaptor outputs."""

    def __init__(
        self,
        num_q: int,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device,
        adapt_images: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        features: FeatureCache,
        by_intervals: bool,
    ) -> None:
        self.num_q = num_q
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.device = device
        self.adapt_images = adapt_images
        self.features = features
        self.by_intervals = by_intervals
        self._requests: dict[str, RequestImages] = {}

    def request(self, req_id: str, mm_features: Callable[[str], Sequence[Any]]) -> RequestImages:
        images = self._requests.get(req_id)
        if images is None:
            images = self._requests[req_id] = RequestImages.from_features(
                mm_features(req_id), self.num_q
            )
        return images

    def forget_finished(self, live: Mapping[str, Any]) -> None:
        """Drop requests vLLM no longer holds (called when the cache outgrows the live set)."""
        if len(self._requests) > 2 * len(live) + 64:
            self._requests = {r: v for r, v in self._requests.items() if r in live}

    def build(
        self,
        req_ids: Sequence[str],
        num_computed: np.ndarray,
        query_start_loc: np.ndarray,
        num_tokens: int,
        mm_features: Callable[[str], Sequence[Any]],
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> VisionInputs | None:
        """Vision inputs of the first pass (a row per token) and later steps (per request)."""
        num_reqs = len(query_start_loc) - 1
        images = [self.request(req_ids[r], mm_features) for r in range(num_reqs)]
        windows = []  # (token rows lo..hi, first draft position, spans) of requests with images
        for r in range(num_reqs):
            if images[r].spans:
                lo, hi = int(query_start_loc[r]), int(query_start_loc[r + 1])
                windows.append((lo, hi, int(num_computed[r]), images[r].spans))
        if not windows:  # text only: no image feature anywhere (the model uses zeros)
            return None
        intervals = self._hidden_intervals(images) if self.by_intervals else None
        self._adapt(
            [
                s
                for lo, hi, first, spans in windows
                for s in spans
                if first + hi - lo > s.start - 1 and first < s.end - 1
            ],
            encoder_cache,
        )

        global_index = torch.zeros(num_tokens, dtype=torch.long)
        compressed_index = torch.full((num_tokens,), -1, dtype=torch.long)
        hidden = torch.zeros(num_tokens, dtype=torch.bool)
        rows: list[torch.Tensor] = [torch.zeros(1, self.hidden_size, device=self.device)]
        num_rows = 1
        in_images = False
        for lo, hi, first, spans in windows:
            if first >= spans[-1].end - 1:  # decoding: every position is text after the images
                global_index[lo:hi] = num_rows
                rows.append(self._feature(spans[-1])[-1:])
                num_rows += 1
                continue
            layout = draft_layout(
                [(s.start, s.end) for s in spans], self.num_q, first, first + hi - lo
            )
            used = int(torch.maximum(layout.image, layout.global_image).max()) + 1
            base = num_rows + self.num_q * torch.arange(max(used, 1))
            rows.extend(self._feature(span) for span in spans[:used])
            num_rows += self.num_q * used
            g = layout.global_image
            global_index[lo:hi] = torch.where(g >= 0, base[g.clamp(min=0)] + self.num_q - 1, 0)
            image = layout.image.clamp(min=0)
            compressed_index[lo:hi] = torch.where(
                layout.is_compressed, base[image] + layout.slot, -1
            )
            hidden[lo:hi] = layout.is_hidden
            in_images |= bool((layout.image >= 0).any())

        features = torch.cat(rows).to(self.dtype)
        step_index = global_index[torch.from_numpy(query_start_loc[1:] - 1).long()]
        first_pass = VisionContext(
            features,
            global_index.to(self.device),
            compressed_index.to(self.device) if in_images else None,
            hidden.to(self.device) if in_images and intervals is None else None,
            intervals,
        )
        step = VisionContext(features, step_index.to(self.device), hidden_intervals=intervals)
        return VisionInputs(first_pass, step)

    def _adapt(self, spans: list[ImageSpan], encoder_cache: Mapping[str, torch.Tensor]) -> None:
        """Run the adaptor, in one varlen call, on images whose encoder output is at hand."""
        todo = {
            s.key: encoder_cache[s.key]
            for s in spans
            if s.key not in self.features and s.key in encoder_cache
        }
        if not todo:
            return
        lengths = torch.tensor([0] + [e.shape[0] for e in todo.values()], device=self.device)
        out = self.adapt_images(torch.cat(list(todo.values())), lengths.cumsum(0).to(torch.int32))
        for key, value in zip(todo, out, strict=True):
            self.features.put(key, value)

    def _feature(self, span: ImageSpan) -> torch.Tensor:
        value = self.features.get(span.key)
        if value is None:
            logger.warning_once(
                "ViSpec: the adaptor output of a prefix-cached image was evicted from the "
                "feature cache (%d MiB); the draft uses a zero image feature for it. Output is "
                "unchanged, acceptance may drop: raise VLLM_VISPEC_FEATURE_CACHE_MIB.",
                self.features.capacity_bytes >> 20,
            )
            value = torch.zeros(self.num_q, self.hidden_size, device=self.device)
        return value

    def _hidden_intervals(
        self, images: list[RequestImages]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden raw positions of every request of the batch, for the attention that skips them.

        All of a request's images count, also those of earlier chunks or prefix-cache hits: the
        attention reads the whole cached context.
        """
        starts = [lo for r in images for lo, _ in r.hidden]
        ends = [hi for r in images for _, hi in r.hidden]
        cu = np.cumsum([0] + [len(r.hidden) for r in images]).tolist()
        table = torch.tensor([starts, ends], dtype=torch.int32).to(self.device)
        return table[0], table[1], torch.tensor(cu, dtype=torch.int32).to(self.device)
