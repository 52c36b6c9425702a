"""The ``.venv034`` shim (``tools/vllm034_shim.py``): vLLM sees a usable Triton on the CPU
platform, and the interpreter gaps it fills stay filled (and still need filling)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import triton
import triton.language as tl
import triton.language.extra.libdevice as libdevice


@pytest.fixture(scope="module", autouse=True)
def _shim_applied() -> None:
    """The shim patches Triton when vLLM first imports ``vllm.triton_utils``."""
    import vllm.triton_utils  # noqa: F401


def test_vllm_uses_triton_on_the_cpu_platform() -> None:
    import triton.backends
    from vllm.platforms import current_platform
    from vllm.triton_utils import HAS_TRITON

    assert current_platform.is_cpu()
    assert HAS_TRITON
    assert "cpu" in triton.backends.backends
    assert os.environ["TRITON_INTERPRET"] == "1"


MASK_KERNEL = textwrap.dedent(
    """
    import torch
    import triton
    import triton.language as tl


    @triton.jit
    def masked_store(out_ptr, row_ptr, B: tl.constexpr):
        block = tl.arange(0, B)
        row = tl.load(row_ptr).to(tl.int64)
        # As V2's Gumbel sampler does: a bool block and an int64 scalar comparison.
        tl.store(out_ptr + block, block.to(tl.float32), mask=(block < 5) & (row >= 0))


    def run():
        out = torch.zeros(8)
        masked_store[(1,)](out, torch.tensor([0], dtype=torch.int32), B=8)
        return out
    """
)


def test_interpreter_masks_are_cast_to_bool(tmp_path) -> None:
    (tmp_path / "mask_kernel.py").write_text(MASK_KERNEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import mask_kernel
    finally:
        sys.path.remove(str(tmp_path))
    assert mask_kernel.run().tolist() == [0, 1, 2, 3, 4, 0, 0, 0]


def test_interpreter_mask_bug_is_still_there(tmp_path) -> None:
    """Without the shim, Triton's interpreter rejects that mask: when this fails, Triton has
    fixed it and the shim's cast can go."""
    (tmp_path / "mask_kernel.py").write_text(MASK_KERNEL)
    env = {**os.environ, "VLLM034_SHIM": "0", "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", "import mask_kernel; mask_kernel.run()"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "mask has unsupported dtype" in done.stderr, done.stderr[-2000:]


@triton.jit
def _libdevice_kernel(x_ptr, log1p_ptr, nan_ptr, n, B: tl.constexpr):
    offs = tl.arange(0, B)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(log1p_ptr + offs, libdevice.log1p(x), mask=mask)
    tl.store(nan_ptr + offs, libdevice.isnan(x).to(tl.int32), mask=mask)


def test_libdevice_stand_ins() -> None:
    """``log1p`` and ``isnan``, in the module V2's rejection sampler and NaN counter call."""
    from torch._inductor.runtime.triton_helpers import libdevice as inductor_libdevice
    from vllm.triton_utils import tldevice

    assert tldevice is libdevice and inductor_libdevice is libdevice
    x = torch.tensor([0.0, 0.5, -0.5, 3.0, float("nan")])
    log1p, nan = torch.zeros(5), torch.zeros(5, dtype=torch.int32)
    _libdevice_kernel[(1,)](x, log1p, nan, 5, B=8)
    torch.testing.assert_close(log1p, torch.log1p(x), equal_nan=True)
    assert nan.tolist() == [0, 0, 0, 0, 1]
