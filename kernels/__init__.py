"""Triton kernels with readable PyTorch references (``naive.py`` beside each kernel).

Importable only as ``vllm_vispec.kernels`` (setup.py maps this folder there).
"""
