"""Rendering speed: seconds of audio per CPU second for each available backend.

    python benchmarks/bench_render.py                 # 32 bars, 4 tracks (64 s of audio)
    python benchmarks/bench_render.py --bars 100 --soundfont ~/sf/GeneralUser.sf2

The piece is a 4-track General MIDI arrangement (piano, bass, strings, drums) at 120 bpm.
Each backend renders it once to warm up (loading a SoundFont is reported separately, since the
app keeps the engine loaded), then ``--repeat`` times; the best run counts. CPU time is
``time.process_time`` (all threads of this process), so a busy machine does not inflate it.
The target is ≥ 20× real time for the default backend (the first in the list).

Then the piano roll, the other picture-or-sound work of every app request: CPU seconds per
1200×480 PNG (median of ``--repeat``+3 runs) for a 3-bar excerpt (what a light request draws)
and for the whole piece, beside the renderer at git revision ``--roll-reference`` (default: the
last matplotlib one) loaded from this checkout's history, measured in the same run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import symusic

from musegen.render import pianoroll
from musegen.render.audio import available_backends, render_audio

ROLL_REFERENCE = "b840ff7"  # the last matplotlib piano roll

TARGET = 20.0


def four_track_piece(bars: int, tpq: int = 480, seed: int = 0) -> symusic.Score:
    """Piano chords + melody, a walking bass, sustained strings and a rock beat, in 4/4."""
    rng = random.Random(seed)
    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, 120.0))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    piano, bass = symusic.Track(program=0), symusic.Track(program=33)
    strings, drums = symusic.Track(program=48), symusic.Track(program=0, is_drum=True)
    roots = [48, 53, 55, 45]  # C F G Am
    bar = 4 * tpq
    for b in range(bars):
        root = roots[b % 4]
        t0 = b * bar
        for beat in range(4):
            for p in (root + 12, root + 16, root + 19):
                piano.notes.append(symusic.Note(t0 + beat * tpq, tpq, p, 70))
            melody = root + 24 + rng.choice([0, 2, 4, 7, 9, 12])
            piano.notes.append(symusic.Note(t0 + beat * tpq + tpq // 2, tpq // 2, melody, 90))
            bass.notes.append(
                symusic.Note(t0 + beat * tpq, tpq, root - 12 + (0, 7, 12, 7)[beat], 95)
            )
        strings.notes.append(symusic.Note(t0, bar, root + 12, 60))
        strings.notes.append(symusic.Note(t0, bar, root + 19, 60))
        for eighth in range(8):
            at = t0 + eighth * tpq // 2
            drums.notes.append(symusic.Note(at, tpq // 4, 42, 80))
            if eighth in (0, 4):
                drums.notes.append(symusic.Note(at, tpq // 4, 36, 110))
            if eighth in (2, 6):
                drums.notes.append(symusic.Note(at, tpq // 4, 38, 100))
    score.tracks.extend([piano, bass, strings, drums])
    return score


def measure(score: symusic.Score, backend: str, soundfont: str | None, repeat: int):
    soundfont = None if backend == "synth" else soundfont
    t = time.process_time()
    first = render_audio(score, soundfont=soundfont, backend=backend)
    first_cpu = time.process_time() - t
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        render_audio(score, soundfont=soundfont, backend=backend)
        best = min(best, time.process_time() - t)
    return first, first_cpu, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--soundfont", default=None)
    parser.add_argument(
        "--roll-reference",
        default=ROLL_REFERENCE,
        metavar="REV",
        help="git revision whose piano roll is the reference (default: %(default)s)",
    )
    args = parser.parse_args()
    score = four_track_piece(args.bars)
    notes = sum(len(t.notes) for t in score.tracks)
    print(f"piece: {args.bars} bars, 4 tracks, {notes} notes, {args.bars * 2} s at 120 bpm")
    print(f"{'backend':<13} {'renderer':<34} {'first call':>11} {'warm':>8} {'× real time':>12}")
    backends = available_backends()
    for i, backend in enumerate(backends):
        out, first_cpu, warm = measure(score, backend, args.soundfont, args.repeat)
        speed = out.duration / warm
        flag = ""
        if i == 0:
            flag = (
                "  default, "
                + ("meets" if speed >= TARGET else "BELOW")
                + f" the {TARGET:.0f}× target"
            )
        print(
            f"{backend:<13} {out.renderer:<34} {first_cpu:>9.2f} s {warm:>6.2f} s {speed:>11.1f}×{flag}"
        )
    rolls(score, args.bars, args.repeat + 3, args.roll_reference)


def reference_module(revision: str) -> types.ModuleType | None:
    """``musegen/render/pianoroll.py`` as it was at ``revision`` (None outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(
            ["git", "show", f"{revision}:musegen/render/pianoroll.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType(f"pianoroll_{revision}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"pianoroll@{revision}", "exec"), module.__dict__)
    return module


def rolls(score: symusic.Score, bars: int, repeat: int, revision: str) -> None:
    """CPU seconds per roll now and at ``revision``, for a preview and for the whole piece."""
    cases = [
        ("3-bar preview", score.clip(0, score.tpq * 4 * 3, clip_end=True), score.tpq * 4),
        (f"{bars}-bar piece, 4 tracks", score, score.tpq * 4 * bars // 2),
    ]
    reference = reference_module(revision)
    print(f"\npiano roll, 1200×480 PNG: CPU s per picture (median of {repeat})")
    for name, piece, split in cases:
        now = cpu_per_roll(pianoroll, piece, split, repeat)
        row = f"  {name:<24} now {now:.3f} s"
        if reference is not None:
            then = cpu_per_roll(reference, piece, split, repeat)
            row += f" · at {revision} {then:.3f} s · {then / now:.1f}× less"
        print(row)
    if reference is None:
        print(f"  (revision {revision} is not in this checkout's history: no reference)")


def cpu_per_roll(module, score: symusic.Score, split: int, repeat: int) -> float:
    module.render_pianoroll(score, split_tick=split, title="warm-up")
    times = []
    for _ in range(repeat):
        t = time.process_time()
        module.render_pianoroll(score, split_tick=split, title="Variation 1 · bars 2–3")
        times.append(time.process_time() - t)
    return statistics.median(times)


if __name__ == "__main__":
    main()
