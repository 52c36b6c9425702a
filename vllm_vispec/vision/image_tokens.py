"""EagleVLM and SpecVLM: an image's positions read image tokens in place of token embeddings.

EagleVLM keeps every image position, each reading its image embedding from vLLM's encoder
cache. SpecVLM's elastic compressor turns each image into its chosen count of tokens (kept in
the feature cache for prefix-cache hits), read at the image's last positions; the image's other
positions are unseen.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from vllm.logger import init_logger

from vllm_vispec.draft.inputs import VisionInputs
from vllm_vispec.layout import Span, draft_layout, unseen_intervals
from vllm_vispec.vision.images import ImageSpan, RequestImages, Window
from vllm_vispec.vision.strategy import ImageStrategy

logger = init_logger(f"vllm.{__name__}")

# SpecVLM: images [n_i, H] and the prompt's text ids before each -> per image the compressor's
# choice and its tokens [m_i, H]
CompressImages = Callable[
    [Sequence[torch.Tensor], Sequence[torch.Tensor]], list[tuple[str, torch.Tensor]]
]


class ImageTokens(ImageStrategy):
    """Rows whose next token is one of an image's kept tokens read that token."""

    def kept(self, spans: Sequence[ImageSpan]) -> list[int]:
        """Visible positions per image."""
        raise NotImplementedError

    def tokens(
        self, span: ImageSpan, encoder_cache: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | None:
        """An image's kept tokens [m, H], None when they are not at hand."""
        raise NotImplementedError

    def rows(
        self,
        images: list[RequestImages],
        windows: list[Window],
        query_start_loc: np.ndarray,
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> VisionInputs | None:
        num_tokens = int(query_start_loc[-1])
        index = torch.full((num_tokens,), -1, dtype=torch.long)
        unseen = torch.zeros(num_tokens, dtype=torch.bool)
        rows: list[torch.Tensor] = []
        num_rows = 0
        for lo, hi, first, spans in windows:
            if first >= spans[-1].end - 1:  # decoding: past every image
                continue
            layout = draft_layout(
                [(s.start, s.end) for s in spans], self.kept(spans), first, first + hi - lo
            )
            unseen[lo:hi] = layout.is_unseen
            # Only the images this window's rows reach: earlier ones' encoder output is gone.
            for i in layout.image[layout.is_compressed].unique().tolist():
                tokens = self.tokens(spans[i], encoder_cache)
                if tokens is None:
                    logger.warning_once(
                        "ViSpec: an image's tokens were gone when the EagleVLM/SpecVLM draft "
                        "read them; its token embeddings stand in (output unchanged, "
                        "acceptance may drop)"
                    )
                    continue
                at = (layout.image == i) & layout.is_compressed
                index[lo:hi][at] = num_rows + layout.slot[at]
                rows.append(tokens)
                num_rows += tokens.shape[0]
        # The skipping attentions need the unseen intervals also once every row is past them.
        intervals = self.unseen_intervals(images) if self.by_intervals else None
        if not rows and not unseen.any() and (intervals is None or not len(intervals[0])):
            return None
        index = index.to(self.device)
        table = torch.cat(rows).to(self.dtype) if rows else None
        return VisionInputs(
            global_rows=None,
            compressed_rows=None if table is None else table[index.clamp(min=0)],
            compressed=None if table is None else index >= 0,
            unseen=unseen.to(self.device) if unseen.any() and not self.by_intervals else None,
            step_global_rows=None,
            unseen_intervals=intervals,
        )


class EagleVLMImages(ImageTokens):
    """Every image position reads its image embedding (nothing unseen, nothing cached)."""

    def describe(self) -> str:
        return "EagleVLM draft: its image positions read their image embeddings"

    def request_images(self, state: Any) -> RequestImages:
        return RequestImages.from_state(state, None, compresses=False)

    def unseen(self, images: RequestImages) -> list[Span]:
        return images.unseen

    def kept(self, spans: Sequence[ImageSpan]) -> list[int]:
        return [s.end - s.start for s in spans]

    def tokens(
        self, span: ImageSpan, encoder_cache: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | None:
        return self.image_rows(span, encoder_cache) if span.key in encoder_cache else None


class SpecVLMImages(ImageTokens):
    """The compressor's tokens per image and prompt prefix (the gate reads the text before
    the image), kept in the feature cache; its choices are counted."""

    def __init__(
        self,
        compress_images: CompressImages,
        compressors: Sequence[str],
        compression: int,
        resampler_queries: int,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.compress_images = compress_images
        self.compressors = tuple(compressors)
        self.compression = compression
        self.resampler_queries = resampler_queries
        self.choices: collections.Counter[str] = collections.Counter()  # per image

    def describe(self) -> str:
        chooser = (
            "the gate picks one of " + "/".join(self.compressors)
            if len(self.compressors) > 1
            else self.compressors[0]
        )
        return (
            f"SpecVLM draft: each image passes the elastic compressor ({chooser}; "
            f"{self.compression}x for prune/pool/conv, {self.resampler_queries} resampler "
            "queries), its tokens kept for prefix-cache hits in up to "
            f"{self.features.capacity_bytes >> 20} MiB (vispec.feature_cache_mib)"
        )

    def request_images(self, state: Any) -> RequestImages:
        return RequestImages.from_state(state, None, compresses=True)

    def unseen(self, images: RequestImages) -> list[Span]:
        """By the compressor's choices (an image whose choice is gone counts as dropped)."""
        return unseen_intervals([(s.start, s.end) for s in images.spans], self.kept(images.spans))

    def kept(self, spans: Sequence[ImageSpan]) -> list[int]:
        out = []
        for s in spans:
            tokens = self.features.get(s.feature_key)
            out.append(0 if tokens is None else tokens.shape[0])
        return out

    def tokens(
        self, span: ImageSpan, encoder_cache: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | None:
        return self.features.get(span.feature_key)

    def prepare(
        self,
        reached: list[tuple[RequestImages, ImageSpan]],
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> None:
        """Run the compressor on images whose encoder output is at hand, once per image and
        prefix."""
        todo = {
            span.feature_key: (
                self.image_rows(span, encoder_cache),
                torch.from_numpy(images.context(span)).to(self.device),
            )
            for images, span in reached
            if span.feature_key not in self.features and span.key in encoder_cache
        }
        if not todo:
            return
        images_, contexts = zip(*todo.values(), strict=True)
        for key, (choice, tokens) in zip(
            todo, self.compress_images(images_, contexts), strict=True
        ):
            self.features.put(key, tokens)
            self.choices[choice] += 1
