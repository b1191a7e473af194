"""``musegen corpus music21 OUT_DIR``: write an offline MIDI corpus to train on."""

from __future__ import annotations

import argparse
import sys

from musegen.errors import MusegenError

EPILOG = """\
examples:
  musegen corpus music21 data/music21_midi
  musegen corpus music21 data/chorales --collections bach --limit 50

The pieces come from the corpus bundled with music21 (install it with
`pip install musegen[corpus]`). A summary of what was written and skipped is saved as
OUT_DIR/music21_corpus.json. Then: musegen prepare OUT_DIR data/prepared
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import HelpFormatter

    parser = subparsers.add_parser(
        "corpus",
        help="write an offline MIDI corpus (from the music21 wheel) to train on",
        description="Write a corpus of real MIDI files that needs no download.",
        formatter_class=HelpFormatter,
    )
    sources = parser.add_subparsers(dest="source", metavar="SOURCE")
    m21 = sources.add_parser(
        "music21",
        help="the corpus bundled with music21: Bach, Palestrina, quartets, folk tunes",
        description=(
            "Convert the corpus shipped inside the music21 package (Bach chorales, Palestrina,\n"
            "Monteverdi, Beethoven/Mozart/Haydn quartets, Essen and Irish/Scottish folk-tune\n"
            "collections, ...) to MIDI files, one per piece, with deterministic names\n"
            "(OUT_DIR/<collection>/<path>.mid). Pieces that fail to convert are skipped and\n"
            "listed at the end."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    m21.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the MIDI files into")
    m21.add_argument(
        "--collections",
        metavar="NAMES",
        help="comma-separated collections to convert (default: all but demos and "
        "theoryExercises); `--collections list` prints the available ones",
    )
    m21.add_argument("--limit", type=int, metavar="N", help="at most N pieces per collection")
    m21.add_argument("--workers", type=int, metavar="N", help="processes (default: all cores)")
    m21.set_defaults(func=run_music21)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_music21(args: argparse.Namespace) -> int:
    from musegen.data.music21 import available_collections, build_corpus

    if args.collections == "list":
        print("\n".join(available_collections()))
        return 0
    collections = None
    if args.collections:
        collections = [c.strip() for c in args.collections.split(",") if c.strip()]
        if not collections:
            raise MusegenError("--collections is empty: name at least one collection")
    report = build_corpus(
        args.out_dir, collections, args.limit, args.workers, progress=sys.stderr.isatty()
    )
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    print(
        f"wrote {len(report.written)} MIDI files with {report.notes} notes to {args.out_dir} "
        f"({len(report.skipped)} skipped)"
    )
    return 0 if report.written else 1
