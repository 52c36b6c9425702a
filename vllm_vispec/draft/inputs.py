"""The draft's per-step inputs beyond vLLM's forward arguments, in one typed object.

vLLM calls a draft with token ids, positions and the target's hidden states. A ViSpec draft
also needs, per row, its image inputs (:class:`VisionInputs`, built by the proposer once per
``propose()``), the image positions its attention must leave out, and during a tree expansion
the pass's tree layout (:class:`TreePass`). The proposer writes them into the draft's
:class:`DraftInputs`; the draft's modules read them from there and from nowhere else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

# Raw positions the draft must not see, per request: start [S], end [S], cu [B + 1] (int32).
Intervals = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class TreePass:
    """The layout of one tree-expansion pass of the draft: each query row is a tree node that
    sees its request's context and its ancestors among the nodes already run (see
    :func:`vllm_vispec.kernels.tree_paged_attention` for the fields)."""

    slots: torch.Tensor  # [n] where each row's K/V is written
    query_start_loc: torch.Tensor
    block_table: torch.Tensor
    context_lens: torch.Tensor
    node_pos: torch.Tensor
    row_masks: torch.Tensor
    unseen: Intervals  # the context's unseen image positions (empty with the mark)


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
    unseen: torch.Tensor | None  # [n] bool: invisible to the draft's attention (``mark`` only)
    step_global_rows: torch.Tensor | None  # [B, H] the later steps' global rows
    # Per request, the unseen raw positions as intervals (start [S], end [S], cu [B + 1], int32),
    # for the attentions that skip them; None: nothing unseen or the ``mark`` attention.
    unseen_intervals: Intervals | None


class DraftInputs:
    """Everything a draft forward reads besides vLLM's arguments, in one object per draft.

    A compiled draft or a captured CUDA graph reads tensors, never Python state, so the
    proposer writes each ``propose()``'s rows here once (:meth:`write`) and the draft reads the
    first rows it runs on. After every forward the draft calls :meth:`advance`, which puts the
    later steps' rows in place once: after the first pass they are what the steps read. Sizes
    are fixed (the proposer's token and request capacity), so the copies are the same in every
    pass and capture.
    """

    def __init__(
        self, max_tokens: int, max_reqs: int, hidden_size: int, dtype: torch.dtype, device: Any
    ) -> None:
        self.max_reqs = max_reqs
        self.global_rows = torch.zeros(max_tokens, hidden_size, dtype=dtype, device=device)
        self.compressed_rows = torch.zeros_like(self.global_rows)
        self.compressed = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self.unseen = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self.step_global_rows = torch.zeros(max_reqs, hidden_size, dtype=dtype, device=device)
        self.unseen_intervals: Intervals | None = None  # read by the (eager) skipping attention
        self.tree_pass: TreePass | None = None  # set only while a tree pass runs (eager)
        self._written = 0  # first-pass rows the last write may have set
        self._advanced = False  # the later steps' rows are in place since the last write

    def write(self, inputs: VisionInputs | None) -> None:
        """Install one ``propose()``'s inputs (None: a text-only batch, no image feature)."""
        self._advanced = False
        if self._written:
            n = self._written
            self.global_rows[:n].zero_()
            self.compressed[:n].zero_()
            self.unseen[:n].zero_()
            self._written = 0
        self.unseen_intervals = None
        if inputs is None or inputs.step_global_rows is None:
            self.step_global_rows.zero_()
        if inputs is None:
            return
        rows = (inputs.global_rows, inputs.compressed, inputs.unseen)
        n = next((len(t) for t in rows if t is not None), 0)
        if inputs.global_rows is not None:
            self.global_rows[:n].copy_(inputs.global_rows)
        if inputs.compressed is not None:
            self.compressed_rows[:n].copy_(inputs.compressed_rows)
            self.compressed[:n].copy_(inputs.compressed)
        if inputs.unseen is not None:
            self.unseen[:n].copy_(inputs.unseen)
        if inputs.step_global_rows is not None:
            b = inputs.step_global_rows.shape[0]
            self.step_global_rows[:b].copy_(inputs.step_global_rows)
            self.step_global_rows[b:].zero_()
        self.unseen_intervals = inputs.unseen_intervals
        self._written = max(n, self.max_reqs)

    def begin_tree_pass(self, requests: torch.Tensor, top_k: int, tree_pass: TreePass) -> None:
        """Rows of a tree pass: ``top_k`` text nodes per request of ``requests`` (batch rows),
        laid out by ``tree_pass`` until :meth:`end_tree_pass`."""
        self.tree_pass = tree_pass
        self._advanced = False
        n = requests.shape[0] * top_k
        self.global_rows[:n].copy_(self.step_global_rows[requests].repeat_interleave(top_k, 0))
        self.compressed[:n].zero_()
        self.unseen[:n].zero_()
        self._written = max(self._written, n)  # the next write clears these rows too

    def end_tree_pass(self) -> None:
        self.tree_pass = None

    def advance(self) -> None:
        """After a forward: the later steps' rows (one per request) take the first rows; a
        no-op until the next write or tree pass once they have."""
        if self._advanced:
            return
        self._advanced = True
        self.global_rows[: self.max_reqs].copy_(self.step_global_rows)
        self.compressed[: self.max_reqs].zero_()
        self.unseen[: self.max_reqs].zero_()
