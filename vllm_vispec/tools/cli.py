"""``vllm-vispec``: one command with a subcommand per job (convert, train, bench, demo)."""

from __future__ import annotations

import argparse
import sys

from vllm_vispec import __version__

DESCRIPTION = """\
Vision-aware speculative decoding (ViSpec) for vision-language models in vLLM.

Serving needs no command of ours: pass an official ViSpec checkpoint (hub id or folder) or a
draft of ours to vLLM with
  --speculative-config '{"method": "eagle", "model": DRAFT, "num_speculative_tokens": 3}'
and the plugin's settings with --additional-config '{"vispec": {...}}'.
These subcommands prepare and measure drafts."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-vispec",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from vllm_vispec.checkpoint import convert
    from vllm_vispec.tools import demo
    from vllm_vispec.tools.bench import command as bench
    from vllm_vispec.tools.train import trainer

    convert.add_parser(sub)
    trainer.add_parser(sub)
    bench.add_parser(sub)
    demo.add_parser(sub)
    return parser


# Subcommand -> the extra that installs its dependencies (a serving install has none of them).
EXTRAS = {"train": "train", "bench": "bench", "demo": "bench"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:
        extra = EXTRAS.get(args.command)
        if extra is None or e.name is None or e.name.split(".")[0] in ("vllm", "vllm_vispec"):
            raise
        print(
            f"error: vllm-vispec {args.command} needs {e.name.split('.')[0]}, which a serving "
            f"install leaves out; run: pip install 'vllm-vispec[{extra}]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
