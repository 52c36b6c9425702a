"""The vision-aware proposer: vLLM's V1 EAGLE proposer plus ViSpec's image handling.

vLLM's EAGLE loop (first pass over the scheduled tokens, then K-1 single-token steps) is reused
as it is. Around it this class

* finds each request's images from its multimodal features (offset, length, hash),
* runs the vision adaptor once per image on the whole image's encoder output (the runner's
  encoder cache, so an image split across prefill chunks works) and keeps the result in an
  LRU keyed by the image hash, so a later prefix-cache hit on the image, which skips the
  encoder, still finds the global feature,
* tells the draft model, per token, which global feature applies, which positions carry a
  compressed image token and which are hidden (:class:`~vllm_vispec.model.VisionContext`),
* feeds the draft raw 1-D positions, also on M-RoPE targets, so that RoPE and KV slots follow
  the raw token index (vLLM's default would use the M-RoPE temporal row).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import torch
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.logger import init_logger
from vllm.v1.spec_decode.eagle import EagleProposer

from vllm_vispec.model import EagleViSpecForCausalLM, VisionContext
from vllm_vispec.spans import draft_layout, hidden_intervals

logger = init_logger(f"vllm.{__name__}")

# Adaptor outputs kept for prefix-cache hits: num_q * H values per image (28 KiB at 7B, bf16).
FEATURE_CACHE_IMAGES = 8192


@dataclasses.dataclass(frozen=True, order=True)
class ImageSpan:
    """One image (or video) of a request: tokens [start, end) of the target sequence."""

    start: int
    end: int
    key: str  # the encoder-cache identifier (image hash)


class FeatureCache:
    """LRU of adaptor outputs [num_q, H] by image hash."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class ViSpecProposer(EagleProposer):
    """EagleProposer for ViSpec drafts; installed by the plugin only for those drafts."""

    def __init__(self, vllm_config, device: torch.device, runner=None) -> None:
        super().__init__(vllm_config, device, runner)
        self.runner = runner
        self.target_uses_mrope = vllm_config.model_config.uses_mrope
        self.features = FeatureCache(FEATURE_CACHE_IMAGES)
        self._step_context: VisionContext | None = None
        self._spans: dict[str, list[ImageSpan]] = {}

    def load_model(self, target_model: torch.nn.Module) -> None:
        super().load_model(target_model)
        draft = self.model.unwrap() if hasattr(self.model, "unwrap") else self.model
        assert isinstance(draft, EagleViSpecForCausalLM)
        self.draft = draft
        self.num_q = draft.num_q

    # -- hooks into vLLM's EAGLE loop -------------------------------------------------------

    def _run_eagerly(self) -> None:
        """Undo vLLM's opt-in breakable CUDA-graph wrapper (VLLM_USE_BREAKABLE_CUDAGRAPH): a
        captured graph would replay stale vision inputs, which are set per step from Python."""
        if isinstance(self.model, BreakableCUDAGraphWrapper):
            logger.info_once("ViSpec: the draft runs outside breakable CUDA graphs")
            self.model = self.model.unwrap()

    def dummy_run(self, *args, **kwargs):
        self._run_eagerly()
        return super().dummy_run(*args, **kwargs)

    def propose(self, **kwargs) -> torch.Tensor:
        """vLLM's propose (the runner passes every argument by keyword) with vision inputs."""
        self._run_eagerly()
        first, self._step_context = self._vision_contexts(
            kwargs["common_attn_metadata"].query_start_loc_cpu.numpy(),
            kwargs["target_token_ids"].shape[0],
        )
        self.draft.set_vision_context(first)
        try:
            return super().propose(**kwargs)
        finally:
            self.draft.set_vision_context(None)

    def prepare_next_token_ids_padded(
        self, sampled_token_ids, requests, gpu_input_batch, discard_request_mask
    ):
        """Pair a partial prefill chunk's last position with the next prompt token.

        vLLM pairs it with the prompt's last token: harmless for the output (that draft is
        discarded) but the draft KV written there then differs from a whole-prompt pass, and
        every later position attends to it. ViSpec's semantics (and the reference) need the
        true next token.
        """
        next_ids, valid = super().prepare_next_token_ids_padded(
            sampled_token_ids, requests, gpu_input_batch, discard_request_mask
        )
        partial = np.nonzero(self.runner.discard_request_mask.np[: gpu_input_batch.num_reqs])[0]
        if len(partial):
            seq_lens = self.runner.optimistic_seq_lens_cpu
            tokens = [
                requests[gpu_input_batch.req_ids[i]].get_token_id(int(seq_lens[i])) for i in partial
            ]
            next_ids[torch.from_numpy(partial).to(next_ids.device)] = torch.tensor(
                tokens, dtype=next_ids.dtype
            ).to(next_ids.device)
        return next_ids, valid

    def set_inputs_first_pass(self, *args, **kwargs):
        out = super().set_inputs_first_pass(*args, **kwargs)
        if self.target_uses_mrope:
            # The runner's 1-D positions are the raw token index; vLLM would take M-RoPE row 0.
            num_tokens = out[0]
            self.positions[:num_tokens] = self.runner.positions[:num_tokens]
        return out

    def build_per_group_and_layer_attn_metadata(self, common_attn_metadata, draft_index=0):
        if draft_index > 0:
            # Steps after the first pass have one row per request.
            self.draft.set_vision_context(self._step_context)
        return super().build_per_group_and_layer_attn_metadata(
            common_attn_metadata, draft_index=draft_index
        )

    # -- image bookkeeping ------------------------------------------------------------------

    def _request_spans(self, req_id: str) -> list[ImageSpan]:
        """A request's images, sorted; cached per request id (its features never change)."""
        spans = self._spans.get(req_id)
        if spans is None:
            if len(self._spans) > 2 * len(self.runner.requests) + 64:
                self._spans = {r: s for r, s in self._spans.items() if r in self.runner.requests}
            features = self.runner.requests[req_id].mm_features
            spans = self._spans[req_id] = sorted(
                ImageSpan(
                    f.mm_position.offset, f.mm_position.offset + f.mm_position.length, f.identifier
                )
                for f in features
            )
        return spans

    def _adapt(self, spans: list[ImageSpan]) -> None:
        """Run the adaptor, in one varlen call, on images whose encoder output is at hand."""
        todo = {
            s.key: self.runner.encoder_cache[s.key]
            for s in spans
            if self.features.get(s.key) is None and s.key in self.runner.encoder_cache
        }
        if not todo:
            return
        lengths = torch.tensor([0] + [e.shape[0] for e in todo.values()], device=self.device)
        out = self.draft.adapt_images(
            torch.cat(list(todo.values())), lengths.cumsum(0).to(torch.int32)
        )
        for key, value in zip(todo, out, strict=True):
            self.features.put(key, value)

    def _feature(self, span: ImageSpan) -> torch.Tensor:
        value = self.features.get(span.key)
        if value is None:
            logger.warning_once(
                "ViSpec: the adaptor output of a prefix-cached image was evicted from the "
                "feature cache (%d images); the draft uses a zero image feature for it. Output "
                "is unchanged, acceptance may drop.",
                FEATURE_CACHE_IMAGES,
            )
            value = torch.zeros(self.num_q, self.hidden_size, device=self.device)
        return value

    def _vision_contexts(
        self, query_start_loc: np.ndarray, num_tokens: int
    ) -> tuple[VisionContext | None, VisionContext | None]:
        """Vision contexts of the first pass (a row per token) and later steps (per request)."""
        batch = self.runner.input_batch
        windows = []  # (token rows lo..hi, first draft position, spans) of requests with images
        for r in range(len(query_start_loc) - 1):
            spans = self._request_spans(batch.req_ids[r])
            if spans:
                lo, hi = int(query_start_loc[r]), int(query_start_loc[r + 1])
                windows.append((lo, hi, int(batch.num_computed_tokens_cpu[r]), spans))
        if not windows:  # text only: no image feature anywhere (the model uses zeros)
            return None, None
        intervals = (
            self._hidden_intervals(len(query_start_loc) - 1)
            if self.draft.attends_by_intervals
            else None
        )
        self._adapt(
            [
                s
                for lo, hi, first, spans in windows
                for s in spans
                if first + hi - lo > s.start - 1 and first < s.end - 1
            ]
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
        return first_pass, step

    def _hidden_intervals(self, num_reqs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden raw positions of every request of the batch, for the attention that skips them.

        All of a request's images count, also those of earlier chunks or prefix-cache hits: the
        attention reads the whole cached context.
        """
        req_ids = self.runner.input_batch.req_ids
        starts: list[int] = []
        ends: list[int] = []
        cu = [0]
        for r in range(num_reqs):
            spans = [(s.start, s.end) for s in self._request_spans(req_ids[r])]
            for lo, hi in hidden_intervals(spans, self.num_q):
                starts.append(lo)
                ends.append(hi)
            cu.append(len(starts))
        table = torch.tensor([starts, ends], dtype=torch.int32).to(self.device)
        return table[0], table[1], torch.tensor(cu, dtype=torch.int32).to(self.device)
