"""``musegen infill``: regenerate a bar range of MIDI files (a file or a folder), all tracks or
chosen ones, from the music on both sides; or add a track over the range.

Outputs, seeds, ``--num-samples``, ``manifest.jsonl`` and resume work as in ``musegen generate``
(the same code): each output is written atomically and recorded as one manifest line, and
re-running the same command skips what is recorded. A file that cannot be infilled (unreadable,
the bars outside it, a track it lacks…) gets a line with the reason, the run goes on, and the
exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from musegen.cli.generate import _Run, find_prompts, stem_of
from musegen.errors import MusegenError
from musegen.generation.settings import NAMES, GenerationSettings, add_arguments
from musegen.pipeline import DEFAULT_CANDIDATES, INFILL_FIXED_SETTINGS, SPAN_FIT, Pipeline

EPILOG = """\
examples:
  musegen infill song.mid --bars 5-8 --out out/                    # every track of bars 5-8
  musegen infill song.mid --bars 5-8 --tracks 1 --num-samples 3 --out out/   # track 1 only
  musegen infill song.mid --bars 9-12 --tracks drums --out out/    # redo the drums
  musegen infill song.mid --bars 1-8 --add-program 33 --out out/   # add a bass line
  musegen infill midi_folder/ --bars 3-4 --out out/

Bars are numbered from 1, both ends included. Tracks are numbered from 0 in the file's order;
the other tracks' notes in the bars are kept. Outputs are named <file>_bars<A>-<B>_s<seed>_<k>.mid;
manifest.jsonl holds one line per output (file, bars, tracks, seed, settings, checkpoint, token
counts, seconds) and one per file that could not be infilled, with the reason.
"""


def parse_range(text: str) -> tuple[int, int]:
    """``"5-8"`` → ``(5, 8)``; ``"5"`` → ``(5, 5)`` (checked against each piece later)."""
    first, _, last = text.partition("-")
    try:
        return int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants A-B (bar numbers), got {text!r}") from None


def parse_tracks(text: str) -> list[int | str]:
    """``"0,2"`` → ``[0, 2]``; ``"drums"`` → ``["drums"]``."""
    out: list[int | str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item == "drums":
            out.append(item)
        elif item.isdigit():
            out.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"wants track indices or 'drums', got {item!r}")
    return out


def parse_program(text: str) -> str:
    """``"33"`` → ``"program:33"``; ``"drums"`` stays."""
    if text == "drums":
        return text
    if not text.isdigit() or not 0 <= int(text) <= 127:
        raise argparse.ArgumentTypeError(f"wants a GM program 0-127 or 'drums', got {text!r}")
    return f"program:{int(text)}"


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import (
        HelpFormatter,
        add_candidates_argument,
        add_deploy_arguments,
        add_model_arguments,
    )

    p = subparsers.add_parser(
        "infill",
        help="regenerate bars in the middle of MIDI files, or add a track",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
        conflict_handler="resolve",  # our --bars (a range) replaces the settings' --bars (a count)
    )
    add_model_arguments(p)
    add_deploy_arguments(p)
    p.add_argument("input", type=Path, metavar="FILE_OR_FOLDER", help="a MIDI file or a folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_arguments(p)
    for action in p._actions:  # settings infilling fixes itself: not offered
        if action.dest in INFILL_FIXED_SETTINGS:
            action.help = argparse.SUPPRESS
    p.add_argument(
        "--bars", type=parse_range, required=True, metavar="A-B", help="the bars to regenerate"
    )
    p.add_argument(
        "--tracks",
        type=parse_tracks,
        default=None,
        metavar="I,I,…|drums",
        help="regenerate only these tracks (default: all)",
    )
    p.add_argument(
        "--add-program",
        type=parse_program,
        action="append",
        default=[],
        metavar="P",
        help="add a track of GM program P (or drums) over the bars; repeatable",
    )
    add_candidates_argument(p, DEFAULT_CANDIDATES, SPAN_FIT)
    p.add_argument("--continuation-only", action="store_true", help="write only the new bars")
    p.add_argument("--audio", action="store_true", help="also write a .wav of each output")
    p.add_argument("--pianoroll", action="store_true", help="also write a .png piano roll")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> GenerationSettings:
    """The validated settings of the flags (bars: the range's length), a seed drawn if < 0."""
    a, b = args.bars
    values = {name: getattr(args, name) for name in NAMES if name != "bars"}
    return GenerationSettings.from_values({**values, "bars": max(1, b - a + 1)}).with_seed()


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    tracks = None
    if args.tracks is not None or args.add_program:
        tracks = list(args.tracks or []) + list(args.add_program)
    pipeline = Pipeline.from_pretrained(
        args.checkpoint, device=args.device, adapter=args.adapter, precision=args.precision
    )
    args.out.mkdir(parents=True, exist_ok=True)
    a, b = args.bars
    request = {"bars": [a, b], "tracks": tracks, "candidates": args.candidates}
    job = _Run(args, pipeline, settings, request)
    try:  # what is wrong for every file is reported once, in the manifest too
        pipeline.check_infill((a, b), settings, args.candidates)
        files, root = find_prompts(args.input)
    except MusegenError as exc:
        job.fail(args.input, exc)
        raise
    stems = {f: f"{stem_of(f, root)}_bars{a}-{b}" for f in files}
    todo = [f for f in files if not set(job.names(stems[f])) <= job.done]
    bar = tqdm(total=len(todo), desc="files", unit="file", disable=not sys.stderr.isatty())
    for path in todo:
        try:
            results = pipeline.infill(path, (a, b), tracks, settings, candidates=args.candidates)
        except MusegenError as exc:
            job.fail(path, exc)
        else:
            job.write(path, stems[path], results)
        bar.update(1)
    bar.close()
    skipped = len(files) - len(todo)
    print(
        f"wrote {job.written} file(s) to {args.out}"
        + (f", skipped {skipped} file(s) already done" if skipped else "")
        + (f", {job.failed} file(s) failed (see {job.manifest})" if job.failed else "")
    )
    return 1 if job.failed else 0
