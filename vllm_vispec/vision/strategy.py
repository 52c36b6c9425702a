"""What a draft sees of a batch's images: the interface each draft kind implements once.

A strategy turns what vLLM knows about a step (request ids, computed tokens, each request's
multimodal features, the encoder cache) into the draft's :class:`~vllm_vispec.draft.inputs.
VisionInputs`. The steps every kind shares live here: reading a request's images once, finding
the images a step's rows reach, handing the attention the positions it must skip. What differs
is in three methods: :meth:`ImageStrategy.prepare` (run the adaptor or compressor while an
image's encoder output is at hand), :meth:`ImageStrategy.rows` (the step's per-row inputs) and
:meth:`ImageStrategy.unseen` (a request's positions the draft does not see).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vllm_vispec.draft.inputs import Intervals, VisionInputs
from vllm_vispec.feature_cache import FeatureCache
from vllm_vispec.layout import Span
from vllm_vispec.vision.images import ImageSpan, RequestImages, Window

RequestState = Callable[[str], Any]


class ImageStrategy:
    """Base of the per-kind strategies; caches each live request's :class:`RequestImages`."""

    def __init__(
        self,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device,
        features: FeatureCache,
        by_intervals: bool,
    ) -> None:
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.device = device
        self.features = features  # adaptor or compressor outputs kept for prefix-cache hits
        self.by_intervals = by_intervals  # the attention skips intervals (not the mark)
        self._requests: dict[str, RequestImages] = {}

    # -- per kind ------------------------------------------------------------------------------

    def describe(self) -> str:
        """One start-up log line: what the draft sees of an image and what is cached."""
        raise NotImplementedError

    def request_images(self, state: Any) -> RequestImages:
        """A request's images from vLLM's request state."""
        raise NotImplementedError

    def prepare(
        self,
        reached: list[tuple[RequestImages, ImageSpan]],
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> None:
        """Work on the images the step's rows reach while their encoder output exists."""

    def rows(
        self,
        images: list[RequestImages],
        windows: list[Window],
        query_start_loc: np.ndarray,
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> VisionInputs | None:
        """The step's vision inputs (first pass: a row per token of ``query_start_loc``'s
        requests; later steps: a row per request)."""
        raise NotImplementedError

    def unseen(self, images: RequestImages) -> list[Span]:
        """The request's raw positions the draft does not see, as sorted intervals."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    def request(self, req_id: str, request_state: RequestState) -> RequestImages:
        """The request's images, read from vLLM's request state once per request."""
        images = self._requests.get(req_id)
        if images is None:
            images = self._requests[req_id] = self.request_images(request_state(req_id))
        return images

    def forget_finished(self, live: Mapping[str, Any]) -> None:
        """Drop requests vLLM no longer holds (called when the cache outgrows the live set)."""
        if len(self._requests) > 2 * len(live) + 64:
            self._requests = {r: v for r, v in self._requests.items() if r in live}

    def adapt(
        self,
        req_ids: Sequence[str],
        num_computed: np.ndarray,
        query_start_loc: np.ndarray,
        request_state: RequestState,
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> tuple[list[RequestImages], list[Window]]:
        """:meth:`prepare` the images the rows reach (also in steps that draft nothing); each
        request's images and the windows of the requests with images."""
        num_reqs = len(query_start_loc) - 1
        images = [self.request(req_ids[r], request_state) for r in range(num_reqs)]
        windows: list[Window] = []
        reached = []
        for r in range(num_reqs):
            if not images[r].spans:
                continue
            lo, hi, first = (
                int(query_start_loc[r]),
                int(query_start_loc[r + 1]),
                int(num_computed[r]),
            )
            windows.append((lo, hi, first, images[r].spans))
            reached += [
                (images[r], s)
                for s in images[r].spans
                if first + hi - lo > s.start - 1 and first < s.end - 1
            ]
        self.prepare(reached, encoder_cache)
        return images, windows

    def build(
        self,
        req_ids: Sequence[str],
        num_computed: np.ndarray,
        query_start_loc: np.ndarray,
        request_state: RequestState,
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> VisionInputs | None:
        """The vision inputs of one ``propose()``; None for a text-only batch."""
        images, windows = self.adapt(
            req_ids, num_computed, query_start_loc, request_state, encoder_cache
        )
        if not windows:  # text only: no image feature anywhere (the model uses zeros)
            return None
        return self.rows(images, windows, query_start_loc, encoder_cache)

    def unseen_intervals(self, images: list[RequestImages]) -> Intervals:
        """Unseen raw positions of every request of the batch, for the attention that skips
        them. All of a request's images count, also those of earlier chunks or prefix-cache
        hits: the attention reads the whole cached context."""
        unseen = [self.unseen(r) for r in images]
        starts = [lo for h in unseen for lo, _ in h]
        ends = [hi for h in unseen for _, hi in h]
        cu = np.cumsum([0] + [len(h) for h in unseen]).tolist()
        table = torch.tensor([starts, ends], dtype=torch.int32).to(self.device)
        return table[0], table[1], torch.tensor(cu, dtype=torch.int32).to(self.device)

    def image_rows(
        self, span: ImageSpan, encoder_cache: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """An image's rows of the encoder output: the first hidden_size channels are what the
        target scatters into its input embeddings (Qwen3-VL appends its DeepStack levels)."""
        return encoder_cache[span.key][span.rows[0] : span.rows[1], : self.hidden_size]
