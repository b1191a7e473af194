"""``musegen finetune --from CHECKPOINT --data PREPARED --out RUN``: adapt a trained model.

All weights, or with ``--lora-rank R`` low-rank adapters on the attention and MLP projections
(:mod:`musegen.training.lora`). The run directory is a normal training run: ``best/`` is a
checkpoint (for LoRA also an adapter directory), ``musegen train --out RUN --resume`` continues.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from musegen.errors import MusegenError

EPILOG = """\
examples:
  musegen prepare ~/my_midi data/mine --tokenizer-from checkpoints/musegen-mix
  musegen finetune --from checkpoints/musegen-mix --data data/mine --out runs/mine
  musegen finetune --from checkpoints/musegen-mix --data data/mine --out runs/mine-lora \\
      --lora-rank 8 --max-steps 300
  musegen generate --adapter runs/mine-lora/best --prompt song.mid --out out/
  musegen merge-adapter checkpoints/musegen-mix runs/mine-lora/best checkpoints/mine

Defaults for a short run on a small corpus: 500 steps, peak learning rate 1e-4 for all
weights and 1e-3 for LoRA, warm-up 4% of the run. Any training field can be set with
--set KEY=VALUE (see `musegen train --help`).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import HelpFormatter
    from musegen.cli.train import TRAIN_FLAGS, add_infill_memory_flag

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a trained checkpoint on your own corpus (all weights or LoRA)",
        description=__doc__.split("\n\n", 1)[1],
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--from", dest="base", required=True, metavar="CHECKPOINT", help="start here")
    p.add_argument("--data", required=True, metavar="PREPARED_DIR", help="`musegen prepare` output")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument(
        "--lora-rank", type=int, default=0, metavar="R", help="train rank-R adapters only"
    )
    p.add_argument(
        "--lora-alpha", type=float, default=None, metavar="A", help="LoRA scale (default: R)"
    )
    for flag, field, kind, text in TRAIN_FLAGS:
        if field != "init_from":
            p.add_argument(flag, dest=field, type=kind, default=None, help=text)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None)
    add_infill_memory_flag(p)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in RUN_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_configs(args: argparse.Namespace):
    from musegen.cli.train import TRAIN_FLAGS, parse_value, split_settings
    from musegen.training.finetune import finetune_configs

    settings = {}
    for _, field, _, _ in TRAIN_FLAGS:
        if field != "init_from" and getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    for field in ("device", "augment", "infill_memory"):
        if getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise MusegenError(f"--set {item!r} must look like KEY=VALUE, e.g. --set lr=3e-4")
        settings[key.strip()] = parse_value(value.strip())
    train, model = split_settings(settings)
    train.update(overwrite=args.overwrite, progress=not args.quiet)
    if not Path(args.data).is_dir():
        raise MusegenError(f"--data {args.data}: not a prepared corpus folder")
    return finetune_configs(
        args.base, args.data, args.out, args.lora_rank, args.lora_alpha, train, model
    )


def run(args: argparse.Namespace) -> int:
    from musegen.training.loop import train

    train_config, model_config = build_configs(args)
    result = train(train_config, model_config)
    print(f"musegen finetune: {result.summary()}")
    if train_config.lora_rank:
        print(f"musegen finetune: adapter in {result.best_dir} (adapter.safetensors)")
    return 0
