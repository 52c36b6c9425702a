"""``vllm-vispec train``: distil a ViSpec (or plain EAGLE-1) draft from a frozen target, online.

Each step runs the frozen target on a batch of conversations (teacher hidden states, logits and
image embeddings, never dumped to disk), then the draft of :mod:`vllm_vispec.tools.reference` on the
target's hidden states, and optimises a recipe of :mod:`vllm_vispec.tools.train.losses` on the
answer
positions. ``--mtp-steps`` re-runs the draft on its own shifted outputs (ViSpec's remedy against
copying the target's features). Checkpoints are draft folders vLLM loads as they are, plus a
``trainer_state/`` that ``--resume`` continues from. Multi-GPU and bf16 go through accelerate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vllm_vispec.config import COMPRESSORS
from vllm_vispec.layout import image_spans
from vllm_vispec.tools.reference import DraftInput, ViSpecDraft
from vllm_vispec.tools.train.losses import RECIPES, LossWeights, row_losses

LOG_FILE = "train_log.jsonl"
DRAFTS = ("vispec", "eaglevlm", "specvlm", "eagle")

DESCRIPTION = """\
Train a draft for a target VLM with online distillation (no offline dumps).

DATA files are LLaVA-style JSON (records with "image" and "conversations", images relative to
--image-root, "<image>" marking where each goes) or ShareGPT JSON (text-only conversations).
Every step runs the frozen TARGET (a local HF folder: Qwen2.5-VL, Qwen3-VL, LLaVA-1.6 or
LLaVA-1.5) for its hidden states and logits, then the draft; the loss is taken on the assistant
answers.

Recipes (loss weights, each overridable):
  specvlm        0.1 * soft cross-entropy to the target + 1.0 * SmoothL1 on features
  vispec-stage1  SmoothL1 + 0.1 * (cross-entropy + 0.1 * top-k ranking); text-only data
  vispec-stage2  10 * mean |p_draft - p_target| + 0.1 * top-k ranking; init from stage 1

Checkpoints OUT/step-NNNNNNN/ and OUT/final/ are draft folders for vLLM:
  --speculative-config '{"method": "eagle", "model": "OUT/final", "num_speculative_tokens": 3}'
