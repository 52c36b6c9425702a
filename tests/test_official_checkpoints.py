"""Official ViSpec checkpoints run as their authors publish them: ``speculative_config.model``
names the folder (safetensors or pytorch_model.bin) or a hub id, and the plugin converts it once
into a cache keyed by the files' content (``vllm_vispec.checkpoint.resolve``)."""

from __future__ import annotations

import logging
import pathlib

import pytest
import safetensors.torch
from engines import MIXED_BATCH, counters, engine, greedy, plain_greedy
from test_config_errors import _create_config, _spec

from vllm_vispec import checkpoint
from vllm_vispec.checkpoint.resolve import CACHE_FOLDER, content_hash
from vllm_vispec.tools.testing.tiny_drafts import write_official_checkpoint

REPO = "JLKang/ViSpec-tiny-Qwen2.5-VL"


def _official(draft: pathlib.Path, dst: pathlib.Path, fmt: str = "safetensors") -> pathlib.Path:
    """The plugin draft's weights as the authors publish a checkpoint."""
    cfg, tensors = checkpoint.load_draft(draft)
    return write_official_checkpoint(dst, cfg, tensors, fmt)


def _hub_cache(cache: pathlib.Path, repo: str, files: pathlib.Path) -> None:
    """``files`` as the hub cache holds a download of ``repo`` (read offline, as in tests)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in files.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)


def _same_tensors(a: pathlib.Path, b: pathlib.Path) -> None:
    ta = safetensors.torch.load_file(a / checkpoint.SAFETENSORS_FILE)
    tb = safetensors.torch.load_file(b / checkpoint.SAFETENSORS_FILE)
    assert ta.keys() == tb.keys()
    assert all(ta[k].equal(tb[k]) for k in ta)


def test_official_folder_generates_what_its_converted_copy_does(
    qwen_target: pathlib.Path, qwen_draft: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Greedy tokens and acceptance of an engine given the official folder are those of the
    engine given the plugin-format draft; the copy is written once and found by a second
    engine."""
    official = _official(qwen_draft, tmp_path / "official")
    cache = tmp_path / "cache"
    runs = {}
    for name, draft in (("official", official), ("converted", qwen_draft)):
        with engine(qwen_target, draft, download_dir=str(cache)) as llm:
            before = counters(llm)
            tokens = greedy(llm, MIXED_BATCH)
            after = counters(llm)
            used = llm.llm_engine.vllm_config.speculative_config.model
        accepted = "vllm:spec_decode_num_accepted_tokens"
        runs[name] = (tokens, after[accepted] - before.get(accepted, 0), used)
    assert runs["official"][:2] == runs["converted"][:2]
    assert runs["official"][0] == plain_greedy(qwen_target, MIXED_BATCH)[0]
    assert runs["official"][1] > 0, "no draft token was accepted"
    copy = pathlib.Path(runs["official"][2])
    assert copy.parent == cache / CACHE_FOLDER
    _same_tensors(copy, qwen_draft)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_official_checkpoints_resolve_once_by_content(
    qwen_target: pathlib.Path,
    qwen_draft: pathlib.Path,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    fmt: str,
) -> None:
    """A folder and a hub id (from the hub cache, offline) of the same files map to the same
    copy, converted by the first start-up only, logged in one line each time."""
    official = _official(qwen_draft, tmp_path / "official", fmt)
    cache = tmp_path / "cache"
    _hub_cache(cache, REPO, official)
    caplog.set_level(logging.INFO, logger="vllm")
    models = []
    for model in (str(official), REPO):
        config = _create_config(qwen_target, _spec(model), download_dir=str(cache))
        models.append(config.speculative_config.model)
    assert models[0] == models[1]
    copy = pathlib.Path(models[0])
    assert copy.parent == cache / CACHE_FOLDER
    assert copy.name == content_hash(official)
    _same_tensors(copy, qwen_draft)
    # vLLM's logger writes to stderr once an engine config has set it up, to pytest's log before.
    text = caplog.text + capsys.readouterr().err
    assert text.count("converted the official checkpoint") == 1, text
    assert text.count("runs from its converted copy") == 1, text
    assert checkpoint.load_draft(copy)[0] == checkpoint.load_draft(qwen_draft)[0]


def test_nemo_automodel_export_runs_as_published(
    qwen3_target: pathlib.Path, qwen3_nemo_draft: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A NeMo Automodel export (sharded, norms, explicit head_dim) named as the draft runs
    lossless through chunked prefill that splits images and preemption, drafts accepted."""
    from test_lossless import CHUNK

    limits = {
        "max_num_batched_tokens": CHUNK["qwen3"],
        "num_gpu_blocks_override": 16,
        "max_model_len": 448,
    }
    expected = plain_greedy(qwen3_target, MIXED_BATCH * 2, **limits)[0]
    with engine(qwen3_target, qwen3_nemo_draft, download_dir=str(tmp_path), **limits) as llm:
        before = counters(llm)
        tokens = greedy(llm, MIXED_BATCH * 2)
        after = counters(llm)
        config = llm.llm_engine.vllm_config.speculative_config
        used = config.model
    assert tokens == expected
    accepted = "vllm:spec_decode_num_accepted_tokens"
    assert after[accepted] - before.get(accepted, 0) > 0, "no draft token was accepted"
    assert after["vllm:num_preemptions"] > before.get("vllm:num_preemptions", 0)
    assert pathlib.Path(used).parent == tmp_path / CACHE_FOLDER
    cfg = checkpoint.load_draft(used)[0]
    assert (cfg.head_dim, cfg.input_norm, cfg.final_norm) == (48, True, True)
