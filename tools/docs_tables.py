"""Write the tables in docs/ that mirror code, or check that they still do.

Five blocks of docs/ are generated, each between two HTML comments that name it:

* ``settings`` (docs/user-guide.md): the keys of ``additional_config["vispec"]``, from the
  fields and defaults of ``vllm_vispec.settings.ViSpecSettings``;
* ``tree-settings`` (docs/user-guide.md): the fields and defaults of
  ``vllm_vispec.tree.settings.TreeSettings``;
* ``goodput-settings`` (docs/user-guide.md): the fields and defaults of
  ``vllm_vispec.goodput.settings.GoodputSettings``;
* ``tree-options`` (docs/user-guide.md): every vLLM option with trees on, from ``OPTIONS`` in
  tests/test_tree_options.py (read without importing it: it needs vLLM);
* ``ledger`` (docs/how-it-works.md): every change to vLLM, from ``vllm_vispec.patches.LEDGER``
  and ``vllm_vispec.runners.v1.ledger.LEDGER``, the V1 internals that adapter relies on, and the
  V2 adapter's hooks and internals (``vllm_vispec.runners.v2.ledger``).

The words that describe each setting live here (``SETTINGS_WHAT``, ``TREE_WHAT``,
``GOODPUT_WHAT``); a field of the code without words, or words for a field the code lost,
stops the script. Nothing here
imports vLLM, so it runs in a second.

    python tools/docs_tables.py           # rewrite the blocks
    python tools/docs_tables.py --check   # exit 1, naming each stale block (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import json
import pathlib
import re
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vllm_vispec import patches  # noqa: E402
from vllm_vispec.goodput.settings import GoodputSettings  # noqa: E402
from vllm_vispec.runners.v1 import ledger as v1_ledger  # noqa: E402
from vllm_vispec.runners.v2 import ledger as v2_ledger  # noqa: E402
from vllm_vispec.settings import DRAFT_ATTENTION_CHOICES, ViSpecSettings  # noqa: E402
from vllm_vispec.tree.settings import MAX_TREE_NODES, TreeSettings  # noqa: E402

USER_GUIDE = ROOT / "docs" / "user-guide.md"
HOW_IT_WORKS = ROOT / "docs" / "how-it-works.md"
TREE_OPTIONS_TESTS = ROOT / "tests" / "test_tree_options.py"

# What each key of additional_config["vispec"] does ({choices}: DRAFT_ATTENTION_CHOICES).
SETTINGS_WHAT: dict[str, str] = {
    "tree": "`false`: chains of `num_speculative_tokens`, verified by vLLM. `true`: EAGLE-2 "
    "draft trees of ViSpec's shape, verified by the plugin. An object of the tree settings "
    "below: trees of that shape",
    "draft_attention": "how the draft's attention leaves unseen image positions out: one of "
    "{choices}. `auto` takes the Triton kernel on CUDA/ROCm (if it passes its start-up "
    "self-check) and `mark` elsewhere",
    "feature_cache_mib": "MiB of adaptor outputs kept per image hash on the draft's device, so "
    "a prefix-cache hit on an image still finds them; the engine logs how many images fit",
    "goodput": "`true` or an object of the goodput settings below: each step's K (nothing, a "
    "chain, a tree) chosen from measured step costs and acceptance, per batch size, with "
    "hysteresis. `false`: vLLM's K (or your `num_speculative_tokens_per_batch_size`, which "
    "always wins)",
}

# What each field of vispec.goodput does.
GOODPUT_WHAT: dict[str, str] = {
    "hysteresis": "a batch size changes its K only for this much more predicted goodput",
    "explore_every": "every this many steps of a batch size, one step drafts a neighbouring "
    "K so that draft costs stay measured; 0 never",
}

# What each field of vispec.tree does.
TREE_WHAT: dict[str, str] = {
    "depth": "draft passes over the tree after the first (EAGLE-2's `depth`); a tree is at most "
    "`depth` + 1 tokens deep",
    "top_k": "children expanded per node, and nodes kept per level",
    "chain": "length of the chains that some requests draft in a tree step (seeded requests "
    "and the other cases in the options table)",
    "min_prob": "sizes each tree by the draft's confidence: keep only nodes whose cumulative "
    "draft probability is at least this (the best node always); 0 keeps K nodes, as ViSpec does",
}


# -- tables -------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """One table cell: one line, ``|`` escaped, dunder names as code (not bold)."""
    text = " ".join(text.split()).replace("|", "\\|")
    return re.sub(r"(?<![`\w])(__\w+__)(?![`\w])", r"`\1`", text)


def _row(*cells: str) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _described(kind: str, fields: list[str], words: dict[str, str]) -> None:
    missing, extra = set(fields) - set(words), set(words) - set(fields)
    if missing or extra:
        raise SystemExit(
            f"tools/docs_tables.py: {kind} has fields {sorted(missing)} without a description "
            f"and descriptions {sorted(extra)} of no field; update SETTINGS_WHAT / TREE_WHAT"
        )


def settings_table() -> str:
    fields = [f.name for f in dataclasses.fields(ViSpecSettings)]
    _described("ViSpecSettings", fields, SETTINGS_WHAT)
    defaults = ViSpecSettings().as_dict()  # as a user writes them: tree false, not None
    choices = ", ".join(f"`{c}`" for c in DRAFT_ATTENTION_CHOICES)
    lines = ["| key | default | what |", "|---|---|---|"]
    for name in fields:
        what = SETTINGS_WHAT[name].format(choices=choices)
        lines.append(_row(f"`{name}`", f"`{json.dumps(defaults[name])}`", what))
    return "\n".join(lines)


def _fields_table(cls: type, words: dict[str, str]) -> list[str]:
    """The rows of a setting object's fields (``true`` gives the defaults)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    _described(cls.__name__, fields, words)
    defaults = dataclasses.asdict(cls())
    lines = ["| field | default (`true`) | what |", "|---|---|---|"]
    for name in fields:
        lines.append(_row(f"`{name}`", f"`{json.dumps(defaults[name])}`", words[name]))
    return lines


