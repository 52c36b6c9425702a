"""Launch-time helpers shared by the Triton kernels (imported only where Triton is used)."""

from __future__ import annotations

import torch
import triton


def upcast_dot_operands(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` operands of ``dtype`` must be cast to fp32 inside the kernel.

    Triton's CPU interpreter (TRITON_INTERPRET=1, how the tests run the kernels) stores bf16 as
    uint16 and its ``tl.dot`` multiplies the bit patterns (triton-lang/triton#11584). bf16 products
    are exact in fp32, so the cast only costs speed; compiled kernels keep bf16 tensor-core dots.
    """
    return dtype == torch.bfloat16 and bool(triton.knobs.runtime.interpret)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot ``input_precision``: exact fp32 products when the operands are (or become) fp32."""
    return "ieee" if dtype == torch.float32 or upcast_dot_operands(dtype) else "tf32"
