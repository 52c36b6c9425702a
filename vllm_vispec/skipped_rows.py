"""The draft inputs of steps that drafted nothing, kept until drafting resumes.

When vLLM's batch-size schedule gives a step K = 0, vLLM's EAGLE proposer still runs the
draft's first pass, only to keep the draft's KV cache in step with the target. The ViSpec
proposer runs no draft pass then: it keeps what that pass would have read (per request and
position, the shifted token and the target's hidden state) and writes all of it into the draft's
KV in one batched pass when a step drafts again (SGLang's "draft extend"). The rows are bounded
by the proposer's own token capacity (``max_num_batched_tokens`` rows of ``hidden_size``, the
size of vLLM's draft input buffers), so one pass always holds them; a step that would go past
the bound writes the kept rows first.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass
class _Segment:
    """Consecutive positions [start, start + len) of one request: their draft inputs."""

    start: int
    token_ids: torch.Tensor  # [n] the token after each position (the draft's input token)
    hidden: torch.Tensor  # [n, H] the target's hidden state at each position


@dataclasses.dataclass
class CatchUp:
    """The rows of one catch-up pass, requests in batch order."""

    batch_rows: np.ndarray  # [R] each request's row in this step's input batch
    starts: np.ndarray  # [R] first kept position
    ends: np.ndarray  # [R] one past the last (the step's first position)
    token_ids: torch.Tensor  # [N]
    hidden: torch.Tensor  # [N, H]

    @property
    def query_start_loc(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.ends - self.starts)]).astype(np.int32)

    @property
    def positions(self) -> np.ndarray:
        return ranges(self.starts, self.ends - self.starts)


class SkippedRows:
    """Per request, the draft inputs of the positions the draft has not seen yet."""

    def __init__(self, capacity_rows: int, row_bytes: int) -> None:
        self.capacity_rows = capacity_rows
        self.row_bytes = row_bytes
        self.num_rows = 0
        self.peak_rows = 0
        self.dropped_rows = 0  # rows of requests that left before drafting resumed
        self.extensions = 0  # catch-up passes handed out by take()
        self.extended_rows = 0
        self._segments: dict[str, list[_Segment]] = {}

    def __bool__(self) -> bool:
        return bool(self._segments)

    def fits(self, num_rows: int) -> bool:
        return self.num_rows + num_rows <= self.capacity_rows

    def add(
        self,
        req_ids: list[str],
        starts: np.ndarray,
        lengths: np.ndarray,
        token_ids: torch.Tensor,
        hidden: torch.Tensor,
    ) -> None:
        """One step's rows, requests back to back (``lengths`` each, from ``starts``)."""
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for i, req_id in enumerate(req_ids):
            n = int(lengths[i])
            if n == 0:
                continue
            segments = self._segments.setdefault(req_id, [])
            if segments and _end(segments[-1]) != starts[i]:
                # Recomputed from elsewhere (preemption): start again.
                self.num_rows -= _count(segments)
                self.dropped_rows += _count(segments)
                segments.clear()
            lo = int(offsets[i])
            segments.append(_Segment(int(starts[i]), token_ids[lo : lo + n], hidden[lo : lo + n]))
            self.num_rows += n
        self.peak_rows = max(self.peak_rows, self.num_rows)

    def take(self, req_ids: list[str], step_starts: np.ndarray) -> CatchUp | None:
        """The rows of the batch's requests whose kept positions end where this step starts;
        forgets them, and the rows of every other request (gone, or recomputed)."""
        rows, starts, ends, ids, hidden = [], [], [], [], []
        for row, req_id in enumerate(req_ids):
            segments = self._segments.pop(req_id, None)
            if segments and _end(segments[-1]) == step_starts[row]:
                rows.append(row)
                starts.append(segments[0].start)
                ends.append(_end(segments[-1]))
                ids += [s.token_ids for s in segments]
                hidden += [s.hidden for s in segments]
            elif segments:
                self.dropped_rows += _count(segments)
        self.dropped_rows += sum(_count(s) for s in self._segments.values())
        self._segments.clear()
        self.num_rows = 0
        if not rows:
            return None
        extension = CatchUp(
            np.asarray(rows),
            np.asarray(starts),
            np.asarray(ends),
            torch.cat(ids),
            torch.cat(hidden),
        )
        self.extensions += 1
        self.extended_rows += len(extension.token_ids)
        return extension


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``starts[i], ..., starts[i] + lengths[i] - 1`` for every i, back to back."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(np.sum(lengths)))


def _count(segments: list[_Segment]) -> int:
    return sum(len(s.token_ids) for s in segments)


def _end(segment: _Segment) -> int:
    return segment.start + len(segment.token_ids)
