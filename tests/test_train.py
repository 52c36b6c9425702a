"""`vllm-vispec train`: losses fall, checkpoints load in vLLM and decode losslessly, resume is
exact, and bad data is reported (skipped and counted, or refused with one line)."""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import pytest
import safetensors.torch
import torch
from engines import MIXED_BATCH, counters, engine, greedy, plain_greedy
from PIL import Image
from transformers import AutoProcessor

from vllm_vispec.tools.bench.offline import drafter
from vllm_vispec.tools.cli import main
from vllm_vispec.tools.toy.world import make_samples
from vllm_vispec.tools.train.data import build_examples, collate, load_records, to_messages
from vllm_vispec.tools.train.losses import RECIPES, row_losses, topk_ranking
from vllm_vispec.tools.train.trainer import LOG_FILE, TrainConfig, first_step_agreement, train


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Eight toy-world conversations (112-pixel images) plus two ShareGPT text chats."""
    root = tmp_path_factory.mktemp("toy_data")
    records = make_samples(8, seed=7, image_dir=root, size=112)
    (root / "llava.json").write_text(json.dumps(records))
    chats = [
        {
            "conversations": [
                {"from": "human", "value": "Tell me about red circles."},
                {"from": "gpt", "value": "A red circle is round and red."},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "Count to four."},
                {"from": "gpt", "value": "one, two, three, four."},
            ]
        },
    ]
    (root / "sharegpt.json").write_text(json.dumps(chats))
    return root


def _config(target: pathlib.Path, data: pathlib.Path, out: pathlib.Path, **kw) -> TrainConfig:
    base = {
        "target": target,
        "data": [data / "llava.json", data / "sharegpt.json"],
        "image_root": data,
        "out": out,
        "batch_size": 4,
        "lr": 5e-3,
        "max_steps": 16,
        "noise": 0.0,
        "quiet": True,
    }
    return TrainConfig(**{**base, **kw})


def _log(out: pathlib.Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in (out / LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(
    qwen_target: pathlib.Path, toy_data: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    out = tmp_path_factory.mktemp("train") / "vispec"
    train(_config(qwen_target, toy_data, out, save_every=8))
    return out


def test_loss_falls_and_checkpoints_are_drafts(trained: pathlib.Path) -> None:
    losses, top1 = _log(trained), _log(trained, "top1")
    assert len(losses) == 16
    assert sum(losses[-4:]) < 0.95 * sum(losses[:4]), losses
    assert sum(top1[-4:]) > sum(top1[:4]) + 0.1, top1
    for folder in (trained / "step-0000008", trained / "final"):
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["EagleViSpecForCausalLM"]
        assert (folder / "trainer_state" / "progress.json").is_file()


def test_trained_draft_decodes_losslessly_in_vllm(
    qwen_target: pathlib.Path, trained: pathlib.Path
) -> None:
    with engine(qwen_target) as llm:
        expected = greedy(llm, MIXED_BATCH)
    with engine(qwen_target, trained / "final") as llm:
        assert greedy(llm, MIXED_BATCH) == expected
        assert counters(llm)["vllm:spec_decode_num_drafts"] > 0


def test_first_step_agreement_is_the_reference_drafts_first_token(
    qwen_target: pathlib.Path, toy_data: pathlib.Path, trained: pathlib.Path
) -> None:
    """The teacher-forced agreement (one pass over whole answers) says, at every answer
    position, whether the reference draft drafting from that prefix alone (greedy_chain, k=1)
    proposes the target's greedy token."""
    from vllm_vispec.layout import image_spans
    from vllm_vispec.tools.reference import DraftInput
    from vllm_vispec.tools.train.teacher import Teacher
    from vllm_vispec.tools.train.trainer import _build_draft

    data = toy_data / "one.json"
    data.write_text(json.dumps(json.loads((toy_data / "llava.json").read_text())[:1]))
    predicted, agree = first_step_agreement(qwen_target, trained / "final", "vispec", [data],
                                            toy_data)  # fmt: skip
    teacher = Teacher(qwen_target, torch.device("cpu"), torch.float32)
    examples, _ = build_examples(load_records([data]), teacher.processor, toy_data, 4096)
    batch = collate(teacher.processor, examples)
    out = teacher(batch)
    ids = batch["input_ids"][0]
    cfg = _config(qwen_target, toy_data, trained, init=trained / "final")
    _, draft = _build_draft(cfg, teacher)
    answer = [t for t in range(len(ids) - 2) if batch["loss_mask"][0, t + 2]]
    assert len(answer) == len(predicted) > 10
    spans = image_spans(ids, teacher.image_token_ids)
    embeds = [out.inputs_embeds[0, s:e] for s, e in spans]
    for i, t in enumerate(answer):
        inp = DraftInput(ids[: t + 2], out.hidden[0, : t + 1], embeds, teacher.image_token_ids)
        assert int(predicted[i]) == int(teacher.logits(out.hidden[0, t + 1]).argmax())
        assert bool(agree[i]) == (draft.greedy_chain(inp, 1)[0] == int(predicted[i])), t
    assert 0 < float(agree.float().mean()) < 1  # both outcomes occur: the check bites


