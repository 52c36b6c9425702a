"""Triton kernels with readable PyTorch references (``naive.py`` beside each kernel).

Importable only as ``vllm_vispec.kernels`` (setup.py maps this folder there). Each op's
``__init__`` dispatches to Triton for CUDA tensors and to PyTorch otherwise; Triton itself is
imported only when a kernel is launched.

- ``adaptor``: the vision adaptor with k_proj absorbed into its queries (x read without
  projecting it).
- ``attention``: the draft's paged attention that skips unseen image positions.
- ``tree``: tree-masked paged attention (a bitmask of ancestors per query row) and in-place KV
  slot compaction after verification.
"""

from .adaptor import absorb_queries, naive_vision_adaptor, vision_adaptor
from .attention import draft_paged_attention, naive_draft_paged_attention, split_kv_cache
from .tree import compact_kv, tree_paged_attention

__all__ = [
    "absorb_queries",
    "compact_kv",
    "draft_paged_attention",
    "naive_draft_paged_attention",
    "naive_vision_adaptor",
    "split_kv_cache",
    "tree_paged_attention",
    "vision_adaptor",
]
