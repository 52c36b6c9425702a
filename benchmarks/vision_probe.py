"""Does a strip-world target's vision tower encode each cell's count and shape?

    python benchmarks/vision_probe.py --world grounded --target models/grounded/target
    python benchmarks/vision_probe.py --world content --target DIR   # a content-world run

A target that finds a cell (by position in the grounded world, by colour in the content world)
reads a weighted mean of the cell's image tokens, so the facts it can answer are those a linear
read of that mean gives. The script feeds ``--strips`` fresh strips of the world through the
target's vision tower (HF transformers), averages each cell's 4 x 8 merged image tokens, fits a
linear probe per fact (count, shape) on three quarters of the cells and prints its accuracy on
the rest (chance: count 1/3, shape 1/6).
"""

from __future__ import annotations

import argparse
import pathlib
import random

PROBE_SEED = 7


def cell_means(target: pathlib.Path, world: str, strips: int) -> tuple:
    """(mean image token per cell, count - 1, shape index) over ``strips`` fresh strips."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vllm_vispec.tools.toy import world_module
    from vllm_vispec.tools.toy.grounded_world import CELL_WIDTH, HEIGHT, SHAPES

    w = world_module(world)
    processor = AutoProcessor.from_pretrained(target)
    model = AutoModelForImageTextToText.from_pretrained(target, dtype=torch.float32).eval()
    rows, cols = HEIGHT // 28, CELL_WIDTH // 28
    rng = random.Random(f"vision-probe:{PROBE_SEED}")
    means, counts, shapes = [], [], []
    with torch.no_grad():
        for _ in range(strips):
            scene = w.random_scene(rng)
            inputs = processor.image_processor(images=[w.render(scene)], return_tensors="pt")
            out = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            tokens = out.pooler_output[0] if hasattr(out, "pooler_output") else out[0]
            grid = tokens.reshape(rows, cols * len(scene.cells), -1)
            for i, cell in enumerate(scene.cells):
                means.append(grid[:, i * cols : (i + 1) * cols].mean((0, 1)))
                counts.append(cell.count - 1)
                shapes.append(SHAPES.index(cell.shape))
    return torch.stack(means), torch.tensor(counts), torch.tensor(shapes)


def probe(x, y, classes: int, steps: int = 500) -> float:
    """Held-out accuracy of a linear classifier trained on the first three quarters."""
    import torch

    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    n = 3 * len(x) // 4
    torch.manual_seed(PROBE_SEED)
    linear = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(x[:n]), y[:n]).backward()
        optimizer.step()
    with torch.no_grad():
        return (linear(x[n:]).argmax(-1) == y[n:]).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", choices=("grounded", "content"), required=True)
    parser.add_argument("--target", type=pathlib.Path, required=True, help="an HF target folder")
    parser.add_argument("--strips", type=int, default=120, help="strips to probe (default 120)")
    args = parser.parse_args(argv)
    if not (args.target / "config.json").exists():
        parser.error(f"--target {args.target}: no config.json there")
    import torch

    torch.set_num_threads(1)
    x, counts, shapes = cell_means(args.target, args.world, args.strips)
    print(f"{args.world} world, {args.target}: {len(x)} cells; held-out linear probe accuracy "
          f"count {probe(x, counts, 3):.2f} (chance 0.33), shape {probe(x, shapes, 6):.2f} "
          "(chance 0.17)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