def test_resume_reproduces_an_uninterrupted_run(
    qwen_target: pathlib.Path, toy_data: pathlib.Path, trained: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Continue from step 8 of the same run: the same losses and final weights (up to float
    rounding: reductions on several threads do not add in a fixed order)."""
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(trained / "step-0000008", out / "step-0000008")
    train(_config(qwen_target, toy_data, out, save_every=8, resume=True))
    assert _log(out) == pytest.approx(_log(trained)[8:], rel=1e-5)
    got = safetensors.torch.load_file(out / "final" / "model.safetensors")
    want = safetensors.torch.load_file(trained / "final" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_eagle_baseline_trains_with_mtp_and_loads_in_vllm(
    qwen_target: pathlib.Path, toy_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "eagle"
    train(_config(qwen_target, toy_data, out, draft="eagle", max_steps=3, mtp_steps=1))
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    names = safetensors.torch.load_file(out / "final" / "model.safetensors").keys()
    assert not any(n.startswith(("imadpt.", "img_fc.")) for n in names)
    with engine(qwen_target) as llm:
        expected = greedy(llm, MIXED_BATCH[:2], max_tokens=16)
    with engine(qwen_target, out / "final") as llm:
        assert greedy(llm, MIXED_BATCH[:2], max_tokens=16) == expected
        # vLLM builds the layer the checkpoint describes: q/k/v biases, none on o_proj (which
        # `attention_bias` would add, left uninitialised: garbage drafts, zero acceptance).
        attn = drafter(llm).model.model.layers[0].self_attn
        assert attn.qkv_proj.bias is not None and attn.o_proj.bias is None


@pytest.mark.parametrize("kind", ["eaglevlm", "specvlm"])
def test_eaglevlm_and_specvlm_drafts_train_and_decode_losslessly(
    kind: str, qwen_target: pathlib.Path, toy_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """SpecVLM's gate learns through the straight-through Gumbel weight and the compute term."""
    from vllm_vispec.tools.train.teacher import Teacher
    from vllm_vispec.tools.train.trainer import Distiller, _build_draft

    out = tmp_path / kind
    train(_config(qwen_target, toy_data, out, draft=kind, max_steps=3, mtp_steps=1))
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["vispec"]["kind"] == kind and config["vispec"]["input_norm"]
    assert all(math.isfinite(x) for x in _log(out))
    if kind == "specvlm":
        lines = (out / LOG_FILE).read_text().splitlines()
        kept = [json.loads(line).get("kept") for line in lines]
        assert kept[0] is None and kept[-1] is not None, kept  # the gate trains after warm-up
        assert all(0 <= x <= 1 for x in kept if x is not None)
        cfg = _config(qwen_target, toy_data, out, draft=kind)
        teacher = Teacher(qwen_target, torch.device("cpu"), torch.float32)
        draft = _build_draft(cfg, teacher)[1].train()
        examples, _ = build_examples(load_records(cfg.data), teacher.processor, toy_data, 4096)
        batch = collate(teacher.processor, examples[:4])
        loss, _ = Distiller(draft, False, cfg, teacher.image_token_ids)(
            teacher, teacher(batch), batch
        )
        loss.backward()
        assert draft.compressor.gate.weight.grad.abs().sum() > 0
    expected = plain_greedy(qwen_target, MIXED_BATCH[:2], max_tokens=16)[0]
    with engine(qwen_target, out / "final") as llm:
        assert greedy(llm, MIXED_BATCH[:2], max_tokens=16) == expected


@pytest.mark.parametrize("name", ["llava15", "qwen3", "qwen3_moe"])
def test_trains_for_llava_1_5_and_qwen3_vl(
    name: str, toy_data: pathlib.Path, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    """The other target families train too (their drafts' losslessness: test_lossless)."""
    target = request.getfixturevalue(f"{name}_target")
    out = tmp_path / name
    train(_config(target, toy_data, out, max_steps=2))
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["architectures"] == ["EagleViSpecForCausalLM"]
    assert config["hidden_size"] == 128 and config["vocab_size"] == 512
    assert all(math.isfinite(x) for x in _log(out))


def test_answer_masks_cover_exactly_the_answers(
    qwen_target: pathlib.Path, toy_data: pathlib.Path
) -> None:
    processor = AutoProcessor.from_pretrained(qwen_target)
    records = load_records([toy_data / "llava.json", toy_data / "sharegpt.json"])
    examples, report = build_examples(records[-3:], processor, toy_data, 4096)
    assert report.kept == 3 and not report.skipped
    batch = collate(processor, examples)
    for b, record in enumerate(records[-3:]):
        answer = batch["input_ids"][b][batch["loss_mask"][b]]
        text = processor.decode(answer)
        assert text.startswith(record["conversations"][-1]["value"]), text
        assert text.endswith("<|im_end|>\n")
    # The image (64 placeholder tokens at 112 pixels: 4x4 after merging -> 16) is in the prompt.
    assert (batch["input_ids"][0] == 510).sum() == 16


def test_bad_records_are_skipped_and_counted(
    qwen_target: pathlib.Path, toy_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (112, 112)).save(tmp_path / "ok.png")
    ask = {"from": "human", "value": "<image>\nDescribe."}
    answer = {"from": "gpt", "value": "Dark."}
    records = [
        {"id": "good", "image": "ok.png", "conversations": [ask, answer]},
        {"id": "gone", "image": "missing.png", "conversations": [ask, answer]},
        {"id": "bad", "image": "broken.png", "conversations": [ask, answer]},
        {"id": "empty", "conversations": []},
        {"id": "mute", "conversations": [{"from": "human", "value": "Hi"}]},
        {
            "id": "two",
            "image": "ok.png",
            "conversations": [{"from": "human", "value": "<image><image>"}, answer],
        },
    ]
    processor = AutoProcessor.from_pretrained(qwen_target)
    examples, report = build_examples(records, processor, tmp_path, 4096)
    assert [e.record_id for e in examples] == ["good"]
    assert report.skipped == {
        "missing image": 1,
        "unreadable image": 1,
        "empty conversation": 2,
        "image count mismatch": 1,
    }
    text = str(report)
    assert text.startswith("using 1 of 6 records") and "missing.png" in text


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "is not valid JSON"), ('{"a": 1}', "must hold a list of records")],
)
def test_unusable_data_file_is_one_line_error(
    qwen_target: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture,
    content: str,
    message: str,
) -> None:
    data = tmp_path / "data.json"
    data.write_text(content)
    args = [
        "train",
        "--target",
        str(qwen_target),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_existing_run_is_not_clobbered(
    qwen_target: pathlib.Path,
    toy_data: pathlib.Path,
    trained: pathlib.Path,
    capsys: pytest.CaptureFixture,
) -> None:
    args = [
        "train",
        "--target",
        str(qwen_target),
        "--data",
        str(toy_data / "llava.json"),
        "--out",
        str(trained),
    ]
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_recipes_and_ranking_loss() -> None:
    teacher = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert topk_ranking(teacher.clone(), teacher, 3) < topk_ranking(-teacher, teacher, 3)
    hidden = torch.zeros(1, 2)
    for name, weights in RECIPES.items():
        same = row_losses(teacher, hidden, teacher, hidden, weights)[0].mean()
        other = row_losses(teacher.flip(-1), hidden + 1, teacher, hidden, weights)[0].mean()
        assert other > same, name


def test_regenerated_answers_are_the_targets_and_cached(
    qwen_target: pathlib.Path, toy_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """vLLM regenerates the answers in one batched call, equal to HF transformers' greedy
    answers one at a time; a second run finds them all in the cache."""
    from vllm_vispec.tools.train.data import regenerate_answers
    from vllm_vispec.tools.train.teacher import Teacher, vllm_answers

    records = load_records([toy_data / "llava.json"])[:3]
    cache = tmp_path / "regenerated.jsonl"
    suffix = "Please answer with at least 1000 words."
    calls = []
    with vllm_answers(qwen_target, 6, bf16=False) as vllm_answer:

        def answer(prompts: list) -> list[str]:
            calls.append(len(prompts))
            assert all(m[-1]["content"][-1]["text"] == suffix for m, _ in prompts)
            return vllm_answer(prompts)

        first = regenerate_answers(records, answer, toy_data, suffix, cache, "tiny")
    assert calls == [3] and len(cache.read_text().splitlines()) == 3
    teacher = Teacher(qwen_target, torch.device("cpu"), torch.float32)
    for old, new in zip(records, first, strict=True):
        human, gpt = new["conversations"]
        assert human["value"].startswith("<image>") and human["value"].endswith(suffix)
        assert gpt["value"] and gpt["value"] != old["conversations"][1]["value"]
        messages, images = to_messages(old, toy_data)
        question = [*messages[0]["content"], {"type": "text", "text": suffix}]
        ask = [{"role": "user", "content": question}]
        assert gpt["value"] == teacher.answer(ask, images, max_new_tokens=6)

    def fail(prompts: list) -> list[str]:
        raise AssertionError("a cached answer was generated again")

    assert regenerate_answers(records, fail, toy_data, suffix, cache, "tiny") == first
    out = tmp_path / "run"  # the trainer's own path: vLLM first, then the HF teacher trains
    train(_config(qwen_target, toy_data, out, regenerate=True, regen_max_tokens=6, max_steps=1))
    assert len((out / "regenerated.jsonl").read_text().splitlines()) == 10  # 8 LLaVA + 2 chats
