"""The vLLM draft computes what the reference draft computes.

For the same weights and inputs, the draft's first-pass outputs inside a real engine (paged KV,
hiding channel, adaptor kernel path, raw 1-D positions on an M-RoPE target, images split across
prefill chunks) must equal :class:`vllm_vispec.tools.reference.ViSpecDraft` on the whole prompt. The
target's hidden states and image embeddings are captured from the engine itself, so the two
drafts see identical inputs.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib

import pytest
import safetensors
import torch
from engines import chat, engine, models
from vllm import SamplingParams

from vllm_vispec.checkpoint import load_draft, load_official
from vllm_vispec.config import is_plugin_config
from vllm_vispec.layout import image_spans
from vllm_vispec.tools.bench.offline import model_runner
from vllm_vispec.tools.reference import DraftInput, ViSpecDraft

# float32 everywhere; vLLM's CPU attention and fused ops only reorder sums (seen: <= 1.1e-6).
ATOL = 5e-5

CONVERSATIONS = [
    chat([], "Tell me a story."),
    chat([(1, (224, 224))]),
    chat([(2, (224, 224)), (3, (320, 200))], "Compare the two pictures."),
]


class FirstPassRecorder:
    """Wraps the engine's ViSpec proposer to record each step's inputs and first-pass output."""

    def __init__(self, llm) -> None:
        self.runner = model_runner(llm)
        self.drafter = self.runner.drafter
        self.hidden: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        self.draft_out: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        self.encoder: dict[str, torch.Tensor] = {}
        self.requests: dict[str, tuple[list[int], list]] = {}  # prompt ids, image features
        self.chunk_starts: dict[str, set[int]] = collections.defaultdict(set)
        propose = self.drafter.propose
        forward = self.drafter.draft.forward
        state = {"first": False}

        def recording_forward(*args, **kwargs):
            out = forward(*args, **kwargs)
            if state["first"]:
                state["first"] = False
                self._split(out[0])
            return out

        def recording_propose(**kwargs):
            self._qsl = kwargs["common_attn_metadata"].query_start_loc_cpu.tolist()
            self._split(kwargs["target_hidden_states"], into=self.hidden)
            self.encoder.update({k: v.clone() for k, v in self.runner.encoder_cache.items()})
            batch = self.runner.input_batch
            for r, req_id in enumerate(batch.req_ids):
                self.chunk_starts[req_id].add(int(batch.num_computed_tokens_cpu[r]))
                state_ = self.runner.requests[req_id]
                features = sorted(state_.mm_features, key=lambda f: f.mm_position.offset)
                self.requests[req_id] = (list(state_.prompt_token_ids), features)
            state["first"] = True
            return propose(**kwargs)

        self.drafter.propose = recording_propose
        self.drafter.draft.forward = recording_forward

    def _split(self, rows: torch.Tensor, into=None) -> None:
        into = self.draft_out if into is None else into
        for r, req_id in enumerate(self.runner.input_batch.req_ids):
            into[req_id].append(rows[self._qsl[r] : self._qsl[r + 1]].detach().clone())

    def request_inputs(self, prompt: list[int], first_token: int, image_token: int):
        """Reference input for one request and the vLLM draft's outputs at its prompt positions."""
        req_id = next(r for r, (ids, _) in self.requests.items() if ids == prompt)
        features = self.requests[req_id][1]
        n = len(prompt)
        hidden = torch.cat(self.hidden[req_id])[:n]
        out = torch.cat(self.draft_out[req_id])[:n]
        # The target's input embeddings at its image tokens: the encoder output's first
        # hidden-size channels (test_qwen3_image_inputs_are_the_target_input_embeddings), one
        # tensor per run of image tokens (a Qwen3-VL video has text between its frame groups).
        width = hidden.shape[1]
        rows = [self.encoder[f.identifier][:, :width] for f in features]
        runs = [e - s for s, e in image_spans(torch.tensor(prompt), {image_token})]
        images = list(torch.cat(rows).split(runs)) if rows else []
        inp = DraftInput(torch.tensor(prompt + [first_token]), hidden, images, {image_token})
        return inp, out

    def split_images(self) -> int:
        """How many images had a prefill chunk start strictly inside them."""
        return sum(
            any(
                f.mm_position.offset < b < f.mm_position.offset + f.mm_position.length
                for b in self.chunk_starts[req_id]
            )
            for req_id, (_, features) in self.requests.items()
            for f in features
        )


