"""Official ViSpec checkpoints -> plugin drafts: layout, the convert CLI, and its error messages.

Checkpoints are random but have the exact official layout, at scaled-down Qwen2.5-VL-7B (q/k/v
biases) and LLaVA-1.6 (no biases) shapes. Every user mistake must give exit code 2, a single
``error:`` line, no traceback and no partial output folder.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from vllm_vispec import __version__
from vllm_vispec.checkpoint import (
    BIN_FILE,
    INDEX_FILE,
    SAFETENSORS_FILE,
    CheckpointError,
    draft_config_for_target,
    expected_shapes,
    load_draft,
    load_official,
)
from vllm_vispec.config import ViSpecConfig, is_plugin_config
from vllm_vispec.tools.cli import main
from vllm_vispec.tools.testing.tiny_drafts import (
    random_official_checkpoint,
    random_tensors,
    write_nemo_export,
)

QWEN = ViSpecConfig(
    hidden_size=64,
    intermediate_size=160,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=320,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=4096,
    qkv_bias=True,
    num_q=2,
)
LLAVA = ViSpecConfig(
    hidden_size=64,
    intermediate_size=172,
    num_attention_heads=2,
    num_key_value_heads=2,
    vocab_size=300,
    rms_norm_eps=1e-5,
    max_position_embeddings=4096,
    qkv_bias=False,
    num_q=3,
)


def qwen_target_config(hidden: int = 64, vocab: int = 320, top_level: bool = False) -> dict:
    """A Qwen2.5-VL HF config; ``top_level`` is the older layout without ``text_config``."""
    text = {
        "hidden_size": hidden,
        "intermediate_size": 160,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "max_position_embeddings": 4096,
        "vocab_size": vocab,
    }
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vision_config": {"depth": 2, "hidden_size": 32, "out_hidden_size": hidden},
    }
    if top_level:
        return {**config, **text}
    return {**config, "text_config": {"model_type": "qwen2_5_vl_text", **text}}


def llava_target_config(next_: bool = True, **text: int) -> dict:
    """A LLaVA-NeXT (or, ``next_=False``, LLaVA-1.5) HF config; like llava-hf's, ``text_config``
    omits Llama's defaults."""
    return {
        "architectures": [
            "LlavaNextForConditionalGeneration" if next_ else "LlavaForConditionalGeneration"
        ],
        "model_type": "llava_next" if next_ else "llava",
        "image_token_index": 32000,
        "text_config": {"model_type": "llama", "rms_norm_eps": 1e-5, "vocab_size": 32064, **text},
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 64,
            "num_attention_heads": 2,
        },
    }


def write_config(folder: pathlib.Path, config: dict) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def rewrite_config(folder: pathlib.Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def rewrite_tensors(folder: pathlib.Path, edit) -> None:
    file = folder / SAFETENSORS_FILE
    tensors = safetensors.torch.load_file(file)
    edit(tensors)
    safetensors.torch.save_file(tensors, file)


def assert_user_error(capsys, code: int, dst: pathlib.Path, *fragments: str) -> str:
    """Exit code 2, exactly one ``error:`` line naming ``fragments``, nothing left at ``dst``."""
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]
    return lines[0]


# --------------------------------------------------------------------------------------------
# Layout


def test_expected_shapes_match_the_released_qwen_7b_draft():
    cfg = ViSpecConfig(
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=28,
        vocab_size=152064,
        qkv_bias=True,
    )
    shapes = expected_shapes(cfg)
    assert len(shapes) == 22
    assert shapes["imadpt.q"] == (2, 28, 128)
    assert shapes["fc.weight"] == (3584, 7168)
    assert shapes["layers.0.mlp.down_proj.weight"] == (3584, 18944)
    assert shapes["embed_tokens.weight"] == (152064, 3584)


def test_expected_shapes_without_biases_and_with_grouped_kv():
    cfg = ViSpecConfig(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        fc_bias=False,
    )
    shapes = expected_shapes(cfg)
    assert len(shapes) == 15
    assert not [n for n in shapes if n.endswith(".bias")]
    assert shapes["layers.0.self_attn.k_proj.weight"] == (32, 64)
    assert shapes["layers.0.self_attn.q_proj.weight"] == (64, 64)


