"""The docs say what the code does: the tables that mirror code are the code's.

docs/user-guide.md shows the plugin's settings, the tree settings and the vLLM options with
trees; docs/how-it-works.md shows the ledger of every change to vLLM. ``tools/docs_tables.py``
writes those tables from the code; these tests fail when the code changed and the docs did not
(run ``python tools/docs_tables.py`` to rewrite them), and they also read each table back and
compare it with the code directly, so a bug in the writer cannot hide a drift. The rest checks
what README and the docs promise around them: links that resolve, settings examples the
plugin accepts, make targets that exist. No engine, no vLLM import: a second or two.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import re

import pytest

from vllm_vispec import patches
from vllm_vispec.runners.v1 import ledger as v1_ledger
from vllm_vispec.settings import ViSpecSettings
from vllm_vispec.tree.settings import TreeSettings

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
USER_GUIDE = ROOT / "docs" / "user-guide.md"
HOW_IT_WORKS = ROOT / "docs" / "how-it-works.md"

_spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "tools" / "docs_tables.py")
docs_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_tables)


def _rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's body rows (header and rule left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| ") or set(line) <= set("|-"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append(cells)
    return [r for r in rows if r[0] not in ("key", "field", "patch", "option", "method", "object")]


def _text(cell: str) -> str:
    """A cell of ledger prose as the ledger writes it (the docs show dunder names as code)."""
    return re.sub(r"`(__\w+__)`", r"\1", cell)


def _code(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), cell
    return cell[1:-1]


def _block(path: pathlib.Path, name: str) -> str:
    return docs_tables.block(path.read_text(), name)


# -- the generated tables -----------------------------------------------------------------------


def test_generated_tables_match_the_code() -> None:
    stale = docs_tables.stale()
    assert not stale, "\n\n".join(stale.values()) + "\n\nrun: python tools/docs_tables.py"


def test_ledger_table_is_the_ledger() -> None:
    """docs/how-it-works.md lists every ledger entry, in order: its module, upstream symbols,
    why, reference and when it can go."""
    text = _block(HOW_IT_WORKS, "ledger")
    shown = [r for r in _rows(text) if len(r) == 6]
    ledger = patches.LEDGER + v1_ledger.LEDGER
    assert [_code(r[0]) for r in shown] == [p.module for p in ledger]
    for row, patch in zip(shown, ledger, strict=True):
        symbols = tuple(_code(s.strip()) for s in row[1].split(","))
        assert symbols == patch.upstream, patch.name
        assert _text(row[3]) == " ".join(patch.why.split()), patch.name
        assert _text(row[4]) == " ".join(patch.reference.split()), patch.name
        assert _text(row[5]) == " ".join(patch.remove_when.split()), patch.name
    overridden = [_code(r[0]) for r in _rows(text) if len(r) == 2 and r[1].startswith("`(")]
    assert set(v1_ledger.PROPOSER_OVERRIDES) | set(v1_ledger.WRAPPED_METHODS) <= set(overridden)


def test_settings_table_is_the_settings() -> None:
    """Every key of additional_config["vispec"] with its default, and nothing else."""
    rows = _rows(_block(USER_GUIDE, "settings"))
    shown = {_code(r[0]): json.loads(_code(r[1])) for r in rows}
    assert list(shown) == [f.name for f in dataclasses.fields(ViSpecSettings)]
    assert shown == ViSpecSettings().as_dict()
    assert ViSpecSettings.from_dict(shown) == ViSpecSettings()


def test_tree_settings_table_is_tree_settings() -> None:
    rows = _rows(_block(USER_GUIDE, "tree-settings"))
    shown = {_code(r[0]): json.loads(_code(r[1])) for r in rows if len(r) == 3}
    assert list(shown) == [f.name for f in dataclasses.fields(TreeSettings)]
    assert TreeSettings(**shown) == TreeSettings()
    assert ViSpecSettings.from_dict({"tree": True}).tree == TreeSettings(**shown)


def test_tree_options_table_is_options() -> None:
    """The options table is OPTIONS of tests/test_tree_options.py, row for row (that module's
    own test checks the rows too, and that every test they name exists)."""
    rows = _rows(_block(USER_GUIDE, "tree-options"))
    options = docs_tables.tree_options()
    assert len(rows) == len(options)
    for (option, trees, proved_by), (o, t, test) in zip(rows, options, strict=True):
        module, name = test.split("::")
        assert (option, trees) == (o, t)
        assert _code(proved_by) == f"tests/{module or 'test_tree_options'}.py::{name}"


def test_a_code_change_makes_the_docs_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check bites: a new tree default, or a setting without words, is caught."""

    @dataclasses.dataclass(frozen=True)
    class Changed(TreeSettings):
        top_k: int = 6

    monkeypatch.setattr(docs_tables, "TreeSettings", Changed)
    assert "tree-settings" in docs_tables.stale()
    monkeypatch.delitem(docs_tables.SETTINGS_WHAT, "feature_cache_mib")
    with pytest.raises(SystemExit, match="feature_cache_mib"):
        docs_tables.settings_table()


# -- what README and the docs promise around the tables -----------------------------------------


def test_readme_is_a_front_page() -> None:
    assert len(README.read_text().splitlines()) <= 250


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_links_resolve(doc: pathlib.Path) -> None:
    """Every relative link names a file that exists and, with #anchor, a heading in it."""
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name}: link to {target}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{doc.name}: no heading #{anchor}"


def _vispec_objects(text: str) -> list[dict]:
    """Every {"vispec": ...} JSON object written in a text ({"vispec": {...}} left out)."""
    found, decoder = [], json.JSONDecoder()
    for match in re.finditer(r'\{"vispec":', text):
        if text[match.end() :].lstrip().startswith("{...}"):
            continue
        found.append(decoder.raw_decode(text, match.start())[0])
    return found


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_settings_examples_are_accepted(doc: pathlib.Path) -> None:
    for example in _vispec_objects(doc.read_text()):
        ViSpecSettings.from_dict(example["vispec"])


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_make_targets_exist(doc: pathlib.Path) -> None:
    targets = set(re.findall(r"^([a-z0-9-]+):", (ROOT / "Makefile").read_text(), re.M))
    for target in re.findall(r"`make ([a-z0-9-]+)`|^make ([a-z0-9-]+)", doc.read_text(), re.M):
        name = target[0] or target[1]
        assert name in targets, f"{doc.name} names make {name}, which the Makefile lacks"
