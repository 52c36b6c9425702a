"""Training conversations: LLaVA-style or ShareGPT JSON in, tokenised examples with answer masks.

Both formats are a JSON list (or JSON lines) of records with ``conversations``, a list of
``{"from": "human"|"gpt"|"system", "value": ...}`` turns; LLaVA-style records add ``image`` (a
path or a list of paths, relative to ``--image-root``) and mark where each image goes with
``<image>`` in a human turn. Every conversation is rendered with the target's own chat template
and processor, so the draft trains on exactly the token sequences vLLM will serve.

A file that cannot be used raises :class:`DataError`; a bad record (missing or unreadable image,
empty conversation, too long, ...) is skipped and counted by reason in a :class:`SkipReport`,
which the trainer prints: nothing is dropped silently.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

IMAGE_MARK = "<image>"
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


class DataError(ValueError):
    """A data file that cannot be used at all; the message says what to do."""


class SampleError(ValueError):
    """One record that cannot be used; ``reason`` is its category in the skip report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass
class SkipReport:
    """How many records were kept, and why the others were skipped (with a first example)."""

    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)

    def skip(self, record_id: str, error: SampleError) -> None:
        self.skipped[error.reason] += 1
        self.examples.setdefault(error.reason, f"{record_id}: {error}")

    def __str__(self) -> str:
        total = self.kept + sum(self.skipped.values())
        if not self.skipped:
            return f"using all {total} records"
        reasons = "; ".join(
            f"{n} {reason} (e.g. {self.examples[reason]})"
            for reason, n in self.skipped.most_common()
        )
        return f"using {self.kept} of {total} records, skipped {reasons}"


@dataclasses.dataclass
class Example:
    """One rendered conversation: its text, images, token count and assistant-token ranges."""

    record_id: str
    text: str
    images: list[Image.Image]
    num_tokens: int
    answers: list[tuple[int, int]]


def load_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read every record of the given JSON / JSON-lines files, in order."""
    records: list[dict[str, Any]] = []
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read data file {path} ({e}); pass a JSON file") from e
        try:
            if path.suffix == ".jsonl":
                items = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or regenerate it"
            ) from e
        if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
            raise DataError(
                f"{path} must hold a list of records with 'conversations' (LLaVA or ShareGPT "
                f"format)"
            )
        for i, record in enumerate(items):
            record.setdefault("id", f"{path.name}:{i}")
        records.extend(items)
    if not records:
        raise DataError(f"no records in {', '.join(map(str, paths))}")
    return records


def record_images(record: dict[str, Any]) -> list[str]:
    image = record.get("image") or record.get("images") or []
    return [image] if isinstance(image, str) else list(image)


def to_messages(
    record: dict[str, Any], image_root: Path
) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """The record as chat-template messages with image parts, and its images (RGB)."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SampleError("empty conversation", "no 'conversations' turns")
    images = [_open_image(image_root / name) for name in record_images(record)]
    marks = sum(str(t.get("value", "")).count(IMAGE_MARK) for t in turns if isinstance(t, dict))
    if marks not in (0, len(images)):
        raise SampleError(
            "image count mismatch", f"{marks} {IMAGE_MARK} marks for {len(images)} images"
        )
    messages = []
    for turn in turns:
        role = ROLES.get(str(turn.get("from", "")).lower()) if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        if role is None or not isinstance(value, str):
            raise SampleError("malformed turn", f"turn {turn!r:.60} needs 'from' and 'value'")
        parts: list[dict[str, Any]] = []
        for i, piece in enumerate(value.split(IMAGE_MARK)):
            if i:
                parts.append({"type": "image"})
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        messages.append({"role": role, "content": parts})
    if marks == 0 and images:  # LLaVA data without marks: images open the first user turn
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise SampleError("empty conversation", "images but no human turn")
        first["content"][:0] = [{"type": "image"} for _ in images]
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers or not all(m["content"] for m in answers):
        raise SampleError("empty conversation", "no non-empty answer (gpt turn)")
    return messages, images


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise SampleError("missing image", str(path))
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError("unreadable image", f"{path} ({e})") from e


def encode(
    processor: Any,
    messages: list[dict[str, Any]],
    images: list[Image.Image],
    record_id: str,
    expansions: dict[tuple, int] | None = None,
) -> Example:
    """Render with the chat template and find the token ranges of the assistant turns.

    A turn's range runs from the end of the prompt before it (generation prompt included) to
    the end of the conversation up to and including it, i.e. the answer and its end-of-turn
    tokens, which is what the target generates and the draft must predict.

    Image placeholders expand inside the processor by a number of tokens that depends only on
    the image sizes, so ``expansions`` (sizes -> added tokens) spares the image processing of
    every record after the first of each size, and prefixes that show every image need only the
    tokenizer.
    """
    text = processor.apply_chat_template(messages, tokenize=False)
    expansions = {} if expansions is None else expansions
    sizes = tuple(im.size for im in images)
    plain = len(processor.tokenizer(text)["input_ids"])
    if sizes not in expansions:
        full = len(processor(text=[text], images=images or None)["input_ids"][0])
        expansions[sizes] = full - plain
    expansion = expansions[sizes]

    def count(upto: int, generation_prompt: bool) -> int:
        prefix = processor.apply_chat_template(
            messages[:upto], tokenize=False, add_generation_prompt=generation_prompt
        )
        shown = sum(p["type"] == "image" for m in messages[:upto] for p in m["content"])
        if shown == len(images):
            return len(processor.tokenizer(prefix)["input_ids"]) + expansion
        return len(processor(text=[prefix], images=images[:shown] or None)["input_ids"][0])

    answers = [
        (count(i, True), count(i + 1, False))
        for i, m in enumerate(messages)
        if m["role"] == "assistant"
    ]
    return Example(record_id, text, images, plain + expansion, answers)


