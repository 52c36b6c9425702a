"""``vllm-vispec``: one command with a subcommand per job (convert, train, bench, demo)."""

from __future__ import annotations

import argparse
import sys

from vllm_vispec import __version__

DESCRIPTION = """\
Vision-aware speculative decoding (ViSpec) for vision-language models in vLLM.

Serving needs no command of ours: pass a converted draft to vLLM with
  --speculative-config '{"method": "eagle", "model": DRAFT_DIR, "num_speculative_tokens": 3}'
These subcommands prepare and measure drafts."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-vispec",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from vllm_vispec import bench, convert, demo
    from vllm_vispec.train import trainer

    convert.add_parser(sub)
    trainer.add_parser(sub)
    bench.add_parser(sub)
    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