def _reference(target: pathlib.Path, draft: pathlib.Path) -> ViSpecDraft:
    official = not is_plugin_config(json.loads((draft / "config.json").read_text()))
    cfg, tensors = load_official(draft) if official else load_draft(draft)
    with safetensors.safe_open(target / "model.safetensors", "pt") as f:
        lm_head = f.get_tensor(next(k for k in f.keys() if k.endswith("lm_head.weight")))
    model = ViSpecDraft(cfg, lm_head_weight=lm_head)
    model.load_state_dict(tensors)
    return model.eval()


def _image_token(target: pathlib.Path) -> int:
    cfg = json.loads((target / "config.json").read_text())
    return cfg.get("image_token_id", cfg.get("image_token_index"))


@pytest.mark.parametrize(
    "name,chunk,attention",
    # LLaVA's chunk must hold both of its images in vLLM's encoder cache (sized by the chunk):
    # with EAGLE's one-token lookahead, vLLM 0.32's scheduler otherwise stalls, draft or not.
    [
        ("qwen", None, "mark"),
        ("qwen", 40, "mark"),
        ("llava", None, "mark"),
        ("llava", 160, "mark"),
        ("llava15", None, "mark"),
        ("llava15", 40, "mark"),
        ("qwen3", None, "mark"),
        ("qwen3", 40, "mark"),
        ("qwen3-nemo", 40, "mark"),
        ("qwen-eaglevlm", None, "mark"),
        ("qwen-eaglevlm", 40, "mark"),
        ("llava-eaglevlm", 160, "mark"),
        ("qwen-eaglevlm", 40, "torch"),
        ("qwen-specvlm", 40, "mark"),
        ("qwen-specvlm", 40, "torch"),
        ("llava-specvlm", 160, "mark"),
        ("qwen", 40, "torch"),
        ("llava", 160, "torch"),
        ("qwen", 40, "triton"),
        ("llava", 160, "triton"),
    ],
    ids=lambda v: {None: "whole", 40: "chunked", 160: "chunked"}.get(v, v),
)
def test_first_pass_matches_reference(
    name: str, chunk: int | None, attention: str, request
) -> None:
    """``attention``: how unseen slots are left out (``vispec.draft_attention``). The
    ``triton`` cases run the kernel interpreted, in a subprocess (test_interpreted.py).
    ``qwen3-nemo``: a NeMo Automodel export (norms, explicit head_dim) given to vLLM as is;
    ``-eaglevlm``: EagleVLM drafts (every image position seen, with its image embedding);
    ``-specvlm``: SpecVLM drafts (the gate picks a compressor per image)."""
    if attention == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (run by test_interpreted.py)")
    target, draft = models(name, request)
    # No prefix caching: every prompt position must pass through the draft once.
    overrides = {"enable_prefix_caching": False}
    if chunk is not None:
        overrides.update(max_num_batched_tokens=chunk, max_num_seqs=1)
    overrides["download_dir"] = str(draft.parent / "cache")  # where a NeMo export is converted
    with engine(target, draft, vispec={"draft_attention": attention}, **overrides) as llm:
        recorder = FirstPassRecorder(llm)
        assert recorder.drafter.draft.model.layers[0].self_attn.mode == attention
        outputs = llm.chat(
            CONVERSATIONS, SamplingParams(temperature=0, max_tokens=2), use_tqdm=False
        )
    if chunk is not None:
        assert recorder.split_images() > 0, "no image was split across prefill chunks"
    reference = _reference(target, draft)
    image_token = _image_token(target)
    assert recorder.draft_out, "the ViSpec proposer never ran"
    for output in outputs:
        inp, vllm_out = recorder.request_inputs(
            list(output.prompt_token_ids), output.outputs[0].token_ids[0], image_token
        )
        with torch.no_grad():
            ref = reference([inp])[0]
        visible = ref.visible
        assert visible.sum() > 0
        diff = (vllm_out[visible] - ref.hidden_states[visible]).abs().max().item()
        assert diff < ATOL, f"{len(inp.image_embeds)} images: hidden states differ by {diff:.3g}"
        logits = vllm_out[visible] @ reference.lm_head_weight.T
        ldiff = (logits - ref.logits[visible]).abs().max().item()
        assert ldiff < ATOL, f"{len(inp.image_embeds)} images: logits differ by {ldiff:.3g}"


