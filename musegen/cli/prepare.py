"""``musegen prepare SRC_DIR OUT_DIR``: tokenize a MIDI folder into training-ready arrays."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  musegen prepare data/music21_midi data/prepared
  musegen prepare ~/midi data/pop --tokenizer TSD --bpe-vocab 2000 --workers 4
  musegen prepare ~/midi data/quick --max-files 200 --min-notes 50

OUT_DIR gets manifest.json (every file's split, note and token counts, or why it was
skipped), tokenizer.json, and {train,val,test}.bin + .idx.npy (flat token ids and document
offsets, memory-mapped by `musegen train`). Files are split by content hash: a rerun gives the
same split and exact duplicates are kept once. Bad files never stop the run; they are listed
with a reason. The dataset is written under a temporary name and renamed when complete.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import HelpFormatter
    from musegen.data.prepare import PrepareOptions
    from musegen.tokenizer import TOKENIZER_KINDS

    defaults = PrepareOptions()
    parser = subparsers.add_parser(
        "prepare",
        help="tokenize a folder of MIDI files into a training dataset",
        description=(
            "Find every .mid/.midi file under SRC_DIR (recursively, any case), tokenize them\n"
            "in parallel with miditok, and write memory-mapped train/val/test token arrays,\n"
            "the tokenizer and a manifest into OUT_DIR."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "src_dir", metavar="SRC_DIR", help="folder of MIDI files (searched recursively)"
    )
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", help="folder to write the prepared dataset to"
    )
    parser.add_argument(
        "--tokenizer",
        choices=list(TOKENIZER_KINDS),
        default=defaults.tokenizer.kind,
        help="token scheme",
    )
    parser.add_argument(
        "--tokenizer-from",
        metavar="CHECKPOINT",
        default=None,
        help="encode with this checkpoint's tokenizer (to fine-tune that checkpoint)",
    )
    parser.add_argument(
        "--bpe-vocab",
        type=int,
        default=None,
        metavar="N",
        help="learn a BPE vocabulary of N ids on the train split and encode with it",
    )
    parser.add_argument(
        "--max-files",
        type=int,
        metavar="N",
        help="use only the first N files (sorted by path)",
    )
    parser.add_argument(
        "--min-notes",
        type=int,
        metavar="N",
        default=defaults.min_notes,
        help="skip files with fewer notes",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        default=defaults.val_fraction,
        help="share of files for validation",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        metavar="F",
        default=defaults.test_fraction,
        help="share of files for test",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="processes (default: all cores)")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=defaults.timeout_s,
        help="seconds allowed per file before it is skipped",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT_DIR even if it holds something else or was made with other settings",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from musegen.data.prepare import PrepareOptions, prepare, summary_lines
    from musegen.tokenizer import TokenizerSettings

    options = PrepareOptions(
        tokenizer=TokenizerSettings(kind=args.tokenizer),
        bpe_vocab=args.bpe_vocab,
        max_files=args.max_files,
        min_notes=args.min_notes,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        timeout_s=args.timeout,
        workers=args.workers,
        tokenizer_from=args.tokenizer_from,
    )
    manifest = prepare(
        args.src_dir,
        args.out_dir,
        options,
        overwrite=args.overwrite,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    print(f"prepared {args.out_dir} (vocabulary {manifest['vocab_size']}, {manifest['dtype']})")
    print("\n".join(summary_lines(manifest)))
    return 0