def tree_settings_table() -> str:
    lines = _fields_table(TreeSettings, TREE_WHAT)
    lines.append("")
    lines.append(
        f"A tree has at most {MAX_TREE_NODES} nodes; a step drafts one when its K is at least "
        "`depth` x `top_k`."
    )
    return "\n".join(lines)


def goodput_settings_table() -> str:
    return "\n".join(_fields_table(GoodputSettings, GOODPUT_WHAT))


def tree_options() -> list[tuple[str, str, str]]:
    """``OPTIONS`` of tests/test_tree_options.py, read from its source."""
    tree = ast.parse(TREE_OPTIONS_TESTS.read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "OPTIONS" for t in targets):
                return [tuple(row) for row in ast.literal_eval(node.value)]
    raise SystemExit(f"no OPTIONS in {TREE_OPTIONS_TESTS}")


def tree_options_table() -> str:
    # Exactly the rows tests/test_tree_options.py looks for (raw, not re-wrapped).
    lines = ["| option | with trees | proved by |", "|---|---|---|"]
    for option, trees, test in tree_options():
        module, name = test.split("::")
        lines.append(f"| {option} | {trees} | `tests/{module or 'test_tree_options'}.py::{name}` |")
    return "\n".join(lines)


def _applied(patch: patches.Patch) -> str:
    if patch.trigger is None:
        return "at `register()`, on vLLM's CPU platform without Triton only"
    return f"when `{patch.trigger}` is first imported"


def ledger_rows(ledger: tuple[patches.Patch, ...]) -> list[str]:
    lines = [
        "| patch | upstream symbols | applied | why | upstream reference | can go when |",
        "|---|---|---|---|---|---|",
    ]
    for p in ledger:
        symbols = ", ".join(f"`{s}`" for s in p.upstream)
        lines.append(_row(f"`{p.module}`", symbols, _applied(p), p.why, p.reference, p.remove_when))
    return lines


def ledger_table() -> str:
    v1 = v1_ledger
    out = ["Runner-neutral section (`vllm_vispec.patches.LEDGER`):", ""]
    out += ledger_rows(patches.LEDGER)
    out += ["", "V1 runner section (`vllm_vispec.runners.v1.ledger.LEDGER`):", ""]
    out += ledger_rows(v1.LEDGER)
    out += [
        "",
        "`EagleProposer` methods the V1 proposers override, with vLLM 0.32's parameters:",
        "",
        "| method | parameters |",
        "|---|---|",
    ]
    out += [_row(f"`{m}`", f"`{sig}`") for m, sig in v1.PROPOSER_OVERRIDES.items()]
    out += [
        "",
        "vLLM methods the tree hooks wrap, with vLLM 0.32's parameters:",
        "",
        "| method | parameters |",
        "|---|---|",
    ]
    out += [_row(f"`{m}`", f"`{sig}`") for m, sig in v1.WRAPPED_METHODS.items()]
    state = {
        "`EagleProposer` (the base class's own state)": v1.PROPOSER_ATTRIBUTES,
        "`GPUModelRunner`": v1.RUNNER_ATTRIBUTES,
        "`InputBatch`": v1.INPUT_BATCH_ATTRIBUTES,
        "`CachedRequestState`": v1.REQUEST_STATE_ATTRIBUTES,
        "`SamplingParams`": v1.SAMPLING_PARAMS_ATTRIBUTES,
        "`SamplingMetadata`": v1.SAMPLING_METADATA_ATTRIBUTES,
    }
    out += _state_table("Private vLLM state the V1 adapter reads:", state)
    return "\n".join(out + v2_section())


