"""``vllm-vispec bench`` end to end on the tiny Qwen2.5-VL: every method, both modes, the report.

The figures of tiny random models mean nothing; what is checked is that every method and batch
size gets a row with sane numbers, that speculation stays lossless under greedy decoding, that
acceptance is read for the speculative methods, that each ViSpec method's engine gets its
``vispec`` settings, that the report files are written (also from the bench.json files of earlier
releases), and that user mistakes end with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from vllm_vispec.tools import cli
from vllm_vispec.tools.bench import command, report
from vllm_vispec.tools.bench.prompts import load_prompts, waves

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _bench(out: pathlib.Path, target: pathlib.Path, *args: str) -> dict:
    assert cli.main(["bench", "--target", str(target), "--out", str(out), *args]) == 0
    for name in ("throughput.png", "speedup.png", "acceptance.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| method | batch | tok/s |" in (out / "bench.md").read_text()
    return json.loads((out / "bench.json").read_text())


def _check_rows(result: dict, mode: str, methods: list[str], batches: list[int]) -> None:
    rows = [r for r in result["rows"] if r["mode"] == mode]
    assert [(r["method"], r["batch"]) for r in rows] == [(m, b) for m in methods for b in batches]
    for r in rows:
        where = f"{mode} {r['method']} batch {r['batch']}"
        assert r["tok_per_s"] > 0 and r["latency_s"] > 0 and r["tpot_ms"] > 0, where
        assert r["lossless"] is True, f"{where}: requests {r['differing_requests']} differ"
        if r["method"] == report.BASELINE:
            assert r["speedup"] == 1.0 and "drafts" not in r, where
            continue
        assert r["speedup"] > 0, where
        k = result["config"]["methods"][r["method"]]["num_speculative_tokens"]
        assert len(r["accepted_per_pos"]) == k, where
        assert 0 <= r["accepted_tokens"] <= r["draft_tokens"], where
        if r["method"] != "ngram":  # ngram only drafts when the output repeats the prompt
            assert r["drafts"] > 0 and r["mean_acceptance_length"] >= 1.0, where
            assert len(r["acceptance_per_pos"]) == k, where
    assert result["machine"]["cores"] and result["machine"]["vllm"].startswith("0.32")


@pytest.mark.slow
def test_bench_offline_all_methods(
    qwen_target: pathlib.Path,
    qwen_draft: pathlib.Path,
    qwen_eagle_draft: pathlib.Path,
    qwen_eaglevlm_draft: pathlib.Path,
    qwen_specvlm_draft: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    result = _bench(
        tmp_path,
        qwen_target,
        "--vispec-draft", str(qwen_draft),
        "--eagle-draft", str(qwen_eagle_draft),
        "--eaglevlm-draft", str(qwen_eaglevlm_draft),
        "--specvlm-draft", str(qwen_specvlm_draft),
        "--modes", "offline",
        "--batch-sizes", "4",
        "--max-tokens", "12",
        "--repeats", "1",
    )  # fmt: skip
    methods = [
        "no-spec", "ngram", "eagle", "vispec", "vispec-tree", "vispec-auto", "vispec-goodput",
        "eaglevlm", "specvlm",
    ]  # fmt: skip
    _check_rows(result, "offline", methods, [4])
    tree = [r for r in result["rows"] if r["method"] == "vispec-tree"]
    assert all(r["draft_tokens"] > 4 * r["drafts"] for r in tree), "vispec-tree drafted no trees"
    assert result["config"]["vispec"] == {
        "vispec": {},
        "vispec-tree": {"tree": True},
        "vispec-auto": {},
        "vispec-goodput": {"tree": True, "goodput": True},
        "eaglevlm": {},
        "specvlm": {},
    }
    assert all(r["runs_tok_per_s"] == [r["tok_per_s"]] for r in result["rows"])


@pytest.mark.slow
def test_bench_serve(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    result = _bench(
        tmp_path,
        qwen_target,
        "--vispec-draft", str(qwen_draft),
        "--methods", "vispec",
        "--modes", "serve",
        "--batch-sizes", "4",
        "--max-tokens", "8",
        "--vispec-config", '{"feature_cache_mib": 32}',
        "--repeats", "1",
    )  # fmt: skip
    _check_rows(result, "serve", ["no-spec", "vispec"], [4])
    log = (tmp_path / "serve_vispec.log").read_text(errors="replace")
    assert "EagleViSpecForCausalLM" in log and '"feature_cache_mib": 32' in log
    assert (
        '; ViSpec settings (additional_config vispec): vispec `{"feature_cache_mib": 32}`'
        in (tmp_path / "bench.md").read_text()
    )


def test_vispec_settings_per_method(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    args = cli.build_parser().parse_args(
        ["bench", "--target", str(tmp_path), "--vispec-draft", str(tmp_path),
         "--specvlm-draft", str(tmp_path),
         "--tree", '{"depth": 4, "top_k": 6}', "--vispec-config", '{"draft_attention": "torch"}']
    )  # fmt: skip
    methods = command._methods(args)
    torch = {"draft_attention": "torch"}
    assert {m.name: m.vispec for m in methods} == {
        "no-spec": None,
        "ngram": None,
        "vispec": torch,
        "vispec-tree": {**torch, "tree": {"depth": 4, "top_k": 6}},
        "vispec-auto": torch,  # the default schedule drafts chains only
        "vispec-goodput": {**torch, "tree": {"depth": 4, "top_k": 6}, "goodput": True},
        "specvlm": torch,
    }
    schedules = {m.name: m.spec.get("num_speculative_tokens_per_batch_size") for m in methods[1:]}
    assert schedules == {
        "ngram": None,
        "vispec": None,
        "vispec-tree": None,
        "vispec-auto": [[1, 4, 3], [5, max(args.batch_sizes + [5]), 0]],
        "vispec-goodput": None,  # declared by the plugin when the engine starts
        "specvlm": None,
    }
    given = cli.build_parser().parse_args(
        ["bench", "--target", str(tmp_path), "--vispec-draft", str(tmp_path),
         "--schedule", "[[1, 2, 29], [3, 64, 2]]"]
    )  # fmt: skip
    auto = next(m for m in command._methods(given) if m.name == "vispec-auto")
    assert auto.spec["num_speculative_tokens_per_batch_size"] == [[1, 2, 29], [3, 64, 2]]
    assert auto.spec["num_speculative_tokens"] == 29 and auto.vispec == {"tree": True}
    for bad in ("[[1, 2]]", "[]", '[[1, 2, "x"]]', "{}"):
        given.schedule = bad
        with pytest.raises(command.BenchError, match="--schedule"):
            command._methods(given)
    for m in methods:
        kwargs = command._engine_kwargs(args, m, {})
        expected = None if m.vispec is None else {"vispec": m.vispec}
        assert kwargs.get("additional_config") == expected, m.name


def test_repeated_runs_report_the_fastest_and_the_spread() -> None:
    """Two interleaved runs: each row is the faster run, its speedup against the faster
    no-speculation run, lossless only if both runs were."""

    def run(base: float, spec: float, lossless: bool) -> list[dict]:
        rows = [
            {"method": report.BASELINE, "batch": 4, "tok_per_s": base},
            {"method": "vispec", "batch": 4, "tok_per_s": spec},
        ]
        for r in rows:
            r.update(lossless=lossless or r["method"] == report.BASELINE)
            r.update(differing_requests=[] if r["lossless"] else [2])
        return rows

    rows = report.best_of([run(100.0, 150.0, True), run(80.0, 200.0, False)])
    base, spec = rows
    assert base["tok_per_s"] == 100.0 and base["runs_tok_per_s"] == [100.0, 80.0]
    assert base["spread"] == pytest.approx(0.2) and base["lossless"] is True
    assert spec["tok_per_s"] == 200.0 and spec["speedup"] == 2.0
    assert spec["lossless"] is False and spec["differing_requests"] == [2]


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*/bench.json")), ids=lambda p: p.parent.name)
def test_markdown_of_earlier_results(path: pathlib.Path) -> None:
    """bench.json files of earlier releases recorded VLLM_VISPEC_* variables, not settings."""
    result = json.loads(path.read_text())
    text = report.markdown(result)
    assert "| method | batch | tok/s |" in text
    cfg = result["config"]
    if "draft_attention" in cfg:
        assert f"VLLM_VISPEC_DRAFT_ATTENTION={cfg['draft_attention']}" in text
    for name, tree in cfg.get("tree", {}).items():
        assert f"{name} VLLM_VISPEC_TREE={tree}" in text


def test_prompt_sets() -> None:
    photos = load_prompts("photos", 16)
    assert {p.image_name for p in photos} == {"grace_hopper.jpg"} and len(photos) >= 2
    for name, size in (("toy", (168, 168)), ("grounded", (896, 224)), ("content", (896, 224))):
        prompts = load_prompts(name, 3)
        assert len(prompts) == 3 and len({p.image.tobytes() for p in prompts}) == 3
        assert all(p.image.size == size and "<image>" not in p.question for p in prompts)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "{tmp}/missing"], "no such folder"),
        (["--target", "{tmp}/model", "--vispec-draft", "{tmp}"], "--vispec-draft"),
        (["--target", "{tmp}/model", "--prompts", "coco"], "unknown prompt set"),
        (["--target", "{tmp}/model", "--methods", "eagle"], "needs --eagle-draft"),
        (["--target", "{tmp}/model", "--engine-arg", "seed"], "KEY=VALUE"),
        (["--target", "{tmp}/model", "--engine-arg", "additional_config={}"], "--vispec-config"),
        (["--target", "{tmp}/model", "--tree", "on"], "--tree 'on' is not JSON"),
        (["--target", "{tmp}/model", "--tree", "false"], "--methods vispec"),
        (["--target", "{tmp}/model", "--tree", '{"depth": 9}'], "--tree-nodes 29: vispec.tree"),
        (["--target", "{tmp}/model", "--tree", '{"width": 2}'], "--tree: vispec.tree="),
        (["--target", "{tmp}/model", "--vispec-config", '{"tree": true}'], "--tree sets"),
        (
            ["--target", "{tmp}/model", "--vispec-config", '{"draft_attention": "fast"}'],
            "--vispec-config: vispec.draft_attention='fast'",
        ),
    ],
)
def test_user_mistakes_give_one_error_line(
    args: list[str], message: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    argv = [
        "bench",
        *(a.replace("{tmp}", str(tmp_path)) for a in args),
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_waves_go_through_every_prompt() -> None:
    """Batch 1 times every prompt alone, not the first one; larger batches cycle the set."""
    assert waves(list("abc"), 1) == [["a"], ["b"], ["c"]]
    assert waves(list("abc"), 2) == [["a", "b"], ["c", "a"]]
    assert waves(list("abc"), 4) == [["a", "b", "c", "a"]]
