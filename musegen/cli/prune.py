"""``musegen prune CHECKPOINT OUT --sparsity S``: a sparser or smaller model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import HelpFormatter

    p = subparsers.add_parser(
        "prune",
        help="prune a checkpoint (magnitude, or whole heads / MLP channels) and recover",
        description=(
            "Without --structured, zero the fraction S of smallest-magnitude weights of every\n"
            "projection (same size). With --structured heads or mlp, remove that share of the\n"
            "attention heads or MLP channels in every layer: a smaller, faster model. With\n"
            "--data and --recover-steps, fine-tune briefly afterwards (pruned weights stay 0)."
        ),
        epilog=(
            "examples:\n"
            "  musegen prune checkpoints/musegen-mix ckpt/pruned-mlp --sparsity 0.5 "
            "--structured mlp --data data/prepared --recover-steps 200\n"
            "  musegen prune checkpoints/musegen-mix ckpt/sparse --sparsity 0.3"
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="fp32 checkpoint")
    p.add_argument("out", type=Path, metavar="OUT", help="checkpoint directory to write")
    p.add_argument("--sparsity", type=float, required=True, metavar="S", help="share in [0, 1)")
    p.add_argument("--structured", choices=("heads", "mlp"), default=None)
    p.add_argument("--data", type=Path, default=None, metavar="PREPARED", help="for recovery")
    p.add_argument("--recover-steps", type=int, default=0, metavar="N")
    p.add_argument("--lr", type=float, default=1e-4, help="recovery learning rate")
    p.add_argument("--batch-size", type=int, default=8, help="recovery batch size")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it holds anything")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from musegen.training.prune import prune_checkpoint

    result = prune_checkpoint(
        args.checkpoint,
        args.out,
        args.sparsity,
        args.structured,
        args.data,
        args.recover_steps,
        args.overwrite,
        args.lr,
        args.batch_size,
        progress=True,
    )
    print(result.summary())
    return 0