Drafts (--draft): vispec (the adaptor and a global image feature), eaglevlm (SpecVLM's
baseline: every image position with its image embedding, an input norm), specvlm (eaglevlm
with the elastic compressor; after --gate-warmup its gate trains by Gumbel-softmax, a
score-function term and --compute-weight times the expected share of image tokens kept),
eagle (the text-only EAGLE-1 baseline, saved in vLLM's own format)."""

EPILOG = """\
examples:
  vllm-vispec train --target Qwen2.5-VL-7B-Instruct --data llava_data.json \\
      --image-root images/ --out vispec-qwen7b --epochs 2 --recipe specvlm
  accelerate launch -m vllm_vispec.tools.cli train ...   (several GPUs)"""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs (the CLI fills it; the toy world builds it directly)."""

    target: Path
    data: list[Path]
    out: Path
    image_root: Path = Path(".")
    draft: str = "vispec"
    num_q: int = 2
    compressor: str = "gate"
    compression: int = 3
    compute_weight: float = 0.05
    gate_warmup: float = 0.5
    init: Path | None = None
    recipe: str = "specvlm"
    weights: LossWeights = dataclasses.field(default_factory=lambda: RECIPES["specvlm"])
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4
    lr: float = 3e-5
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    clip_value: float = 0.5
    noise: float = 0.2
    mtp_steps: int = 1
    max_length: int = 4096
    save_every: int | None = None
    resume: bool = False
    seed: int = 0
    dtype: str = "auto"
    regenerate: bool = False
    regen_suffix: str = "Please answer with at least 1000 words."
    regen_max_tokens: int = 1024
    quiet: bool = False


class Distiller(nn.Module):
    """The draft plus the distillation step, as one module so accelerate can wrap it (DDP)."""

    def __init__(self, draft: ViSpecDraft, eagle: bool, cfg: TrainConfig, image_token_ids: tuple):
        super().__init__()
        self.draft = draft
        self.eagle = eagle
        self.cfg = cfg
        self.image_token_ids = image_token_ids

    def forward(
        self, teacher: Any, out: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        inputs, positions, targets, wanted = self._inputs(out, batch, self.cfg.noise)
        total, parts, rows, gate = 0.0, {}, None, 0.0
        for step in range(1 + self.cfg.mtp_steps):
            gated = step == 0 and self.draft.compressor is not None and self.draft.training
            self.draft.gate_log = [] if gated else None
            outputs = self._outputs(inputs, positions)
            if rows is None:  # visibility depends on the tokens only: the same on every pass
                rows = [w & visible for w, (_, visible) in zip(wanted, outputs, strict=True)]
                teacher_h = torch.cat([t[r] for t, r in zip(targets, rows, strict=True)])
                if teacher_h.shape[0] == 0:
                    raise ValueError("a batch without answer tokens reached the draft")
                teacher_logits = teacher.logits(teacher_h).float()
            draft_h = torch.cat([h[r] for (h, _), r in zip(outputs, rows, strict=True)])
            draft_logits = self.draft.logits(draft_h)
            per_row, terms = row_losses(
                draft_logits, draft_h, teacher_logits, teacher_h, self.cfg.weights
            )
            loss = per_row.mean()
            total = total + loss
            if step == 0:
                agree = draft_logits.argmax(-1) == teacher_logits.argmax(-1)
                means = {name: float(value.mean().detach()) for name, value in terms.items()}
                parts = {**means, "top1": float(agree.float().mean())}
            if gated and self.draft.gate_log:
                gate, parts["kept"] = self._gate_loss(inputs, rows, per_row.detach())
            inputs = [self._shifted(inp, o) for inp, o in zip(inputs, outputs, strict=True)]
        self.draft.gate_log = None
        return total / (1 + self.cfg.mtp_steps) + gate, parts

    def _gate_loss(
        self, inputs: list[DraftInput], rows: list[torch.Tensor], per_row: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """SpecVLM's gate terms: the compute weight times the expected share of image rows
        kept, and a score-function term that makes the draws whose request's loss was below
        the batch's mean likelier (the straight-through weight alone never learns that
        dropping an image, which leaves no token to scale, costs acceptance)."""
        shares, log_probs = (torch.stack(t) for t in zip(*self.draft.gate_log, strict=True))
        mean = per_row.mean()
        parts = per_row.split([int(r.sum()) for r in rows])
        losses = [part.mean() if len(part) else mean for part in parts]
        per_image = torch.stack(
            [loss for inp, loss in zip(inputs, losses, strict=True) for _ in inp.image_embeds]
        )
        advantage = per_image - per_image.mean()
        kept = shares.mean()
        return self.cfg.compute_weight * kept + (advantage * log_probs).mean(), kept.item()

    @torch.no_grad()
    def first_step(
        self, teacher: Any, out: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """At every answer position the draft sees: the token the target predicts there and
        whether the draft's first step predicts the same, i.e. whether greedy verification
        would accept a first draft token at that point of the answer."""
        inputs, positions, targets, wanted = self._inputs(out, batch, 0.0)
        predicted, agree = [], []
        for (hidden, visible), target, w in zip(
            self._outputs(inputs, positions), targets, wanted, strict=True
        ):
            rows = w & visible
            target_ids = teacher.logits(target[rows]).argmax(-1)
            predicted.append(target_ids)
            agree.append(self.draft.logits(hidden[rows]).argmax(-1) == target_ids)
        return torch.cat(predicted), torch.cat(agree)

    def _inputs(
        self, out: Any, batch: dict[str, torch.Tensor], noise: float
    ) -> tuple[list[DraftInput], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per request: the draft's input, RoPE positions, feature targets, trained positions."""
        ids, loss_mask = batch["input_ids"], batch["loss_mask"]
        inputs, positions, wanted, targets = [], [], [], []
        for b, length in enumerate(out.lengths):
            hidden = out.hidden[b, : length - 1]
            if noise:
                hidden = hidden + (torch.rand_like(hidden) - 0.5) * noise
            spans = image_spans(ids[b, :length], self.image_token_ids)
            inputs.append(
                DraftInput(
                    ids[b, :length],
                    hidden,
                    [out.inputs_embeds[b, s:e] for s, e in spans],
                    () if self.eagle else self.image_token_ids,
                )
            )
            positions.append(out.rope_positions[b, : length - 1])
            # Draft position t stands in for target position t + 1 (its hidden state is the
            # feature target), which predicts token t + 2: train where that is an answer token.
            targets.append(out.hidden[b, 1:length])
            wanted.append(torch.cat((loss_mask[b, 2:length], loss_mask.new_zeros(1))))
        return inputs, positions, targets, wanted

    def _outputs(
        self, inputs: list[DraftInput], positions: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not self.eagle:
            return self.draft.outputs(inputs)
        # vLLM's EAGLE: every position visible, image placeholders embedded as tokens, no
        # image feature (img_fc stays the identity), RoPE at the target's (temporal) positions.
        rows = [
            self.draft.text_inputs(
                inp.token_ids[1:], inp.hidden_states, torch.zeros_like(inp.hidden_states)
            )
            for inp in inputs
        ]
        x = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        out = self.draft.decode(x, nn.utils.rnn.pad_sequence(positions, batch_first=True))
        return [
            (out[b, : len(r)], torch.ones(len(r), dtype=torch.bool, device=out.device))
            for b, r in enumerate(rows)
        ]

    @staticmethod
    def _shifted(inp: DraftInput, output: tuple[torch.Tensor, torch.Tensor]) -> DraftInput:
        """The next pass's input: at t, the draft's own output at t - 1 where there is one."""
        hidden, visible = output
        prev = torch.cat((inp.hidden_states[:1], hidden[:-1]))
        keep = torch.cat((visible.new_zeros(1), visible[:-1]))
        mixed = torch.where(keep[:, None], prev, inp.hidden_states)
        return dataclasses.replace(inp, hidden_states=mixed)


def train(cfg: TrainConfig) -> Path:
    """Run a training; returns the final draft folder."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    from vllm_vispec.tools.train.data import build_examples, collate, load_records
    from vllm_vispec.tools.train.teacher import Teacher

    _check_out(cfg)
    records = load_records(cfg.data)
    cfg.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and cuda)
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not cuda)
    set_seed(cfg.seed)
    if cfg.regenerate:  # before the HF teacher loads: vLLM's engine is gone by then
        records = _regenerate(cfg, records, accelerator, bf16)
    teacher = Teacher(cfg.target, accelerator.device, torch.bfloat16 if bf16 else torch.float32)
    examples, report = build_examples(records, teacher.processor, cfg.image_root, cfg.max_length)
    _log(accelerator, cfg, f"data: {report}")
    if not examples:
        raise ValueError(f"no usable training records ({report})")

    draft_cfg, draft = _build_draft(cfg, teacher)
    model = Distiller(draft, cfg.draft == "eagle", cfg, teacher.image_token_ids)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.max_steps or max(1, round(cfg.epochs * per_epoch))
    scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total), total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    step = _resume(accelerator, cfg) if cfg.resume else 0

    bar = tqdm(
        total=total,
        initial=step,
        desc=f"training {cfg.draft} draft",
        unit="step",
        disable=cfg.quiet or not accelerator.is_main_process,
    )
    model.train()
    draft.gate_warmup = step < cfg.gate_warmup * total
    started = time.perf_counter()
    log = (cfg.out / LOG_FILE).open("a") if accelerator.is_main_process else None
    while step < total:
        examples_b = _batch(examples, step, cfg, accelerator)
        batch = collate(teacher.processor, examples_b)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss, metrics = model(teacher, teacher(batch), batch)
        accelerator.backward(loss)
        accelerator.clip_grad_value_(params, cfg.clip_value)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        draft.gate_warmup = step < cfg.gate_warmup * total
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}", top1=f"{metrics['top1']:.3f}")
        if log is not None:
            log.write(json.dumps({"step": step, "loss": loss.item(), **metrics}) + "\n")
            log.flush()
        if cfg.save_every and step % cfg.save_every == 0 and step < total:
            _save(accelerator, model, draft_cfg, cfg, cfg.out / f"step-{step:07d}", step)
    bar.close()
    if log is not None:
        log.close()
    final = _save(accelerator, model, draft_cfg, cfg, cfg.out / "final", step)
    _log(accelerator, cfg, f"trained {step} steps in {time.perf_counter() - started:.0f} s")
    return final


@torch.no_grad()
def first_step_agreement(
    target: Path, draft: Path, kind: str, data: list[Path], image_root: Path, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained draft on held-out conversations, teacher-forced: at every answer position the
    token the target predicts and whether the draft's first step predicts the same (whether
    greedy verification accepts a first draft token there). ``kind``: as ``--draft``."""
    from vllm_vispec.checkpoint import check_draft
    from vllm_vispec.tools.train.data import build_examples, collate, load_records
    from vllm_vispec.tools.train.teacher import Teacher

    teacher = Teacher(target, torch.device("cpu"), torch.float32)
    examples, report = build_examples(
        load_records(data), teacher.processor, image_root, TrainConfig.max_length
    )
    if not examples:
        raise ValueError(f"no usable records in {data} ({report})")
    settings = {}
    if kind != "eagle":
        d = check_draft(draft)
        settings = {"num_q": d.num_q, "compressor": d.compressor, "compression": d.compression}
    cfg = TrainConfig(target=target, data=data, out=draft, draft=kind, init=draft, **settings)
    _, model = _build_draft(cfg, teacher)
    distiller = Distiller(model.eval(), kind == "eagle", cfg, teacher.image_token_ids)
    predicted, agree = [], []
    for start in range(0, len(examples), batch_size):
        batch = collate(teacher.processor, examples[start : start + batch_size])
        p, a = distiller.first_step(teacher, teacher(batch), batch)
        predicted.append(p)
        agree.append(a)
    return torch.cat(predicted), torch.cat(agree)


def _check_out(cfg: TrainConfig) -> None:
    from vllm_vispec.checkpoint import CheckpointError

    if cfg.draft not in DRAFTS:
        raise CheckpointError(f"--draft must be one of {', '.join(DRAFTS)}, got {cfg.draft!r}")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise CheckpointError(f"--out {cfg.out} is a file; choose a folder")
    previous = sorted(cfg.out.glob("step-*")) + sorted(cfg.out.glob("final"))
    if previous and not cfg.resume:
        raise CheckpointError(
            f"--out {cfg.out} already holds checkpoints ({previous[-1].name}); pass --resume to "
            f"continue that run or choose another --out"
        )


def _regenerate(
    cfg: TrainConfig, records: list[dict[str, Any]], accelerator: Any, bf16: bool
) -> list[dict[str, Any]]:
    """``--regenerate``: the target's own answers, generated by vLLM on the main process, read
    from the cache by the others."""
    from vllm_vispec.tools.train.data import regenerate_answers
    from vllm_vispec.tools.train.teacher import vllm_answers

    args = (
        cfg.image_root,
        cfg.regen_suffix,
        cfg.out / "regenerated.jsonl",
        _fingerprint(cfg.target, cfg.regen_max_tokens),
    )
    if accelerator.is_main_process:
        with vllm_answers(cfg.target, cfg.regen_max_tokens, bf16) as answer:
            records = regenerate_answers(records, answer, *args)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        records = regenerate_answers(records, _cached_only, *args)
    return records


def _cached_only(prompts: list[Any]) -> list[str]:
    raise RuntimeError(f"{len(prompts)} regenerated answers missing from the main process' cache")


def _fingerprint(target: Path, max_tokens: int) -> str:
    """What regenerated answers depend on besides the record: the target and the length cap."""
    config = (target / "config.json").read_text()
    weights = sorted(p.stat().st_size for p in target.glob("*.safetensors"))
    return json.dumps([config, weights, max_tokens])


def _build_draft(cfg: TrainConfig, teacher: Any) -> tuple[Any, ViSpecDraft]:
    """A draft sized for the target: the target's embeddings (frozen), its lm_head, ``--init``."""
    from vllm_vispec.checkpoint import draft_config_for_target, find_weights, read_tensors

    eagle = cfg.draft == "eagle"
    kind = {"eagle": {}, "vispec": {}}.get(cfg.draft, {"kind": cfg.draft, "input_norm": True})
    if cfg.draft == "specvlm":
        kind.update(compressor=cfg.compressor, compression=cfg.compression)
    draft_cfg = draft_config_for_target(cfg.target, num_q=cfg.num_q, fc_bias=not eagle, **kind)
    draft = ViSpecDraft(draft_cfg, teacher.lm_head_weight.detach())
    with torch.no_grad():
        draft.embed_tokens.weight.copy_(teacher.embed_weight)
    if cfg.init is not None:
        tensors = read_tensors(find_weights(cfg.init))
        own = draft.state_dict()
        usable = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
        if not any(k.startswith("layers.") for k in usable):
            raise ValueError(f"--init {cfg.init} has no decoder layer of this draft's shape")
        draft.load_state_dict(usable, strict=False)
        fresh = sorted(set(own) - set(usable))
        _logger().info(
            "initialised %d tensors from %s; fresh: %s", len(usable), cfg.init, fresh or "none"
        )
    if eagle:
        for module in (draft.img_fc, draft.imadpt):
            module.requires_grad_(False)
    resampler = draft.compressor and draft.compressor.resampler
    for adaptor in (getattr(draft, "imadpt", None), resampler):
        if adaptor is not None and adaptor.k_proj.bias is not None:
            # It adds the same score to every image row, which the softmax cancels: its gradient
            # is rounding noise that Adam would blow up to learning-rate-sized steps.
            adaptor.k_proj.bias.requires_grad_(False)
    return draft_cfg, draft.to(teacher.device)


def _batch(examples: list[Any], step: int, cfg: TrainConfig, accelerator: Any) -> list[Any]:
    """This process's share of step ``step``'s batch."""
    from vllm_vispec.tools.train.data import batch_indices

    chosen = batch_indices(len(examples), step, cfg.batch_size, cfg.seed)
    share = chosen[accelerator.process_index :: accelerator.num_processes] or chosen[:1]
    return [examples[i] for i in share]


def _save(
    accelerator: Any, model: Any, draft_cfg: Any, cfg: TrainConfig, dst: Path, step: int
) -> Path:
    """Write a vLLM-loadable draft folder, then the trainer state that makes it resumable."""
    from vllm_vispec.checkpoint import VISION_PREFIXES, save_draft, save_eagle_draft

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = accelerator.unwrap_model(model).draft.state_dict()
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
        if cfg.draft == "eagle":
            tensors = {k: v for k, v in tensors.items() if not k.startswith(VISION_PREFIXES)}
            save_eagle_draft(dst, draft_cfg, tensors, overwrite=True)
        else:
            provenance = {"converted_from": f"vllm-vispec train ({cfg.recipe}, step {step})"}
            save_draft(dst, draft_cfg, tensors, provenance, overwrite=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(dst / "trainer_state"))
    if accelerator.is_main_process:
        (dst / "trainer_state" / "progress.json").write_text(json.dumps({"step": step}) + "\n")
    return dst


def _resume(accelerator: Any, cfg: TrainConfig) -> int:
    """Load the newest complete checkpoint under ``--out``; 0 when there is none."""
    done = [
        p
        for p in [*cfg.out.glob("step-*"), cfg.out / "final"]
        if (p / "trainer_state" / "progress.json").is_file()
    ]
    if not done:
        _log(accelerator, cfg, f"--resume: no checkpoint under {cfg.out}, starting afresh")
        return 0
    steps = {
        p: json.loads((p / "trainer_state" / "progress.json").read_text())["step"] for p in done
    }
    latest = max(steps, key=steps.get)
    accelerator.load_state(str(latest / "trainer_state"))
    step = steps[latest]
    _log(accelerator, cfg, f"resuming from {latest} (step {step})")
    return step


def _log(accelerator: Any, cfg: TrainConfig, message: str) -> None:
    if accelerator.is_main_process and not cfg.quiet:
        _logger().info(message)


def _logger() -> logging.Logger:
    """vLLM's logger where vLLM is installed; training itself needs no vLLM (it also runs on
    GPU machines that have torch and transformers alone, benchmarks/gpu_check.py)."""
    try:
        from vllm.logger import init_logger
    except ImportError:
        return logging.getLogger(f"vllm.{__name__}")
    return init_logger(f"vllm.{__name__}")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a ViSpec draft (or an EAGLE-1 baseline) against a target VLM",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", type=Path, required=True, help="local HF folder of the target")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="JSON / JSONL data files")
    p.add_argument(
        "--image-root", type=Path, default=Path("."), help="folder image paths are relative to"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for checkpoints and final/")
    p.add_argument(
        "--draft",
        choices=DRAFTS,
        default="vispec",
        help="vispec (default), eaglevlm, specvlm, or the text-only EAGLE-1 baseline (eagle)",
    )
    p.add_argument("--num-q", type=int, default=2, help="adaptor queries per image (default 2)")
    p.add_argument(
        "--compressor",
        choices=(*COMPRESSORS, "gate"),
        default="gate",
        help="specvlm: one primitive for every image, or the gate choosing per image (default)",
    )
    p.add_argument(
        "--compression", type=int, default=3, help="specvlm: rows per token of prune/pool/conv"
    )
    p.add_argument(
        "--gate-warmup",
        type=float,
        default=0.5,
        help="specvlm: share of the steps that draw primitives uniformly before the gate trains "
        "(default 0.5: without it the gate settles on dropping images before the others learn)",
    )
    p.add_argument(
        "--compute-weight",
        type=float,
        default=0.05,
        help="specvlm: weight of the gate's expected share of image tokens kept (default 0.05)",
    )
    p.add_argument(
        "--init",
        type=Path,
        help="draft folder to start from (e.g. a stage-1 run's final/); matching tensors only",
    )
    p.add_argument(
        "--recipe", choices=sorted(RECIPES), default="specvlm", help="loss recipe (default specvlm)"
    )
    for name in ("ce", "feature", "l1", "rank"):
        p.add_argument(f"--w-{name}", type=float, help=f"override the recipe's {name} weight")
    p.add_argument("--rank-k", type=int, default=10, help="top-k of the ranking loss (default 10)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default 1)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    p.add_argument(
        "--batch-size", type=int, default=4, help="conversations per step, all GPUs together"
    )
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (default 3e-5)")
    p.add_argument(
        "--warmup-ratio",
        type=float,
        default=0.05,
        help="warm-up share of the steps, then linear decay",
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip-value", type=float, default=0.5, help="gradient clipping by value")
    p.add_argument(
        "--noise",
        type=float,
        default=0.2,
        help="width of the uniform noise on target hidden states",
    )
    p.add_argument(
        "--mtp-steps",
        type=int,
        default=1,
        help="extra passes on the draft's own features (0 = off)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=4096,
        help="longer conversations are skipped (and counted)",
    )
    p.add_argument("--save-every", type=int, help="also checkpoint every N steps")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="auto: bf16 mixed precision on GPU, float32 on CPU",
    )
    p.add_argument(
        "--regenerate",
        action="store_true",
        help="replace answers by the target's own, asked with --regen-suffix (cached in OUT)",
    )
    p.add_argument("--regen-suffix", default="Please answer with at least 1000 words.")
    p.add_argument("--regen-max-tokens", type=int, default=1024)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = RECIPES[args.recipe]
    overrides = {n: getattr(args, f"w_{n}") for n in ("ce", "feature", "l1", "rank")}
    weights = dataclasses.replace(
        base, rank_k=args.rank_k, **{n: v for n, v in overrides.items() if v is not None}
    )
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"weights"}
    return TrainConfig(weights=weights, **{k: v for k, v in vars(args).items() if k in fields})


def run(args: argparse.Namespace) -> int:
    """Train; a user mistake prints ``error: ...`` on stderr and returns 2."""
    from vllm_vispec.checkpoint import CheckpointError
    from vllm_vispec.tools.train.data import DataError
    from vllm_vispec.tools.train.teacher import TeacherError

    try:
        final = train(config_from_args(args))
    except (CheckpointError, DataError, TeacherError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"draft written to {final}\nuse it with: --speculative-config "
        f'\'{{"method": "eagle", "model": "{final}", "num_speculative_tokens": 3}}\''
    )
    return 0
