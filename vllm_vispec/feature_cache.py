"""Adaptor outputs kept per image hash, so that a prefix-cache hit (which skips the encoder)
still finds its image's compressed tokens and global feature."""

from __future__ import annotations

import collections

import torch


class FeatureCache:
    """LRU of adaptor outputs [num_q, H] by image hash, bounded in bytes."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.nbytes = 0
        self._items: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= _size(old)
        self._items[key] = value
        self.nbytes += _size(value)
        while self.nbytes > self.capacity_bytes and len(self._items) > 1:
            self.nbytes -= _size(self._items.popitem(last=False)[1])


def _size(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
