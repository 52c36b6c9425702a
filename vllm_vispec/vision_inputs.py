"""Per-pass vision inputs of the draft, and the builder that makes them once per ``propose()``.

The proposer hands the builder what vLLM knows about the batch (request ids, computed tokens,
each request's multimodal features, the encoder cache); the builder runs the adaptor on images
it has not seen, and returns :class:`VisionInputs` for the draft's first pass and later steps.
Data flows one way: the draft never reaches back into the proposer or the runner.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from vllm.logger import init_logger

from vllm_vispec.feature_cache import FeatureCache
from vllm_vispec.layout import draft_layout, hidden_intervals, image_spans

logger = init_logger(f"vllm.{__name__}")

Intervals = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# SpecVLM: images [n_i, H] and the prompt's text ids before each -> per image the compressor's
# choice and its tokens [m_i, H]
CompressImages = Callable[
    [Sequence[torch.Tensor], Sequence[torch.Tensor]], list[tuple[str, torch.Tensor]]
]


@dataclasses.dataclass
class VisionInputs:
    """Per-row vision inputs of one ``propose()``: its first pass has a row per scheduled token,
    its K-1 later steps a row per request (they are all text past the images)."""

    # [n, H] img_fc's image half applied to the global feature each row uses (zeros: no image;
    # None: a draft without img_fc)
    global_rows: torch.Tensor | None
    # [n, H] an image row where ``compressed`` [n] is set: ViSpec's compressed image token
    # (replaces fc's output), or EagleVLM's image embedding (replaces the token embedding)
    compressed_rows: torch.Tensor | None
    compressed: torch.Tensor | None
    hidden: torch.Tensor | None  # [n] bool: invisible to the draft's attention (``mark`` only)
    step_global_rows: torch.Tensor | None  # [B, H] the later steps' global rows
    # Per request, the hidden raw positions as intervals (start [S], end [S], cu [B + 1], int32),
    # for the attentions that skip them; None: nothing hidden or the ``mark`` attention.
    hidden_intervals: Intervals | None


class VisionBuffers:
    """The draft's vision inputs at fixed addresses.

    A compiled draft or a captured CUDA graph reads tensors, never Python state, so the
    proposer writes each ``propose()``'s rows here once (:meth:`write`) and the draft reads the
    first rows it runs on. After every forward the draft calls :meth:`advance`, which puts the
    later steps' rows in place: after the first pass they are what the steps read, and repeating
    it is harmless. Sizes are fixed (the proposer's token and request capacity), so the copies
    are the same in every pass and capture.
    """

    def __init__(
        self, max_tokens: int, max_reqs: int, hidden_size: int, dtype: torch.dtype, device: Any
    ) -> None:
        self.max_reqs = max_reqs
        self.global_rows = torch.zeros(max_tokens, hidden_size, dtype=dtype, device=device)
        self.compressed_rows = torch.zeros_like(self.global_rows)
        self.compressed = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self.hidden = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self.step_global_rows = torch.zeros(max_reqs, hidden_size, dtype=dtype, device=device)
        self.hidden_intervals: Intervals | None = None  # read by the (eager) skipping attention
        self._written = 0  # first-pass rows the last write may have set

    def write(self, inputs: VisionInputs | None) -> None:
        """Install one ``propose()``'s inputs (None: a text-only batch, no image feature)."""
        if self._written:
            n = self._written
            self.global_rows[:n].zero_()
            self.compressed[:n].zero_()
            self.hidden[:n].zero_()
            self._written = 0
        self.hidden_intervals = None
        if inputs is None or inputs.step_global_rows is None:
            self.step_global_rows.zero_()
        if inputs is None:
            return
        rows = (inputs.global_rows, inputs.compressed, inputs.hidden)
        n = next((len(t) for t in rows if t is not None), 0)
        if inputs.global_rows is not None:
            self.global_rows[:n].copy_(inputs.global_rows)
        if inputs.compressed is not None:
            self.compressed_rows[:n].copy_(inputs.compressed_rows)
            self.compressed[:n].copy_(inputs.compressed)
        if inputs.hidden is not None:
            self.hidden[:n].copy_(inputs.hidden)
        if inputs.step_global_rows is not None:
            b = inputs.step_global_rows.shape[0]
            self.step_global_rows[:b].copy_(inputs.step_global_rows)
            self.step_global_rows[b:].zero_()
        self.hidden_intervals = inputs.hidden_intervals
        self._written = max(n, self.max_reqs)

    def tree_rows(self, requests: torch.Tensor, top_k: int) -> None:
        """Rows of a tree pass: ``top_k`` text nodes per request of ``requests`` (batch rows)."""
        n = requests.shape[0] * top_k
        self.global_rows[:n].copy_(self.step_global_rows[requests].repeat_interleave(top_k, 0))
        self.compressed[:n].zero_()
        self.hidden[:n].zero_()
        self._written = max(self._written, n)  # the next write clears these rows too

    def advance(self) -> None:
        """After a forward: the later steps' rows (one per request) take the first rows."""
        self.global_rows[: self.max_reqs].copy_(self.step_global_rows)
        self.compressed[: self.max_reqs].zero_()
        self.hidden[: self.max_reqs].zero_()


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
    hidden: list[tuple[int, int]]  # hidden raw positions [lo, hi), sorted (ViSpec, EagleVLM)
    prompt: np.ndarray | None = None  # the prompt's token ids (SpecVLM's gate reads its text)

    @classmethod
    def from_state(cls, state: Any, num_q: int | None, compresses: bool) -> RequestImages:
        """From vLLM's request state (its ``MultiModalFeatureSpec`` list, and its prompt when
        a compressor chooses per image)."""
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
            return cls(spans, hidden_intervals([(s.start, s.end) for s in spans], num_q))
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


class VisionInputsBuilder:
    """Builds :class:`VisionInputs` per step; caches per-request images and adaptor outputs.

    Three kinds of draft: ViSpec (``adapt_images``: adaptor outputs per image, kept in
    ``features``), EagleVLM (neither callable, ``num_q`` None: each image position reads its
    embedding from the encoder output), SpecVLM (``compress_images``: the compressor's tokens
    per image, kept in ``features``, at the image's last positions; the rest hidden).
    """

    def __init__(
        self,
        num_q: int | None,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device,
        adapt_images: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
        features: FeatureCache,
        by_intervals: bool,
        compress_images: CompressImages | None = None,
    ) -> None:
        self.num_q = num_q
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.device = device
        self.adapt_images = adapt_images
        self.features = features
        self.by_intervals = by_intervals
        self.compress_images = compress_images
        self.choices: collections.Counter[str] = collections.Counter()  # SpecVLM, per image
        self._requests: dict[str, RequestImages] = {}

    def request(self, req_id: str, request_state: Callable[[str], Any]) -> RequestImages:
        """The request's images, read from vLLM's request state once per request."""
        images = self._requests.get(req_id)
        if images is None:
            images = self._requests[req_id] = RequestImages.from_state(
                request_state(req_id), self.num_q, self.compress_images is not None
            )
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
        request_state: Callable[[str], Any],
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> tuple[list[RequestImages], list[tuple[int, int, int, list[ImageSpan]]]]:
        """Run the adaptor on the images the rows reach whose output is not cached yet (the
        encoder output is at hand while vLLM computes the image), also in steps that draft
        nothing; each request's images and the windows (rows lo..hi, first draft position,
        spans) of the requests with images."""
        num_reqs = len(query_start_loc) - 1
        images = [self.request(req_ids[r], request_state) for r in range(num_reqs)]
        windows, with_images = [], []
        for r in range(num_reqs):
            if images[r].spans:
                lo, hi = int(query_start_loc[r]), int(query_start_loc[r + 1])
                windows.append((lo, hi, int(num_computed[r]), images[r].spans))
                with_images.append(r)
        reached = [
            (images[r], s)
            for r, (lo, hi, first, spans) in zip(with_images, windows, strict=True)
            for s in spans
            if first + hi - lo > s.start - 1 and first < s.end - 1
        ]
        if self.compress_images is not None:
            self._compress(reached, encoder_cache)
        else:
            self._adapt([s for _, s in reached], encoder_cache)
        return images, windows

    def build(
        self,
        req_ids: Sequence[str],
        num_computed: np.ndarray,
        query_start_loc: np.ndarray,
        num_tokens: int,
        request_state: Callable[[str], Any],
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> VisionInputs | None:
        """Vision inputs of the first pass (a row per token) and later steps (per request)."""
        images, windows = self.adapt(
            req_ids, num_computed, query_start_loc, request_state, encoder_cache
        )
        if not windows:  # text only: no image feature anywhere (the model uses zeros)
            return None
        if self.adapt_images is None:
            return self._image_tokens(images, windows, num_tokens, encoder_cache)
        intervals = self._hidden_intervals(images) if self.by_intervals else None

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
        compressed = compressed_index.to(self.device) if in_images else None
        return VisionInputs(
            global_rows=features[global_index.to(self.device)],
            compressed_rows=None if compressed is None else features[compressed.clamp(min=0)],
            compressed=None if compressed is None else compressed >= 0,
            hidden=hidden.to(self.device) if in_images and intervals is None else None,
            step_global_rows=features[step_index.to(self.device)],
            hidden_intervals=intervals,
        )

    def _image_tokens(
        self,
        images: list[RequestImages],
        windows: list[tuple[int, int, int, list[ImageSpan]]],
        num_tokens: int,
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> VisionInputs | None:
        """EagleVLM's rows: where a row's next token is one of an image's kept tokens, that
        token (the image embedding there, or SpecVLM's compressed token) stands for its token
        embedding; SpecVLM hides the image's other positions."""
        index = torch.full((num_tokens,), -1, dtype=torch.long)
        hidden = torch.zeros(num_tokens, dtype=torch.bool)
        rows: list[torch.Tensor] = []
        num_rows = 0
        for lo, hi, first, spans in windows:
            if first >= spans[-1].end - 1:  # decoding: past every image
                continue
            layout = draft_layout(
                [(s.start, s.end) for s in spans], self._kept(spans), first, first + hi - lo
            )
            hidden[lo:hi] = layout.is_hidden
            # Only the images this window's rows reach: earlier ones' encoder output is gone.
            for i in layout.image[layout.is_compressed].unique().tolist():
                tokens = self._tokens(spans[i], encoder_cache)
                if tokens is None:
                    continue
                at = (layout.image == i) & layout.is_compressed
                index[lo:hi][at] = num_rows + layout.slot[at]
                rows.append(tokens)
                num_rows += tokens.shape[0]
        # The skipping attentions need the hidden intervals also once every row is past them.
        intervals = self._hidden_intervals(images) if self.by_intervals else None
        if not rows and not hidden.any() and (intervals is None or not len(intervals[0])):
            return None
        index = index.to(self.device)
        table = torch.cat(rows).to(self.dtype) if rows else None
        return VisionInputs(
            global_rows=None,
            compressed_rows=None if table is None else table[index.clamp(min=0)],
            compressed=None if table is None else index >= 0,
            hidden=hidden.to(self.device) if hidden.any() and not self.by_intervals else None,
            step_global_rows=None,
            hidden_intervals=intervals,
        )

    def _tokens(self, span: ImageSpan, encoder_cache: Mapping[str, torch.Tensor]) -> Any:
        """An image's EagleVLM tokens [m, H], None when they are not at hand."""
        if self.compress_images is not None:
            tokens = self.features.get(span.feature_key)
        elif span.key in encoder_cache:
            tokens = encoder_cache[span.key][span.rows[0] : span.rows[1], : self.hidden_size]
        else:
            tokens = None
        if tokens is None:  # not expected: vLLM runs the encoder one token ahead of the draft
            logger.warning_once(
                "ViSpec: an image's tokens were gone when the EagleVLM/SpecVLM draft read them; "
                "its token embeddings stand in (output unchanged, acceptance may drop)"
            )
        return tokens

    def _kept(self, spans: Sequence[ImageSpan]) -> list[int]:
        """Visible positions per image: all of them (EagleVLM), the compressor's tokens
        (SpecVLM; an image whose choice is gone counts as dropped)."""
        if self.compress_images is None:
            return [s.end - s.start for s in spans]
        kept = []
        for s in spans:
            tokens = self.features.get(s.feature_key)
            kept.append(0 if tokens is None else tokens.shape[0])
        return kept

    def _compress(
        self,
        reached: list[tuple[RequestImages, ImageSpan]],
        encoder_cache: Mapping[str, torch.Tensor],
    ) -> None:
        """Run SpecVLM's compressor on images whose encoder output is at hand, once per image
        and prefix."""
        todo = {
            span.feature_key: (
                encoder_cache[span.key][span.rows[0] : span.rows[1], : self.hidden_size],
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

    def _adapt(self, spans: list[ImageSpan], encoder_cache: Mapping[str, torch.Tensor]) -> None:
        """Run the adaptor, in one varlen call, on images whose encoder output is at hand."""
        if self.adapt_images is None:
            return
        # The first hidden_size channels are what the target scatters into its input embeddings;
        # Qwen3-VL's encoder output carries its DeepStack levels' features after them.
        todo = {
            s.feature_key: encoder_cache[s.key][s.rows[0] : s.rows[1], : self.hidden_size]
            for s in spans
            if s.feature_key not in self.features and s.key in encoder_cache
        }
        if not todo:
            return
        lengths = torch.tensor([0] + [e.shape[0] for e in todo.values()], device=self.device)
        out = self.adapt_images(torch.cat(list(todo.values())), lengths.cumsum(0).to(torch.int32))
        for key, value in zip(todo, out, strict=True):
            self.features.put(key, value)

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

    def _hidden_intervals(self, images: list[RequestImages]) -> Intervals:
        """Hidden raw positions of every request of the batch, for the attention that skips them.

        All of a request's images count, also those of earlier chunks or prefix-cache hits: the
        attention reads the whole cached context.
        """
        if self.compress_images is not None:  # by the compressor's choices
            spans = [[(s.start, s.end) for s in r.spans] for r in images]
            hidden = [
                hidden_intervals(sp, self._kept(r.spans))
                for sp, r in zip(spans, images, strict=True)
            ]
        else:
            hidden = [r.hidden for r in images]
        starts = [lo for h in hidden for lo, _ in h]
        ends = [hi for h in hidden for _, hi in h]
        cu = np.cumsum([0] + [len(h) for h in hidden]).tolist()
        table = torch.tensor([starts, ends], dtype=torch.int32).to(self.device)
        return table[0], table[1], torch.tensor(cu, dtype=torch.int32).to(self.device)