@pytest.mark.parametrize("cfg", [QWEN, LLAVA], ids=["qwen", "llava"])
def test_load_official_infers_num_q(tmp_path, cfg):
    src = random_official_checkpoint(tmp_path / "official", cfg)
    official = json.loads((src / "config.json").read_text())
    assert "num_q" not in official and official["architectures"] == ["LlamaForCausalLM"]
    loaded, tensors = load_official(src)
    assert loaded == cfg
    assert set(tensors) == set(expected_shapes(cfg))


def test_random_checkpoint_copies_the_target_embedding(tmp_path):
    embed = torch.randn(QWEN.vocab_size, QWEN.hidden_size)
    src = random_official_checkpoint(tmp_path / "official", QWEN, embed_tokens=embed)
    _, tensors = load_official(src)
    assert torch.equal(tensors["embed_tokens.weight"], embed)
    with pytest.raises(ValueError, match="embed_tokens"):
        random_official_checkpoint(tmp_path / "bad", QWEN, embed_tokens=embed[:-1])


# --------------------------------------------------------------------------------------------
# Round trip through the CLI


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("cfg", [QWEN, LLAVA], ids=["qwen", "llava"])
def test_convert_round_trip(tmp_path, capsys, cfg, fmt):
    src = random_official_checkpoint(tmp_path / "official", cfg, seed=3, fmt=fmt)
    dst = tmp_path / "nested" / "draft"
    assert main(["convert", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"num_q {cfg.num_q}" in out and f"hidden {cfg.hidden_size}" in out
    assert str(dst) in out and f"{len(expected_shapes(cfg))} tensors" in out

    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in dst.parent.iterdir()] == ["draft"]
    config = json.loads((dst / "config.json").read_text())
    assert is_plugin_config(config)
    assert config["vispec"]["num_q"] == cfg.num_q
    assert config["vispec"]["converted_from"] == str(src.resolve())
    source_file = SAFETENSORS_FILE if fmt == "safetensors" else BIN_FILE
    assert config["vispec"]["source_file"] == source_file
    assert config["vispec"]["converter_version"] == __version__

    loaded, tensors = load_draft(dst)
    assert loaded == cfg
    _, official = load_official(src)
    assert tensors.keys() == official.keys()
    for name, tensor in official.items():
        assert torch.equal(tensors[name], tensor), name


def test_convert_casts_dtype_and_checks_target(tmp_path, capsys):
    src = random_official_checkpoint(tmp_path / "official", QWEN)
    target = write_config(tmp_path / "target", qwen_target_config())
    dst = tmp_path / "draft"
    args = ["convert", str(src), str(dst), "--dtype", "bfloat16", "--target", str(target)]
    assert main(args) == 0
    assert "bfloat16" in capsys.readouterr().out
    _, tensors = load_draft(dst)
    _, official = load_official(src)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert torch.equal(tensors["fc.weight"], official["fc.weight"].to(torch.bfloat16))


def test_convert_checks_against_a_llava_1_5_target(tmp_path, capsys):
    """JLKang/ViSpec-llava-1.5-7b-hf's layout (Llama, no q/k/v bias) against llava-hf's config."""
    src = random_official_checkpoint(tmp_path / "official", LLAVA)
    sizes = {"hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 2}
    target = write_config(tmp_path / "target", llava_target_config(False, **sizes, vocab_size=300))
    assert main(["convert", str(src), str(tmp_path / "draft"), "--target", str(target)]) == 0
    assert load_draft(tmp_path / "draft")[0] == LLAVA
    sized = draft_config_for_target(target, num_q=3)
    assert (sized.hidden_size, sized.qkv_bias, sized.vocab_size) == (64, False, 300)


def test_convert_accepts_an_older_top_level_qwen_target(tmp_path, capsys):
    src = random_official_checkpoint(tmp_path / "official", QWEN)
    target = write_config(tmp_path / "target", qwen_target_config(top_level=True))
    assert main(["convert", str(src), str(tmp_path / "draft"), "--target", str(target)]) == 0


def test_provenance_names_the_hub_repo_and_rope_buffers_are_dropped(tmp_path, capsys):
    repo = "JLKang/ViSpec-Qwen2.5-VL-7B-Instruct"
    snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abc"
    src = random_official_checkpoint(snapshot, QWEN, fmt="bin")
    tensors = torch.load(src / BIN_FILE, weights_only=True)
    tensors["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save(tensors, src / BIN_FILE)
    dst = tmp_path / "draft"
    assert main(["convert", str(src), str(dst)]) == 0
    assert json.loads((dst / "config.json").read_text())["vispec"]["converted_from"] == repo
    assert set(load_draft(dst)[1]) == set(expected_shapes(QWEN))


def test_force_replaces_an_earlier_draft(tmp_path, capsys):
    dst = tmp_path / "draft"
    first = random_official_checkpoint(tmp_path / "a", QWEN, seed=1)
    second = random_official_checkpoint(tmp_path / "b", QWEN, seed=2)
    assert main(["convert", str(first), str(dst)]) == 0
    code = main(["convert", str(second), str(dst)])
    out, err = capsys.readouterr()
    assert code == 2 and "--force" in err and err.count("\n") == 1
    assert main(["convert", str(second), str(dst), "--force"]) == 0
    _, tensors = load_draft(dst)
    _, official = load_official(second)
    assert torch.equal(tensors["imadpt.q"], official["imadpt.q"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "draft"]


def test_force_never_deletes_a_folder_that_is_not_a_draft(tmp_path, capsys):
    src = random_official_checkpoint(tmp_path / "official", QWEN)
    dst = tmp_path / "precious"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    assert main(["convert", str(src), str(dst), "--force"]) == 2
    assert "not a vllm-vispec draft" in capsys.readouterr().err
    assert (dst / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("cfg", [QWEN, LLAVA], ids=["qwen", "llava"])
def test_converted_draft_loads_strictly_into_the_reference(tmp_path, capsys, cfg):
    from vllm_vispec.tools.reference import ViSpecDraft

    src = random_official_checkpoint(tmp_path / "official", cfg)
    dst = tmp_path / "draft"
    assert main(["convert", str(src), str(dst)]) == 0
    loaded, tensors = load_draft(dst)
    draft = ViSpecDraft(loaded, torch.randn(cfg.vocab_size, cfg.hidden_size))
    draft.load_state_dict(tensors, strict=True)
    assert torch.equal(draft.imadpt.q, tensors["imadpt.q"])
    assert torch.equal(
        draft.layers[0].self_attn.k_proj.weight, tensors["layers.0.self_attn.k_proj.weight"]
    )


def _nemo_export(tmp_path: pathlib.Path, **overrides: object) -> tuple[pathlib.Path, ViSpecConfig]:
    """A NeMo Automodel export for the scaled-down Qwen2.5-VL target, attention head_dim 48
    (hidden / heads is 16) as on targets whose head_dim is explicit."""
    target = write_config(tmp_path / "target", qwen_target_config())
    fields = {"head_dim": 48, "input_norm": True, "final_norm": True, **overrides}
    cfg = draft_config_for_target(target, num_q=3, fc_bias=True, **fields)
    src = write_nemo_export(tmp_path / "nemo", target, cfg, random_tensors(cfg, seed=5), shards=3)
    return src, cfg


def test_nemo_automodel_export_converts_and_loads_strictly_into_the_reference(tmp_path, capsys):
    """NeMo's layout (target text config with the draft's fields, ``img_adaptor``, two trained
    norms, explicit head_dim, safetensors shards and index) becomes a plugin draft with the
    same tensors under the released names."""
    from vllm_vispec.tools.reference import ViSpecDraft

    src, cfg = _nemo_export(tmp_path)
    assert (src / INDEX_FILE).is_file() and not (src / SAFETENSORS_FILE).exists()
    config = json.loads((src / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["model_type"] == "qwen2_5_vl_text"
    dst = tmp_path / "draft"
    assert main(["convert", str(src), str(dst)]) == 0
    loaded, tensors = load_draft(dst)
    assert loaded == cfg and (loaded.head_dim, loaded.adaptor_head_dim) == (48, 16)
    assert json.loads((dst / "config.json").read_text())["vispec"]["source_file"] == INDEX_FILE
    assert json.loads((dst / "config.json").read_text())["vispec"]["format_version"] == 2
    expected = random_tensors(cfg, seed=5)
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[n], expected[n]) for n in expected)
    draft = ViSpecDraft(loaded, torch.randn(cfg.vocab_size, cfg.hidden_size))
    draft.load_state_dict(tensors, strict=True)
    assert draft.layers[0].input_layernorm is not None and draft.norm is not None


def test_a_nemo_export_missing_a_shard_is_a_one_line_error(tmp_path, capsys):
    src, _ = _nemo_export(tmp_path)
    (src / "model-00002-of-00003.safetensors").unlink()
    dst = tmp_path / "draft"
    code = main(["convert", str(src), str(dst)])
    assert_user_error(capsys, code, dst, "lacks the shards model-00002-of-00003", INDEX_FILE)


def test_a_newer_draft_format_is_refused_by_version(tmp_path):
    """Drafts with norms are format 2 (an older plugin refuses them instead of dropping the
    norms); drafts without stay format 1."""
    src, cfg = _nemo_export(tmp_path)
    assert main(["convert", str(src), str(tmp_path / "a")]) == 0
    plain = dataclasses.replace(cfg, input_norm=False, final_norm=False)
    assert json.loads(json.dumps(plain.to_hf_dict()))["vispec"]["format_version"] == 1
    rewrite_config(tmp_path / "a", vispec={"format_version": 3, "num_q": 3})
    with pytest.raises(CheckpointError, match="newer vllm-vispec"):
        load_draft(tmp_path / "a")


# --------------------------------------------------------------------------------------------
# User mistakes


def _truncate(folder: pathlib.Path, name: str) -> None:
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])


BAD_SOURCES = {
    "missing-config": (lambda f: (f / "config.json").unlink(), ["no config.json"]),
    "no-weights": (lambda f: (f / SAFETENSORS_FILE).unlink(), ["has no model.safetensors"]),
    "invalid-json": (lambda f: (f / "config.json").write_text("{"), ["cannot parse"]),
    "config-lacks-key": (
        lambda f: (f / "config.json").write_text(json.dumps({"hidden_size": 64})),
        ["lacks 'intermediate_size'"],
    ),
    "truncated-safetensors": (
        lambda f: _truncate(f, SAFETENSORS_FILE),
        ["cannot read", "corrupt or truncated"],
    ),
    "missing-tensors": (
        lambda f: rewrite_tensors(f, lambda t: [t.pop(n) for n in list(t) if "mlp" in n]),
        ["3 of the 22 tensors", "layers.0.mlp.gate_proj.weight", "missing"],
    ),
    "unexpected-tensor": (
        lambda f: rewrite_tensors(f, lambda t: t.update({"lm_head.weight": torch.zeros(2)})),
        ["1 unexpected tensor (lm_head.weight)"],
    ),
    "biases-config-mismatch": (
        lambda f: rewrite_config(f, qkv_bias=False),
        ["unexpected tensors", "qkv_bias=False"],
    ),
    "shape-mismatch": (
        lambda f: rewrite_config(f, intermediate_size=128),
        ["layers.0.mlp.gate_proj.weight has shape [160, 64], expected [128, 64]", "and 2 more"],
    ),
    "vocab-mismatch-in-config": (
        lambda f: rewrite_config(f, vocab_size=321),
        ["embed_tokens.weight has shape [320, 64], expected [321, 64]"],
    ),
    "nemo-two-layers": (
        lambda f: rewrite_config(f, architectures=["VispecDraftModel"], draft_num_hidden_layers=2),
        ["NeMo Automodel ViSpec draft with 2 decoder layers", "draft_num_hidden_layers: 1"],
    ),
    "nemo-o-proj-bias": (
        lambda f: rewrite_config(f, architectures=["VispecDraftModel"], attention_bias=True),
        ["an o_proj bias", "attention_bias: false"],
    ),
    "nemo-without-its-norms": (
        lambda f: rewrite_config(f, architectures=["VispecDraftModel"]),
        ["2 of the 22 tensors", "layers.0.input_layernorm.weight", "input_norm=True"],
    ),
    "bad-q-rank": (
        lambda f: rewrite_tensors(f, lambda t: t.update({"imadpt.q": torch.zeros(2, 64)})),
        ["imadpt.q has shape [2, 64]"],
    ),
    "plain-eagle": (
        lambda f: rewrite_tensors(
            f, lambda t: [t.pop(n) for n in list(t) if n.startswith(("imadpt", "img_fc"))]
        ),
        ["not a ViSpec checkpoint", "plain EAGLE draft"],
    ),
    "full-llama": (
        lambda f: rewrite_tensors(
            f, lambda t: [t.update({"model." + n: t.pop(n)}) for n in list(t)]
        ),
        ["not a ViSpec checkpoint", "full model"],
    ),
    "heads-do-not-divide": (
        lambda f: rewrite_config(f, num_attention_heads=3),
        ["not divisible"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_source_is_a_one_line_error(tmp_path, capsys, case):
    edit, fragments = BAD_SOURCES[case]
    src = random_official_checkpoint(tmp_path / "official", QWEN)
    edit(src)
    dst = tmp_path / "draft"
    assert_user_error(capsys, main(["convert", str(src), str(dst)]), dst, *fragments)


@pytest.mark.parametrize("how", ["truncated", "garbage", "not-flat"])
def test_bad_bin_is_a_one_line_error(tmp_path, capsys, how):
    src = random_official_checkpoint(tmp_path / "official", LLAVA, fmt="bin")
    if how == "truncated":
        _truncate(src, BIN_FILE)
    elif how == "garbage":
        (src / BIN_FILE).write_bytes(b"not a checkpoint" * 64)
    else:
        torch.save({"model": {"fc.weight": torch.zeros(1)}, "step": 3}, src / BIN_FILE)
    dst = tmp_path / "draft"
    fragment = "flat state dict" if how == "not-flat" else "corrupt or truncated"
    assert_user_error(capsys, main(["convert", str(src), str(dst)]), dst, fragment)


def test_missing_source_and_repo_ids(tmp_path, capsys, monkeypatch):
    dst = tmp_path / "draft"
    assert_user_error(
        capsys, main(["convert", str(tmp_path / "nope"), str(dst)]), dst, "does not exist"
    )
    monkeypatch.chdir(tmp_path)
    line = assert_user_error(
        capsys,
        main(["convert", "JLKang/ViSpec-Qwen2.5-VL-7B-Instruct", str(dst)]),
        dst,
        "not a local folder",
    )
    assert "hf download JLKang/ViSpec-Qwen2.5-VL-7B-Instruct" in line


def test_converting_a_converted_draft_or_onto_itself(tmp_path, capsys):
    src = random_official_checkpoint(tmp_path / "official", QWEN)
    assert main(["convert", str(src), str(tmp_path / "draft")]) == 0
    capsys.readouterr()
    dst = tmp_path / "again"
    assert_user_error(
        capsys,
        main(["convert", str(tmp_path / "draft"), str(dst)]),
        dst,
        "already in vllm-vispec format",
    )
    assert main(["convert", str(src), str(src), "--force"]) == 2
    assert "DST is SRC" in capsys.readouterr().err
    assert load_official(src)[0] == QWEN


@pytest.mark.parametrize(
    "target, fragment",
    [
        (qwen_target_config(hidden=128), "hidden size 64 does not match the hidden size 128"),
        (qwen_target_config(vocab=512), "vocab size 320 does not match the vocab size 512"),
        (qwen_target_config(vocab=512, top_level=True), "vocab size 320 does not match"),
        (llava_target_config(), "hidden size 64 does not match the hidden size 4096"),
        (None, "has no config.json"),
        ({"model_type": "no_such_model"}, "cannot read the target's"),
        (
            {
                **llava_target_config(),
                "vision_config": {"model_type": "clip_vision_model", "hidden_size": 64},
            },
            "not a multiple of the number of attention heads",
        ),
    ],
    ids=[
        "hidden",
        "vocab",
        "vocab-top-level",
        "llava-defaults",
        "no-config",
        "unknown-model",
        "invalid-config",
    ],
)
def test_target_mismatch(tmp_path, capsys, target, fragment):
    src = random_official_checkpoint(tmp_path / "official", QWEN)
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    if target is not None:
        write_config(target_dir, target)
    dst = tmp_path / "draft"
    args = ["convert", str(src), str(dst), "--target", str(target_dir)]
    assert_user_error(capsys, main(args), dst, fragment)


def test_float16_overflow_is_refused(tmp_path, capsys):
    src = random_official_checkpoint(tmp_path / "official", QWEN)
    rewrite_tensors(src, lambda t: t["fc.weight"].__setitem__((0, 0), 1e6))
    dst = tmp_path / "draft"
    assert_user_error(
        capsys,
        main(["convert", str(src), str(dst), "--dtype", "float16"]),
        dst,
        "fc.weight overflows float16",
    )


# --------------------------------------------------------------------------------------------
# load_draft


def test_load_draft_on_an_unconverted_checkpoint_says_how_to_convert(tmp_path):
    for fmt in ("safetensors", "bin"):
        src = random_official_checkpoint(tmp_path / fmt, LLAVA, fmt=fmt)
        with pytest.raises(CheckpointError, match=r"run `vllm-vispec convert .* DST`") as e:
            load_draft(src)
        assert "\n" not in str(e.value)


def test_load_draft_rejects_other_folders(tmp_path):
    llama = random_official_checkpoint(tmp_path / "eagle", QWEN)
    rewrite_tensors(llama, lambda t: [t.pop(n) for n in list(t) if n.startswith("imadpt")])
    with pytest.raises(CheckpointError, match="not a ViSpec draft.*plain EAGLE"):
        load_draft(llama)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_draft(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_draft(tmp_path)
    with pytest.raises(CheckpointError, match="not a ViSpec draft.*no readable weights file"):
        load_draft(write_config(tmp_path / "other", {"architectures": ["LlamaForCausalLM"]}))


def test_load_draft_validates_a_damaged_draft(tmp_path, capsys):
    src = random_official_checkpoint(tmp_path / "official", QWEN)
    dst = tmp_path / "draft"
    assert main(["convert", str(src), str(dst)]) == 0
    rewrite_tensors(dst, lambda t: t.pop("imadpt.k_proj.bias"))
    with pytest.raises(CheckpointError, match="imadpt.k_proj.bias"):
        load_draft(dst)
    rewrite_config(dst, vispec={"format_version": 99, "num_q": 2})
    with pytest.raises(CheckpointError, match="upgrade vllm-vispec"):
        load_draft(dst)
    rewrite_config(dst, vispec="yes")
    with pytest.raises(CheckpointError, match="malformed vispec block"):
        load_draft(dst)


# --------------------------------------------------------------------------------------------
# Draft configs for targets


def test_draft_config_for_released_targets(tmp_path):
    qwen7b = qwen_target_config(hidden=3584, vocab=152064, top_level=True)
    qwen7b.update(intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4)
    cfg = draft_config_for_target(write_config(tmp_path / "qwen", qwen7b))
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (3584, 28, 28)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.qkv_bias) == (152064, 18944, True)
    assert cfg.rope_theta == 1e6 and cfg.num_q == 2

    cfg = draft_config_for_target(write_config(tmp_path / "llava", llava_target_config()), 3)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size) == (4096, 32, 32064)
    assert (cfg.qkv_bias, cfg.num_q, cfg.rms_norm_eps) == (False, 3, 1e-5)


def test_draft_config_for_target_round_trips_through_convert(tmp_path, capsys):
    target = write_config(tmp_path / "target", qwen_target_config())
    cfg = draft_config_for_target(target, num_q=2, max_position_embeddings=2048)
    assert cfg == dataclasses.replace(QWEN, max_position_embeddings=2048)
    src = random_official_checkpoint(tmp_path / "official", cfg)
    assert main(["convert", str(src), str(tmp_path / "draft"), "--target", str(target)]) == 0


# --------------------------------------------------------------------------------------------
# Help


def test_help(capsys):
    for argv in (["--help"], ["convert", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "JLKang/ViSpec-Qwen2.5-VL-7B-Instruct" in out and '"method": "eagle"' in out
    assert "--force" in out and "--target" in out


def test_console_script(tmp_path):
    script = pathlib.Path(sys.executable).parent / "vllm-vispec"
    done = subprocess.run([script, "convert", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "official ViSpec" in done.stdout
    done = subprocess.run(
        [script, "convert", str(tmp_path / "x"), str(tmp_path / "y")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
