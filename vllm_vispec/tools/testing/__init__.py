"""Tooling: tiny random targets and drafts built locally from configs, for tests and demos."""
