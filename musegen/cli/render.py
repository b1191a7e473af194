"""``musegen render``: a MIDI file to audio (WAV/FLAC/OGG) and/or a piano-roll PNG."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from musegen.cli import HelpFormatter
from musegen.errors import MusegenError

DESCRIPTION = """\
Render a MIDI file to audio, a piano-roll picture, or both (give --out once per file).
The output kind follows the extension: .wav, .flac, .ogg (audio) or .png (piano roll).

Audio uses the best renderer available: your SoundFont (--soundfont or $MUSEGEN_SOUNDFONT),
else a system General MIDI SoundFont (Debian/Ubuntu: apt-get install fluid-soundfont-gm),
else the small TimGM6mb SoundFont inside pretty_midi; played by FluidSynth (pyfluidsynth +
libfluidsynth) or midirenderer. Without either engine a built-in synth is used.
"""

EPILOG = """\
examples:
  musegen render song.mid --out song.wav
  musegen render song.mid --out song.flac --out song.png --title "My song"
  musegen render song.mid --out song.ogg --soundfont ~/sf/GeneralUser.sf2
  musegen render continued.mid --out roll.png --split-bar 8   # prompt = first 8 bars
"""

AUDIO_EXTS = (".wav", ".flac", ".ogg")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render",
        help="render MIDI to audio (WAV/FLAC/OGG) or a piano-roll PNG",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("midi", type=Path, help="the MIDI file to render")
    p.add_argument(
        "--out",
        type=Path,
        action="append",
        required=True,
        metavar="FILE",
        help="output file: .wav, .flac, .ogg or .png; repeat for several",
    )
    p.add_argument(
        "--soundfont",
        type=Path,
        default=None,
        metavar="SF2",
        help="SoundFont (.sf2/.sf3) to play with; default: $MUSEGEN_SOUNDFONT, "
        "then a system GM SoundFont, then TimGM6mb",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "fluidsynth", "midirenderer", "synth"),
        help="audio engine; 'auto' takes the best one installed",
    )
    p.add_argument("--sample-rate", type=int, default=44100, help="audio sample rate in Hz")
    p.add_argument(
        "--split-bar",
        type=int,
        default=None,
        metavar="N",
        help="piano roll: draw the first N bars as the prompt (faded)",
    )
    p.add_argument("--title", default=None, help="piano roll: a title above the picture")
    p.add_argument("--width", type=int, default=1200, help="piano roll width in pixels")
    p.add_argument("--height", type=int, default=480, help="piano roll height in pixels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from musegen.render.audio import render_audio, write_audio
    from musegen.render.engines import read_soundfont
    from musegen.render.pianoroll import bar_grid, render_pianoroll
    from musegen.score_check import PIECE_LIMITS, load_checked

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for out in args.out:
        if out.suffix.lower() not in (*AUDIO_EXTS, ".png"):
            raise MusegenError(f"--out {out}: unknown extension; use .wav, .flac, .ogg or .png")
    notes: list[str] = []  # what was repaired in a damaged file
    score = load_checked(args.midi, PIECE_LIMITS, str(args.midi), notes=notes)
    for note in notes:
        print(f"musegen: warning: {args.midi}: {note}", file=sys.stderr)
    if args.soundfont is not None:  # checked up front, even when only a PNG is asked for
        read_soundfont(args.soundfont)
    if os.fspath(args.midi) in {os.fspath(o) for o in args.out}:
        raise MusegenError("--out would overwrite the input MIDI file")
    rendered = None
    for out in args.out:
        if out.suffix.lower() == ".png":
            split = None
            if args.split_bar is not None:
                grid = bar_grid(score, score.end())
                if not 0 <= args.split_bar < len(grid.bar_starts):
                    raise MusegenError(f"--split-bar {args.split_bar} is beyond the piece")
                split = int(grid.bar_starts[args.split_bar])
            render_pianoroll(
                score,
                out,
                split_tick=split,
                title=args.title,
                width_px=args.width,
                height_px=args.height,
            )
            print(f"wrote {out} (piano roll, {args.width}×{args.height} px)")
            continue
        if rendered is None:
            rendered = render_audio(
                score,
                soundfont=args.soundfont,
                sample_rate=args.sample_rate,
                backend=args.backend,
                progress=sys.stderr.isatty(),
            )
        write_audio(rendered, out)
        print(f"wrote {out} ({rendered.duration:.1f} s, {rendered.renderer})")
    return 0
