"""How much of a pasted pattern does a continuation repeat, by repeat-guidance strength?

The prompt is made here: 8 bars of one pasted bar of drums (hi-hat 8ths, kick and snare), an
8th-note bass riff and a guitar chord in a dotted rhythm alternating between two chords, at 110
bpm. Each strength continues it for 4 bars, SAMPLES samples (seeds SEED…), the other settings
at their defaults. Printed per strength: the share of the new notes that are notes of the
pattern (the same drum or pitch, in the same place in the bar, of the same kind of track) and
how many notes the new bars hold against the pattern's.

    python benchmarks/bench_repeat.py [--checkpoint CKPT] [--strengths 0 1 2] \
        [--samples 4] [--seed 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import symusic

from musegen.pipeline import Pipeline, default_checkpoint

TPQ, BAR, BARS, NEW_BARS = 480, 1920, 8, 4
BASS = (40, 40, 47, 40, 43, 40, 45, 47)  # one 8th note each
CHORDS = ((52, 56, 59), (57, 61, 64))  # alternate bars
CHORD_EIGHTHS = (0, 3, 6)


def pasted_prompt() -> symusic.Score:
    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, 110.0))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    drums = symusic.Track(name="Drums", program=0, is_drum=True)
    bass = symusic.Track(name="Bass", program=33)
    guitar = symusic.Track(name="Guitar", program=29)
    for bar in range(BARS):
        for eighth, pitch in enumerate(BASS):
            at = bar * BAR + eighth * TPQ // 2
            drums.notes.append(symusic.Note(at, 60, 42, 80))
            if eighth in (0, 3, 5):
                drums.notes.append(symusic.Note(at, 60, 36, 110))
            if eighth in (2, 6):
                drums.notes.append(symusic.Note(at, 60, 38, 110))
            bass.notes.append(symusic.Note(at, 200, pitch, 90))
        for eighth in CHORD_EIGHTHS:
            for pitch in CHORDS[bar % 2]:
                guitar.notes.append(symusic.Note(bar * BAR + eighth * TPQ // 2, 200, pitch, 70))
    score.tracks.extend([drums, bass, guitar])
    return score


def _notes(score: symusic.Score) -> list[tuple[bool, int, int]]:
    return [(t.is_drum, n.time % BAR, n.pitch) for t in score.tracks for n in t.notes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(default_checkpoint()))
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(args.checkpoint)
    prompt = pasted_prompt()
    pattern = set(_notes(prompt))
    per_bar = prompt.note_num() / BARS
    rows = []
    for strength in args.strengths:
        results = pipe.continue_midi(
            prompt, args.samples, bars=NEW_BARS, seed=args.seed, repeat_guidance=strength
        )
        notes = [note for r in results for note in _notes(r.continuation)]
        repeated = sum(note in pattern for note in notes) / max(1, len(notes))
        density = len(notes) / (args.samples * NEW_BARS * per_bar)
        rows.append({"strength": strength, "repeated": repeated, "density": density})
        print(f"strength {strength:g}: {repeated:.0%} of the new notes repeat the pattern; "
              f"{density:.2f} × its notes per bar")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
