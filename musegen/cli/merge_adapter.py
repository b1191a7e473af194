"""``musegen merge-adapter BASE ADAPTER OUT``: a plain checkpoint with a LoRA adapter merged."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import HelpFormatter

    p = subparsers.add_parser(
        "merge-adapter",
        help="merge a LoRA adapter into its base checkpoint (a plain checkpoint)",
        description=(
            "Write BASE with ADAPTER's low-rank update added to its weights, as a checkpoint\n"
            "every command loads without --adapter. An adapter trained on another base is\n"
            "refused, naming what differs."
        ),
        epilog="example:\n  musegen merge-adapter checkpoints/musegen-mix runs/mine/best "
        "checkpoints/mine",
        formatter_class=HelpFormatter,
    )
    p.add_argument("base", type=Path, metavar="BASE", help="the checkpoint the adapter adapts")
    p.add_argument("adapter", type=Path, metavar="ADAPTER", help="adapter directory")
    p.add_argument("out", type=Path, metavar="OUT", help="checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it holds anything")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from musegen.training.deploy import merge_adapter_checkpoint

    out = merge_adapter_checkpoint(args.base, args.adapter, args.out, args.overwrite)
    print(f"wrote {out}")
    return 0