def build_examples(
    records: Iterable[dict[str, Any]], processor: Any, image_root: Path, max_length: int
) -> tuple[list[Example], SkipReport]:
    """Encode every usable record; the others are counted in the report."""
    from tqdm import tqdm

    report = SkipReport()
    examples = []
    expansions: dict[tuple, int] = {}
    records = list(records)
    for record in tqdm(records, desc="tokenising", unit="rec", disable=len(records) < 64):
        record_id = str(record.get("id"))
        try:
            messages, images = to_messages(record, image_root)
            example = encode(processor, messages, images, record_id, expansions)
            if example.num_tokens > max_length:
                raise SampleError(
                    "too long", f"{example.num_tokens} tokens > --max-length {max_length}"
                )
        except SampleError as e:
            report.skip(record_id, e)
            continue
        examples.append(example)
        report.kept += 1
    return examples, report


def batch_indices(num_examples: int, step: int, batch_size: int, seed: int) -> list[int]:
    """The examples of training step ``step``: consecutive batches of a seeded shuffle that is
    drawn anew each epoch, so a run resumed at any step sees exactly the same batches."""
    per_epoch = math.ceil(num_examples / batch_size)
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed + epoch))
    return order[index * batch_size : (index + 1) * batch_size].tolist()


def collate(processor: Any, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Model inputs of a right-padded batch plus ``loss_mask`` [B, L] (answer tokens)."""
    images = [im for ex in examples for im in ex.images]
    processor.tokenizer.padding_side = "right"
    batch = dict(
        processor(
            text=[ex.text for ex in examples],
            images=images or None,
            padding=True,
            return_tensors="pt",
        )
    )
    lengths = batch["attention_mask"].sum(1).tolist()
    expected = [ex.num_tokens for ex in examples]
    if lengths != expected:
        raise RuntimeError(f"batched tokenisation gave {lengths} tokens, one by one {expected}")
    mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for b, ex in enumerate(examples):
        for start, end in ex.answers:
            mask[b, start:end] = True
    batch["loss_mask"] = mask
    return batch


def regenerate_answers(
    records: list[dict[str, Any]],
    answer: Callable[[list[tuple[list[dict[str, Any]], list[Image.Image]]]], list[str]],
    image_root: Path,
    suffix: str,
    cache_file: Path,
    cache_key: str,
    chunk: int = 256,
) -> list[dict[str, Any]]:
    """Replace each record's first answer by the target's own, asked with ``suffix`` appended.

    This is ViSpec's curation: the target's (long) answers are what the draft must predict at
    serving time. ``answer`` answers a list of (messages, images) prompts at once (vLLM's
    ``LLM.chat``, :func:`vllm_answers`), ``chunk`` prompts per call. Answers are cached in
    ``cache_file`` (JSON lines) under a key of the target, the settings and the record, so an
    interrupted or repeated run regenerates nothing twice. Records that cannot be rendered are
    passed through unchanged, to be counted when encoded.
    """
    from tqdm import tqdm

    cache: dict[str, str] = {}
    if cache_file.is_file():
        for line in cache_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                cache[entry["key"]] = entry["answer"]
    keys: list[str | None] = []
    todo: dict[str, tuple[list[dict[str, Any]], list[Image.Image]]] = {}
    for record in records:
        try:
            messages, images = to_messages(record, image_root)
        except SampleError:
            keys.append(None)
            continue
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        prompt = messages[: first_user + 1]
        prompt[-1] = {
            "role": "user",
            "content": [*prompt[-1]["content"], {"type": "text", "text": suffix}],
        }
        key_data = json.dumps([cache_key, suffix, record["conversations"], record_images(record)])
        key = hashlib.sha256(key_data.encode()).hexdigest()
        keys.append(key)
        if key not in cache:
            todo[key] = (prompt, images)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    pending = list(todo)
    with (
        cache_file.open("a", encoding="utf-8") as sink,
        tqdm(total=len(pending), desc="regenerating answers", unit="rec") as bar,
    ):
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            for key, text in zip(part, answer([todo[k] for k in part]), strict=True):
                cache[key] = text
                sink.write(json.dumps({"key": key, "answer": text}) + "\n")
            sink.flush()
            bar.update(len(part))
    out = []
    for record, key in zip(records, keys, strict=True):
        if key is None:
            out.append(record)
            continue
        turns = record["conversations"]
        human = next(t for t in turns if ROLES.get(str(t.get("from")).lower()) == "user")
        value = f"{human['value']} {suffix}"
        new_turns = [{"from": "human", "value": value}, {"from": "gpt", "value": cache[key]}]
        out.append({**record, "conversations": new_turns})
    return out


def vllm_chat(messages: list[dict[str, Any]], images: list[Image.Image]) -> list[dict[str, Any]]:
    """Chat-template messages with image parts as vLLM's ``LLM.chat`` takes them."""
    pictures = iter(images)
    return [
        {
            **m,
            "content": [
                {"type": "image_pil", "image_pil": next(pictures)} if p["type"] == "image" else p
                for p in m["content"]
            ],
        }
        for m in messages
    ]
