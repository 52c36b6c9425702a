"""Tooling: the toy world (seeded synthetic pictures and their descriptions) and its trained
target, so that drafts can be trained and measured without downloads."""
