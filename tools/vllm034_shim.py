"""Let vLLM 0.34's V2 model runner run on a CPU without a Triton CPU backend (tests only).

``tools/vllm034_env.py`` installs this module into ``.venv034`` with a ``.pth`` line calling
:func:`install`, so it applies in every Python process of that venv, vLLM's subprocesses
included. ``install`` only sets ``TRITON_INTERPRET=1`` and waits: the rest happens when vLLM
imports ``vllm.triton_utils`` (where it decides whether Triton is usable), so that a process
that never imports vLLM (pip, say) never imports Triton either. ``VLLM034_SHIM=0`` turns it off.

Why each piece:

- ``TRITON_INTERPRET=1``: every ``@triton.jit`` kernel runs in Triton's NumPy interpreter on
  CPU tensors (about 2 ms a launch: correctness only).
- A "cpu" entry in ``triton.backends.backends`` that can compile nothing: on a ``+cpu`` build
  vLLM enables Triton only when such a backend is listed (``vllm/triton_utils/importing.py``),
  and the worker refuses to start without Triton (``vllm/v1/worker/gpu_worker.py``).
- Stand-ins for the libdevice functions the interpreter lacks: ``log1p`` (V2's rejection
  sampler, probabilistic drafts: ``gpu/spec_decode/rejection_sampler_utils.py``) and ``isnan``
  (``gpu/metrics/logits.py`` with ``VLLM_COMPUTE_NANS_IN_LOGITS=1``).
- Masks cast to bool in the interpreter's masked loads and stores: ``bool_block &
  (int64_scalar >= 0)`` gives an int32 mask there, which they reject ("mask has unsupported
  dtype"); V2's Gumbel sampler builds one (``gpu/sample/gumbel.py``, probabilistic drafts).
"""

from __future__ import annotations

import importlib.abc
import os
import sys

OFF = "VLLM034_SHIM"  # "0": leave Triton and vLLM alone
TRIGGER = "vllm.triton_utils"


def install() -> None:
    """Called at interpreter start (the ``.pth`` line): arm the patches."""
    if os.environ.get(OFF) == "0":
        return
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if not any(isinstance(f, _PatchBeforeVllmChecksTriton) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchBeforeVllmChecksTriton())


class _PatchBeforeVllmChecksTriton(importlib.abc.MetaPathFinder):
    """Patches Triton when ``vllm.triton_utils`` is first imported, then finds nothing (the
    normal finders import the module)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == TRIGGER:
            sys.meta_path.remove(self)
            patch_triton()
        return None


def patch_triton() -> None:
    """Apply the patches (idempotent); a real "cpu" backend, if one is installed, is kept."""
    import triton.backends

    if "cpu" not in triton.backends.backends:
        triton.backends.backends["cpu"] = _interpreter_only_backend()
    _add_libdevice_stand_ins()
    _cast_interpreter_masks_to_bool()
    _log_first_launch()


def _log_first_launch() -> None:
    """One line through vLLM's logger at the first interpreted kernel launch: vLLM configures
    its logging when an engine starts, after this module has done its work."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run
    if getattr(run, "_vllm034_shim", False):
        return

    def first_run(self, *args, **kwargs):
        from vllm.logger import init_logger

        InterpretedFunction.run = run
        init_logger("vllm.vllm034_shim").info(
            "Triton kernels (first: %s) run in Triton's interpreter (TRITON_INTERPRET=%s) "
            "behind the vllm034 shim's stand-in 'cpu' backend: a test environment, not for "
            "timing",
            getattr(self.fn, "__qualname__", self.fn),
            os.environ.get("TRITON_INTERPRET"),
        )
        return run(self, *args, **kwargs)

    first_run._vllm034_shim = True
    InterpretedFunction.run = first_run


# --- a backend that lists "cpu" and compiles nothing ------------------------------------------


def _interpreter_only(*_args, **_kwargs):
    raise RuntimeError("vllm034 shim: Triton runs interpreted here (TRITON_INTERPRET=1)")


def _interpreter_only_backend():
    """Defined on demand: importing Triton at every interpreter start would slow pip & co."""
    from triton.backends import Backend
    from triton.backends.compiler import BaseBackend
    from triton.backends.driver import DriverBase

    class InterpreterOnlyDriver(DriverBase):
        @staticmethod
        def is_active() -> bool:
            return True

        def get_active_torch_device(self):
            import torch

            return torch.device("cpu")

        def clear_cache(self, cache) -> None:
            pass

        get_current_target = get_benchmarker = map_python_to_cpp_type = _interpreter_only
        get_empty_cache_for_benchmark = _interpreter_only

    class InterpreterOnlyCompiler(BaseBackend):
        @staticmethod
        def supports_target(target) -> bool:
            return False

        def hash(self) -> str:
            return "vllm034-shim-interpreter-only"

        def parse_options(self, options):
            return options

        def load_dialects(self, context) -> None:
            pass

        def get_module_map(self) -> dict:
            return {}

        def pack_metadata(self, metadata):
            return metadata

        def get_codegen_implementation(self, options) -> dict:
            return {}

        add_stages = _interpreter_only

    return Backend(compiler=InterpreterOnlyCompiler, driver=InterpreterOnlyDriver)


# --- interpreter gaps ---------------------------------------------------------------------------


def _add_libdevice_stand_ins() -> None:
    """The interpreter runs kernel bodies as Python, so plain functions of ``tl`` ops work."""
    import triton.language as tl
    import triton.language.extra.libdevice as libdevice

    libdevice.log1p = lambda x: tl.log(1.0 + x)
    libdevice.isnan = lambda x: x != x


def _cast_interpreter_masks_to_bool() -> None:
    import numpy as np
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    if getattr(InterpreterBuilder, "_vllm034_shim", False):
        return
    load, store = InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store

    def as_bool(mask):
        if mask.data.dtype == np.bool_:
            return mask
        return TensorHandle(mask.data.astype(np.bool_), mask.dtype)

    def create_masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        return load(self, ptrs, as_bool(mask), other, cache_policy, is_volatile)

    def create_masked_store(self, ptrs, value, mask, cache_policy):
        return store(self, ptrs, value, as_bool(mask), cache_policy)

    InterpreterBuilder.create_masked_load = create_masked_load
    InterpreterBuilder.create_masked_store = create_masked_store
    InterpreterBuilder._vllm034_shim = True
