"""``musegen export --int8 CHECKPOINT OUT``: a smaller checkpoint for CPU inference."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import HelpFormatter

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint for deployment (int8 weights for CPU inference)",
        description=(
            "Write CHECKPOINT with every large tensor as int8 with one fp32 scale per row\n"
            "(config.json says so). Every command loads it like any checkpoint and runs its\n"
            "projections with int8 kernels on CPU (see docs/deploy.md)."
        ),
        epilog="example:\n  musegen export --int8 checkpoints/musegen-mix checkpoints/int8",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="fp32 checkpoint")
    p.add_argument("out", type=Path, metavar="OUT", help="checkpoint directory to write")
    p.add_argument("--int8", action="store_true", required=True, help="int8 weights (required)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it holds anything")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from musegen.training.deploy import export_int8, file_megabytes

    out = export_int8(args.checkpoint, args.out, args.overwrite)
    before, after = file_megabytes(args.checkpoint), file_megabytes(out)
    print(f"wrote {out}: {after:.2f} MB of weights ({100 * after / before:.0f}% of {before:.2f})")
    return 0
