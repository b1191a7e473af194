"""``musegen corpus SOURCE ...``: write a MIDI corpus to train on, from music21's bundled scores
or from a local copy of a public dataset (Groove, POP909, Nottingham, full-band arrangements)."""

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
        help="write a MIDI corpus to train on (music21, Groove, POP909, Nottingham, full band)",
        description=(
            "Write a corpus of real MIDI files to train on: from the scores bundled with\n"
            "music21 (no download), or from a local copy of a public dataset. Dataset\n"
            "builders also write OUT_DIR/corpus.json (licence, attribution, per-file metadata,\n"
            "split and evaluation group), which `musegen prepare` carries into its manifest."
        ),
        epilog=DATASETS_EPILOG,
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
    for name, (summary, description) in DATASETS.items():
        _add_dataset_parser(sources, name, summary, description)
    _add_fullband_parser(sources)
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


DATASETS_EPILOG = """\
sources:
  music21     scores bundled with music21 (no download)
  groove      Groove MIDI drum performances       CC BY 4.0   magenta.tensorflow.org/datasets/groove
  pop909      POP909 pop songs for piano          MIT         github.com/music-x-lab/POP909-Dataset
  nottingham  Nottingham folk tunes               GPL-3.0     github.com/jukedeck/nottingham-dataset
  fullband    band arrangements from POP909 + Groove (drums, bass, varied instruments)

To train on several corpora, build each into a subfolder of one folder and prepare that:
  musegen corpus groove ~/datasets/groove data/mix/groove
  musegen corpus pop909 ~/datasets/POP909-Dataset data/mix/pop909
  musegen corpus fullband ~/datasets/POP909-Dataset ~/datasets/groove data/mix/fullband
  musegen prepare data/mix data/prepared
"""

DATASETS = {
    "groove": (
        "Groove MIDI drum performances, with style, tempo, meter and the dataset's own split",
        "Copy the Groove MIDI Dataset's performances into OUT_DIR as one drum track each (on\n"
        "the GM drum channel), keeping the dataset's paths. SRC_DIR is the folder holding\n"
        "info.csv and the drummerN/ folders (download: "
        "https://magenta.tensorflow.org/datasets/groove).\n"
        "corpus.json keeps drummer, style, bpm, beat/fill and meter per file, and Groove's own\n"
        "train/validation/test split; evaluation group 'drums'. Licence CC BY 4.0.",
    ),
    "pop909": (
        "POP909 pop songs (melody, bridge, piano) with beat, chord and key annotations",
        "Copy the POP909 songs into OUT_DIR as NNN.mid with tracks MELODY, BRIDGE and PIANO.\n"
        "SRC_DIR is the dataset folder holding POP909/NNN/ (download:\n"
        "https://github.com/music-x-lab/POP909-Dataset). corpus.json keeps each song's beats,\n"
        "4/4 downbeats, chords and key; the split is a hash of the song id (about 90/5/5, the\n"
        "same as the song's full-band arrangement); evaluation group 'pop_piano'. Licence MIT.",
    ),
    "nottingham": (
        "Nottingham folk tunes (melody + chords)",
        "Copy the cleaned Nottingham Music Database tunes into OUT_DIR, tracks named MELODY and\n"
        "CHORDS. SRC_DIR is the repository folder holding MIDI/ (download:\n"
        "https://github.com/jukedeck/nottingham-dataset). The split is a hash of the file name\n"
        "(about 90/5/5); evaluation group 'folk'. Licence GPL-3.0 (the tunes are traditional).",
    ),
}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the MIDI files into")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N files (sorted)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="build into a non-empty OUT_DIR, removing the files a previous build listed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_dataset_parser(sources, name: str, summary: str, description: str) -> None:
    from musegen.cli import HelpFormatter

    parser = sources.add_parser(
        name, help=summary, description=description, formatter_class=HelpFormatter
    )
    parser.add_argument("src_dir", metavar="SRC_DIR", help="your local copy of the dataset")
    _add_common(parser)
    parser.set_defaults(func=run_dataset)


def _add_fullband_parser(sources) -> None:
    from musegen.cli import HelpFormatter

    parser = sources.add_parser(
        "fullband",
        help="band arrangements built from POP909 songs and Groove drums",
        description=(
            "Arrange each POP909 song for a band, deterministically: a Groove 4/4 beat from\n"
            "Groove's train split (tempo close to the song's, chosen by the song id) warped\n"
            "onto the song's annotated beats and looped; a bass line on the chord roots\n"
            "(GM bass programs, MIDI 33-51, one of three rhythms); melody, bridge and piano on\n"
            "GM programs drawn from instrument families. Each piece keeps its song's split;\n"
            "evaluation group 'full_band'. corpus.json describes the method and, per piece,\n"
            "what was chosen. Licences: MIT (POP909) and CC BY 4.0 (Groove, attribution)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("pop909_dir", metavar="POP909_DIR", help="local copy of POP909")
    parser.add_argument("groove_dir", metavar="GROOVE_DIR", help="local copy of Groove MIDI")
    _add_common(parser)
    parser.set_defaults(func=run_fullband)


def _print_report(report) -> int:
    for line in report.lines():
        print(line)
    return 0 if report.written else 1


def run_dataset(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"musegen.data.{args.source}")
    report = module.build(
        args.src_dir, args.out_dir, args.limit, args.overwrite, progress=_progress(args)
    )
    return _print_report(report)


def run_fullband(args: argparse.Namespace) -> int:
    from musegen.data import fullband

    report = fullband.build(
        args.pop909_dir,
        args.groove_dir,
        args.out_dir,
        args.limit,
        args.overwrite,
        progress=_progress(args),
    )
    return _print_report(report)


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()
