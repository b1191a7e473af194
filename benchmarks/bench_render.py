"""Rendering speed: seconds of audio per CPU second for each available backend.

    python benchmarks/bench_render.py                 # 32 bars, 4 tracks (64 s of audio)
    python benchmarks/bench_render.py --bars 100 --soundfont ~/sf/GeneralUser.sf2

The piece is a 4-track General MIDI arrangement (piano, bass, strings, drums) at 120 bpm.
Each backend renders it once to warm up (loading a SoundFont is reported separately, since the
app keeps the engine loaded), then ``--repeat`` times; the best run counts. CPU time is
``time.process_time`` (all threads of this process), so a busy machine does not inflate it.
The target is ≥ 20× real time for the default backend (the first in the list).
"""

from __future__ import annotations

import argparse
import random
import time

import symusic

from musegen.render.audio import available_backends, render_audio
from musegen.render.pianoroll import render_pianoroll

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
    t = time.process_time()
    render_pianoroll(score, split_tick=score.tpq * 4 * args.bars // 2)
    print(f"piano roll (1200×480 PNG): {time.process_time() - t:.2f} CPU s")


if __name__ == "__main__":
    main()
