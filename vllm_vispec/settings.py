"""The plugin's settings: ``additional_config["vispec"]`` of vLLM's engine config.

``vllm serve ... --additional-config '{"vispec": {"tree": {"depth": 3}}}'`` or
``LLM(..., additional_config={"vispec": {...}})``. vLLM hands that config to every worker and
hashes it into its config hash (compiled graphs are cached per hash), so two engines in one
process may differ and nothing is read from the environment. Keys:

* ``tree``: ``false`` (the default: chains of ``num_speculative_tokens``, vLLM's verification),
  ``true`` (EAGLE-2 trees with ViSpec's defaults) or an object of
  :class:`~vllm_vispec.tree.settings.TreeSettings` fields;
* ``draft_attention``: how the draft leaves hidden image slots out
  (:mod:`vllm_vispec.draft.attention_mode`): ``auto``, ``mark``, ``triton`` or ``torch``;
* ``feature_cache_mib``: bound of the adaptor outputs kept for prefix-cache hits (64);
* ``goodput``: ``false`` (the default) or ``true`` / an object of
  :class:`~vllm_vispec.goodput.settings.GoodputSettings` fields: each step's K chosen from
  measured goodput (:mod:`vllm_vispec.goodput`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tree and goodput settings name themselves with setting() below
    from vllm_vispec.goodput.settings import GoodputSettings
    from vllm_vispec.tree.settings import TreeSettings

SETTINGS_KEY = "vispec"
DRAFT_ATTENTION_CHOICES = ("auto", "mark", "triton", "torch")
DEFAULT_FEATURE_CACHE_MIB = 64


@dataclasses.dataclass(frozen=True)
class ViSpecSettings:
    tree: TreeSettings | None = None
    draft_attention: str = "auto"
    feature_cache_mib: float = DEFAULT_FEATURE_CACHE_MIB
    goodput: GoodputSettings | None = None

    @property
    def feature_cache_bytes(self) -> int:
        return int(self.feature_cache_mib * 2**20)

    @classmethod
    def from_dict(cls, raw: Any) -> ViSpecSettings:
        """Settings from the ``vispec`` object; ValueError (one line, with the fix) if bad."""
        if not isinstance(raw, dict):
            raise ValueError(f"{setting()} must be a JSON object, got {raw!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(
                f"{setting(unknown[0])} is not a ViSpec setting; the settings are "
                f"{', '.join(names)}"
            )
        attention = raw.get("draft_attention", "auto")
        if attention not in DRAFT_ATTENTION_CHOICES:
            raise ValueError(
                f"{setting('draft_attention')}={attention!r} is not one of "
                f"{', '.join(DRAFT_ATTENTION_CHOICES)}"
            )
        mib = raw.get("feature_cache_mib", DEFAULT_FEATURE_CACHE_MIB)
        if isinstance(mib, bool) or not isinstance(mib, int | float) or mib <= 0:
            raise ValueError(
                f"{setting('feature_cache_mib')}={mib!r} is not a positive number of MiB; "
                f"leave it out for the default {DEFAULT_FEATURE_CACHE_MIB}"
            )
        from vllm_vispec.goodput.settings import GoodputSettings

        goodput = GoodputSettings.parse(raw.get("goodput", False))
        return cls(_tree(raw.get("tree", False)), attention, mib, goodput)

    def as_dict(self) -> dict[str, Any]:
        """The ``vispec`` object that gives these settings (what the start-up log shows)."""
        tree = dataclasses.asdict(self.tree) if self.tree is not None else False
        return {
            "tree": tree,
            "draft_attention": self.draft_attention,
            "feature_cache_mib": self.feature_cache_mib,
            "goodput": dataclasses.asdict(self.goodput) if self.goodput is not None else False,
        }


def _tree(value: Any) -> TreeSettings | None:
    from vllm_vispec.tree.settings import TreeSettings

    if value is False:
        return None
    if value is True:
        return TreeSettings()
    fields = [f.name for f in dataclasses.fields(TreeSettings)]
    if not isinstance(value, dict) or not set(value) <= set(fields):
        raise ValueError(
            f"{setting('tree')}={json.dumps(value)}: expected true, false or an object with "
            f'fields {", ".join(fields)} (e.g. {{"depth": 3, "top_k": 8, "min_prob": 0.05}})'
        )
    for key, v in value.items():
        if key == "min_prob":
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise ValueError(f"{setting('tree')}.min_prob={v!r} must be a number in [0, 1)")
        elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{setting('tree')}.{key}={v!r} must be a non-negative integer")
    tree = TreeSettings(**value)
    if min(tree.depth, tree.top_k, tree.chain) < 1:
        raise ValueError(f"{setting('tree')}: depth, top_k and chain must be at least 1")
    return tree


def setting(key: str | None = None) -> str:
    """How messages name a setting: ``vispec.tree`` (of ``--additional-config``)."""
    return SETTINGS_KEY if key is None else f"{SETTINGS_KEY}.{key}"


def vispec_settings(vllm_config: Any) -> ViSpecSettings:
    """The settings of an engine (its ``additional_config``); ValueError for bad ones.

    Parsed once per distinct ``vispec`` object in a process: the proposer, the draft's
    attention and start-up validation all ask, and get the same frozen object."""
    additional = getattr(vllm_config, "additional_config", None)
    raw = additional.get(SETTINGS_KEY, {}) if isinstance(additional, dict) else {}
    try:
        key = json.dumps(raw, sort_keys=True)
    except TypeError:  # not JSON: from_dict says what is wrong
        return ViSpecSettings.from_dict(raw)
    return _parsed(key)


@functools.lru_cache(maxsize=64)
def _parsed(raw_json: str) -> ViSpecSettings:
    return ViSpecSettings.from_dict(json.loads(raw_json))
