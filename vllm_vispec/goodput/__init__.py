"""Goodput-driven drafting (``vispec.goodput``): each step's K chosen from measured step costs
and measured acceptance, in vLLM's scheduler, for either runner adapter."""