@pytest.mark.parametrize("name", ["qwen", "qwen3"])
def test_first_pass_matches_reference_on_a_video(name: str, request) -> None:
    """A video is one span of video tokens, compressed like an image (the reference draft is
    told the video token is its image token)."""
    from test_lossless import _video

    target = request.getfixturevalue(f"{name}_target")
    draft = request.getfixturevalue(f"{name}_draft")
    media = "<|vision_start|><|video_pad|><|vision_end|>"
    prompt = f"<|im_start|>user\n{media}Describe the video.<|im_end|>\n<|im_start|>assistant\n"
    limits = {"limit_mm_per_prompt": {"image": 1, "video": 1}, "enable_prefix_caching": False}
    with engine(target, draft, **limits) as llm:
        recorder = FirstPassRecorder(llm)
        (output,) = llm.generate(
            [{"prompt": prompt, "multi_modal_data": {"video": _video(1)}}],
            SamplingParams(temperature=0, max_tokens=2),
            use_tqdm=False,
        )
    video_token = json.loads((target / "config.json").read_text())["video_token_id"]
    inp, vllm_out = recorder.request_inputs(
        list(output.prompt_token_ids), output.outputs[0].token_ids[0], video_token
    )
    assert sum(x.shape[0] for x in inp.image_embeds) >= 32  # 4 frames of 112x112 pixels
    with torch.no_grad():
        ref = _reference(target, draft)([inp])[0]
    diff = (vllm_out[ref.visible] - ref.hidden_states[ref.visible]).abs().max().item()
    assert diff < ATOL, f"hidden states differ by {diff:.3g}"


def test_qwen3_image_inputs_are_the_target_input_embeddings(qwen3_target, qwen3_draft) -> None:
    """Qwen3-VL's encoder output also carries DeepStack features (added inside the target's
    first layers); the draft takes what the target puts into its input embeddings, which HF
    transformers' Qwen3-VL says independently."""
    from vllm_vispec.tools.testing.tiny_targets import make_test_image
    from vllm_vispec.tools.train.teacher import Teacher

    conversation = chat([(5, (224, 224))])
    with engine(qwen3_target, qwen3_draft, enable_prefix_caching=False) as llm:
        recorder = FirstPassRecorder(llm)
        llm.chat([conversation], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
    ((prompt, features),) = recorder.requests.values()
    (encoded,) = (recorder.encoder[f.identifier] for f in features)
    teacher = Teacher(qwen3_target, torch.device("cpu"), torch.float32)
    messages = [{"role": "user", "content": [{"type": "image"}, conversation[0]["content"][1]]}]
    text = teacher.processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = teacher.processor(text=[text], images=[make_test_image(5, (224, 224))],
                              return_tensors="pt")  # fmt: skip
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    assert batch["input_ids"][0].tolist() == prompt
    embeds = teacher(batch).inputs_embeds[0][batch["input_ids"][0] == _image_token(qwen3_target)]
    hidden = embeds.shape[1]
    assert encoded.shape[1] > hidden, "no DeepStack channels: the test would not bite"
    torch.testing.assert_close(encoded[:, :hidden], embeds, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("compressor", ["prune", "pool", "conv", "resampler", "text"])
def test_each_compressor_matches_reference(compressor: str, qwen_target, specvlm_drafts) -> None:
    """A SpecVLM draft with one primitive, images split across prefill chunks."""
    draft = specvlm_drafts(compressor)
    overrides = {"enable_prefix_caching": False, "max_num_batched_tokens": 40, "max_num_seqs": 1}
    with engine(qwen_target, draft, **overrides) as llm:
        recorder = FirstPassRecorder(llm)
        outputs = llm.chat(
            CONVERSATIONS, SamplingParams(temperature=0, max_tokens=2), use_tqdm=False
        )
        choices = dict(recorder.drafter.vision.choices)
    assert recorder.split_images() > 0
    reference = _reference(qwen_target, draft)
    for output in outputs:
        inp, vllm_out = recorder.request_inputs(
            list(output.prompt_token_ids), output.outputs[0].token_ids[0], _image_token(qwen_target)
        )
        with torch.no_grad():
            ref = reference([inp])[0]
        hidden = (~ref.visible).sum().item()
        if inp.image_embeds and compressor != "text":
            assert 0 < hidden < sum(x.shape[0] for x in inp.image_embeds), hidden
        diff = (vllm_out[ref.visible] - ref.hidden_states[ref.visible]).abs().max().item()
        assert diff < ATOL, f"{len(inp.image_embeds)} images: hidden states differ by {diff:.3g}"
    assert set(choices) == {compressor}, choices
