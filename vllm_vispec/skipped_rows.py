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
class Extension:
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
        return np.concatenate(
            [np.arange(a, b) for a, b in zip(self.starts, self.ends, strict=True)]
        )


class SkippedRows:
    """Per request, the draft inputs of the positions the draft has not seen yet."""

    def __init__(self, capacity_rows: int, row_bytes: int) -> None:
        self.capacity_rows = capacity_rows
        self.row_bytes = row_bytes
        self.num_rows = 0
        self.peak_rows = 0
        self.dropped_rows = 0  # rows of requests that left before drafting resumed
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
                self._drop(req_id)  # recomputed from elsewhere (preemption): start again
                segments = self._segments.setdefault(req_id, [])
            lo = int(offsets[i])
            segments.append(_Segment(int(starts[i]), token_ids[lo : lo + n], hidden[lo : lo + n]))
            self.num_rows += n
        self.peak_rows = max(self.peak_rows, self.num_rows)

    def take(self, req_ids: list[str], step_starts: np.ndarray) -> Extension | None:
        """The rows of the batch's requests whose kept positions end where this step starts;
        forgets them, and the rows of every other request (gone, or recomputed)."""
        rows, starts, ends, ids, hidden = [], [], [], [], []
        for row, req_id in enumerate(req_ids):
            segments = self._segments.pop(req_id, None)
            if not segments or _end(segments[-1]) != step_starts[row]:
                if segments:
                    self.dropped_rows += sum(len(s.token_ids) for s in segments)
                continue
            rows.append(row)
            starts.append(segments[0].start)
            ends.append(_end(segments[-1]))
            ids += [s.token_ids for s in segments]
            hidden += [s.hidden for s in segments]
        for req_id in list(self._segments):
            self._drop(req_id)
        self.num_rows = 0
        if not rows:
            return None
        return Extension(
            np.asarray(rows),
            np.asarray(starts),
            np.asarray(ends),
            torch.cat(ids),
            torch.cat(hidden),
        )

    def _drop(self, req_id: str) -> None:
        dropped = sum(len(s.token_ids) for s in self._segments.pop(req_id))
        self.num_rows -= dropped
        self.dropped_rows += dropped


def _end(segment: _Segment) -> int:
    return segment.start + len(segment.token_ids)
