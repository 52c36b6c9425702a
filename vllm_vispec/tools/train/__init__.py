"""Training ViSpec drafts against a frozen HF transformers target, with online teacher signals.

``data`` turns LLaVA-style or ShareGPT JSON into tokenised conversations, ``teacher`` runs the
target for its hidden states and logits, ``losses`` holds the distillation recipes and
``trainer`` the loop and the ``vllm-vispec train`` command.
"""
