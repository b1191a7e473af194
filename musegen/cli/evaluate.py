"""``musegen evaluate``: likelihood and musical statistics of a checkpoint on held-out music."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musegen.cli import HelpFormatter, add_model_arguments
from musegen.generation.settings import DEFAULT_TOP_P

EPILOG = """\
examples:
  musegen evaluate --checkpoint runs/small/best --data data/prepared --split test
  musegen evaluate --data my_midi_folder/ --num-prompts 50 --json eval.json

--data is a prepared dataset (from 'musegen prepare', tokenized with the same tokenizer) or a
plain folder of MIDI files (tokenized here with the checkpoint's own tokenizer). The
memorization check needs a prepared dataset: it compares samples with its train split. A
prepared dataset whose manifest gives its files a group (corpus.json) also gets the NLL of
each group's documents alone ("nll_by_group" in the JSON).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="measure a checkpoint: NLL/perplexity and musical statistics of continuations",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="prepared dataset directory or folder of MIDI files",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="split of a prepared dataset to evaluate on",
    )
    p.add_argument(
        "--max-windows",
        type=int,
        default=256,
        help="windows used for NLL, for the split and for each group (0 = all)",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="window length for NLL (default: the model's max_seq_len)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--num-prompts",
        type=int,
        default=20,
        help="held-out prompts to continue (0 = skip the continuation metrics)",
    )
    p.add_argument("--prompt-bars", type=int, default=4, help="bars of each prompt (k)")
    p.add_argument("--continuation-bars", type=int, default=4, help="bars generated (m)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--top-p", type=float, default=DEFAULT_TOP_P, help="(default: the app's, %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json", type=Path, default=None, help="also write the report here (default: print only)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from musegen.errors import MusegenError
    from musegen.evaluate import EvalSettings, evaluate, format_report

    for name in ("batch_size", "prompt_bars", "continuation_bars"):
        if getattr(args, name) <= 0:
            raise MusegenError(f"--{name.replace('_', '-')} must be positive")
    if args.num_prompts < 0 or args.max_windows < 0:
        raise MusegenError("--num-prompts and --max-windows must be ≥ 0")
    settings = EvalSettings(
        split=args.split,
        max_windows=args.max_windows or None,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_prompts=args.num_prompts,
        prompt_bars=args.prompt_bars,
        continuation_bars=args.continuation_bars,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        device=args.device,
    )
    report = evaluate(args.checkpoint, args.data, settings)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.json)
        print(f"wrote {args.json}")
    return 0
