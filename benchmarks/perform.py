"""Write a "performed" copy of each MIDI file: its notes played without a click, as a file
recorded from a keyboard would hold them, with the true beats beside it.

Each copy keeps the notes, but their times follow a player: a tempo of its own (``--bpm``
range), drifting smoothly by up to ``--drift`` either way over a few bars, and every onset a
little early or late (``--jitter`` seconds). It is written as a recorder writes it: 120 bpm,
4/4 from tick 0, 480 ticks per beat, so its bar lines and beats mean nothing. ``beats.json``
maps each copy to the ticks where the music's beats fell (the quarter notes of the source, from
its first bar line) and to its quarter notes per bar, so
``bench_bar_lines.py --performed`` can score the beats found, and ``musegen evaluate-groups
--find-bar-lines`` can measure continuations on them.

    python benchmarks/perform.py data/corpora/pop909 --split test --files 16 --out /tmp/performed
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import symusic

from musegen.eval_pieces import from_folder

TPQ = 480
RECORDER_BPM = 120.0


def tempo_curve(beats: int, rng: np.random.Generator, bpm: float, drift: float) -> np.ndarray:
    """Seconds at which each source beat falls: a smooth random tempo around ``bpm``."""
    steps = rng.normal(0, 1, beats + 1)
    smooth = np.convolve(steps, np.ones(8) / 8, mode="same")
    smooth = drift * smooth / max(float(np.abs(smooth).max()), 1e-9)
    periods = 60.0 / bpm * (1 + smooth)
    return np.concatenate([[0.0], np.cumsum(periods)])


def perform(source: symusic.Score, rng: np.random.Generator, args) -> tuple[symusic.Score, list]:
    """The performed copy and the ticks of its beats."""
    tpq = source.ticks_per_quarter
    beats = int(source.end() / tpq) + 2
    times = tempo_curve(beats, rng, rng.uniform(*args.bpm), args.drift)
    per_tick = RECORDER_BPM / 60 * TPQ  # recorder ticks per second

    def at(tick: float) -> float:
        k = np.clip(tick / tpq, 0, beats)
        return float(np.interp(k, np.arange(len(times)), times))

    out = symusic.Score(TPQ)
    out.tempos.append(symusic.Tempo(0, RECORDER_BPM))
    out.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for track in source.tracks:
        copy = symusic.Track(name=track.name, program=track.program, is_drum=track.is_drum)
        for n in track.notes:
            start = max(0.0, at(n.time) + rng.normal(0, args.jitter))
            end = max(start + 0.02, at(n.time + n.duration))
            velocity = int(np.clip(n.velocity + rng.normal(0, 6), 1, 127))
            copy.notes.append(
                symusic.Note(
                    round(start * per_tick), round((end - start) * per_tick), n.pitch, velocity
                )
            )
        out.tracks.append(copy)
    return out, [round(t * per_tick) for t in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a corpus folder with corpus.json, or MIDI files")
    parser.add_argument(
        "--split", default="test", help="files of this split, as evaluate-groups takes it"
    )
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bpm", type=float, nargs=2, default=(70.0, 130.0))
    parser.add_argument("--drift", type=float, default=0.08, help="largest tempo change (share)")
    parser.add_argument("--jitter", type=float, default=0.012, help="onset spread (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # The split as evaluate-groups takes it (every file of a folder without one), in path order.
    paths = sorted(from_folder(args.folder.name, args.folder, args.split).files)
    random.Random(args.seed).shuffle(paths)
    args.out.mkdir(parents=True, exist_ok=True)
    truth = {}
    rng = np.random.default_rng(args.seed)
    for path in paths:
        if len(truth) >= args.files:
            break
        score = symusic.Score(str(path))
        if len({round(t.qpm, 3) for t in score.tempos}) > 1:
            continue  # the source's own tempo map would make its beats uneven in seconds
        performed, beats = perform(score, rng, args)
        name = path.stem + ".mid"
        performed.dump_midi(str(args.out / name))
        sig = score.time_signatures[0] if len(score.time_signatures) else None
        quarters = sig.numerator * 4 / sig.denominator if sig is not None else 4.0
        truth[name] = {"beats": beats, "quarters_per_bar": quarters, "source": str(path)}
    (args.out / "beats.json").write_text(json.dumps(truth))
    print(f"wrote {len(truth)} performed files to {args.out}")


if __name__ == "__main__":
    main()
