"""ViSpec: each image becomes num_q adaptor outputs, num_q - 1 compressed tokens at the image's
last positions and one global feature that every later text row adds (its other positions are
unseen)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from vllm.logger import init_logger

from vllm_vispec.draft.inputs import VisionInputs
from vllm_vispec.layout import Span, draft_layout
from vllm_vispec.vision.images import ImageSpan, RequestImages, Window
from vllm_vispec.vision.strategy import ImageStrategy

logger = init_logger(f"vllm.{__name__}")

# Images [sum n_i, H] back to back and cu_seqlens [B + 1] -> [B, num_q, H]
AdaptImages = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ViSpecImages(ImageStrategy):
    """Adaptor outputs per image, kept in the feature cache for prefix-cache hits."""

    def __init__(self, num_q: int, adapt_images: AdaptImages, **common: Any) -> None:
        super().__init__(**common)
        self.num_q = num_q
        self.adapt_images = adapt_images

    def describe(self) -> str:
        per_image = self.num_q * self.hidden_size * self.dtype.itemsize
        return (
            f"ViSpec: adaptor outputs of up to {self.features.capacity_bytes >> 20} MiB of "
            f"images are kept for prefix-cache hits ({per_image} bytes an image, about "
            f"{self.features.capacity_bytes // per_image} images; vispec.feature_cache_mib)"
        )

    def request_images(self, state: Any) -> RequestImages:
        return RequestImages.from_state(state, self.num_q, compresses=False)

    def unseen(self, images: RequestImages) -> list[Span]:
        return images.unseen

    def prepare(
        self,
        reached: list[tuple[RequestImages, ImageSpan]],
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> None:
        """Run the adaptor, in one varlen call, on images whose encoder output is at hand."""
        todo = {
            s.feature_key: self.image_rows(s, encoder_cache)
            for _, s in reached
            if s.feature_key not in self.features and s.key in encoder_cache
        }
        if not todo:
            return
        lengths = torch.tensor([0] + [e.shape[0] for e in todo.values()], device=self.device)
        out = self.adapt_images(torch.cat(list(todo.values())), lengths.cumsum(0).to(torch.int32))
        for key, value in zip(todo, out, strict=True):
            self.features.put(key, value)

    def rows(
        self,
        images: list[RequestImages],
        windows: list[Window],
        query_start_loc: np.ndarray,
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> VisionInputs:
        """Per row: the global feature it adds, the compressed token it carries, if any, and
        whether it is unseen; the later steps' global rows (one per request)."""
        intervals = self.unseen_intervals(images) if self.by_intervals else None
        num_tokens = int(query_start_loc[-1])
        global_index = torch.zeros(num_tokens, dtype=torch.long)
        compressed_index = torch.full((num_tokens,), -1, dtype=torch.long)
        unseen = torch.zeros(num_tokens, dtype=torch.bool)
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
            unseen[lo:hi] = layout.is_unseen
            in_images |= bool((layout.image >= 0).any())

        features = torch.cat(rows).to(self.dtype)
        step_index = global_index[torch.from_numpy(query_start_loc[1:] - 1).long()]
        compressed = compressed_index.to(self.device) if in_images else None
        return VisionInputs(
            global_rows=features[global_index.to(self.device)],
            compressed_rows=None if compressed is None else features[compressed.clamp(min=0)],
            compressed=None if compressed is None else compressed >= 0,
            unseen=unseen.to(self.device) if in_images and intervals is None else None,
            step_global_rows=features[step_index.to(self.device)],
            unseen_intervals=intervals,
        )

    def _feature(self, span: ImageSpan) -> torch.Tensor:
        value = self.features.get(span.feature_key)
        if value is None:
            logger.warning_once(
                "ViSpec: the adaptor output of a prefix-cached image was evicted from the "
                "feature cache (%d MiB); the draft uses a zero image feature for it. Output is "
                "unchanged, acceptance may drop: raise vispec.feature_cache_mib.",
                self.features.capacity_bytes >> 20,
            )
            value = torch.zeros(self.num_q, self.hidden_size, device=self.device)
        return value