def _state_table(title: str, state: dict[str, tuple[str, ...]]) -> list[str]:
    out = ["", title, "", "| object | attributes |", "|---|---|"]
    return out + [_row(obj, ", ".join(f"`{a}`" for a in names)) for obj, names in state.items()]


def v2_section() -> list[str]:
    v2 = v2_ledger
    out = ["", "V2 runner section (`vllm_vispec.runners.v2.ledger`): no patch (V2 has hooks: a "]
    out += ["draft model names its speculator). The V2 classes and hooks the adapter builds on:"]
    out += ["", "| symbol |", "|---|"] + [_row(f"`{h}`") for h in v2.HOOKS]
    out += ["", "`EagleSpeculator` methods `ViSpecSpeculator` overrides, with vLLM 0.34's "]
    out += ["parameters:", "", "| method | parameters |", "|---|---|"]
    out += [_row(f"`{m}`", f"`{sig}`") for m, sig in v2.SPECULATOR_OVERRIDES.items()]
    state = {
        "`EagleSpeculator` (the base classes' own state)": v2.SPECULATOR_ATTRIBUTES,
        "`ModelState` (V2)": v2.MODEL_STATE_ATTRIBUTES,
        "`EncoderRunner` (V2)": v2.ENCODER_RUNNER_ATTRIBUTES,
        "`InputBatch` (V2)": v2.INPUT_BATCH_ATTRIBUTES,
        "`EncoderCache` (V2)": v2.ENCODER_CACHE_ATTRIBUTES,
        "`RequestState` (V2)": v2.REQUEST_STATE_ATTRIBUTES,
    }
    return out + _state_table("vLLM state the V2 adapter reads:", state)


BLOCKS: dict[str, tuple[pathlib.Path, Callable[[], str]]] = {
    "settings": (USER_GUIDE, settings_table),
    "tree-settings": (USER_GUIDE, tree_settings_table),
    "goodput-settings": (USER_GUIDE, goodput_settings_table),
    "tree-options": (USER_GUIDE, tree_options_table),
    "ledger": (HOW_IT_WORKS, ledger_table),
}


# -- blocks in the docs -------------------------------------------------------------------------


def _begin(name: str) -> str:
    return f"<!-- generated: {name} (tools/docs_tables.py); edit the code, then run the script -->"


def _end(name: str) -> str:
    return f"<!-- end of generated: {name} -->"


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(_begin(name)) + r"\n(?:(.*?)\n)?" + re.escape(_end(name)), re.S)


def block(text: str, name: str) -> str:
    """The generated block ``name`` of a document's text (SystemExit if its markers are gone)."""
    found = _pattern(name).findall(text)
    if len(found) != 1:
        raise SystemExit(f"expected one block {name!r} between its markers, found {len(found)}")
    return found[0]


def render(text: str, name: str, table: str) -> str:
    block(text, name)  # the markers must be there
    return _pattern(name).sub(lambda _: f"{_begin(name)}\n{table}\n{_end(name)}", text)


def stale() -> dict[str, str]:
    """Each block whose text differs from the code's, with a diff."""
    out = {}
    for name, (path, make) in BLOCKS.items():
        have, want = block(path.read_text(), name), make()
        if have != want:
            diff = difflib.unified_diff(
                have.splitlines(), want.splitlines(), "docs", "code", lineterm=""
            )
            out[name] = f"{path.relative_to(ROOT)}: block {name!r}\n" + "\n".join(diff)
    return out


def write() -> list[str]:
    changed = []
    for name, (path, make) in BLOCKS.items():
        text = path.read_text()
        new = render(text, name, make())
        if new != text:
            path.write_text(new)
            changed.append(f"{path.relative_to(ROOT)}: {name}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Blocks: "
        + ", ".join(f"{n} ({p.relative_to(ROOT)})" for n, (p, _) in BLOCKS.items()),
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a block is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        diffs = stale()
        for diff in diffs.values():
            print(diff)
        if diffs:
            print(f"stale: {', '.join(diffs)}; run python tools/docs_tables.py", file=sys.stderr)
        return 1 if diffs else 0
    changed = write()
    print("rewrote " + "; ".join(changed) if changed else "docs already match the code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
