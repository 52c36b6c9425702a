"""The ViSpec draft as a vLLM model.

Importing this package loads nothing: ``attention_mode`` is read by start-up validation in the
front-end process, which must not load vLLM's model layers.
"""
