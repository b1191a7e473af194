"""How a continuation of a performance played without a click compares with how the piece
really goes on, measured in the music's own time.

``musegen evaluate-groups`` cuts a performance on bars it has to take from somewhere (the
recorder's, or bars found from the notes) and compares the model's bars with the real ones cut
the same way, so two continuations that follow different bars are not compared on the same
music. Here each performance written by ``perform.py`` comes with its source piece and its
true beats, so:

1. the source's evaluation window is taken as ``evaluate-groups`` takes it (8 bars, then 4);
2. the performance is cut where the source's 8th bar ends and continued for 4 bars, as a user
   would upload it (with ``--no-find-bar-lines``, on the recorder's bars);
3. the new notes are put back on the source's ticks through the true beats (after the prompt,
   the player's last tempo, held), and scored against
   the source's real next 4 bars exactly as ``evaluate-groups`` scores a piece (the copy
   baseline: the source's last 4 prompt bars).

    python benchmarks/bench_performed.py data/performed/pop909 [--no-find-bar-lines] \\
        --json FILE.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import symusic

from musegen.eval_pieces import make_piece
from musegen.evaluate_groups import check_targets, score_piece, summarize
from musegen.pipeline import Pipeline

PROMPT_BARS, NEW_BARS = 8, 4


class TrueTime:
    """The map between a performance's ticks and its source's, through the true beats (beat k
    of the source, k quarter notes in, lies at ``beats[k]`` in the performance) up to the
    prompt's end, and after it at the pace of the prompt's last 4 beats: how the player would
    go on with no change of tempo. (No continuation can foresee the player's later rubato, so
    the true beats after the prompt would score every continuation down alike.)"""

    def __init__(self, beats: list[int], source_tpq: int, until: float) -> None:
        known = np.asarray(beats, dtype=float)
        known = known[: max(5, int(np.searchsorted(known, until, side="right")))]
        pace = float(np.median(np.diff(known[-5:])))
        later = known[-1] + pace * np.arange(1, 4 * 64 + 1)
        self.beats = np.concatenate([known, later])
        self.index = np.arange(len(self.beats)) * source_tpq

    def to_performance(self, source_tick: float) -> float:
        return float(np.interp(source_tick, self.index, self.beats))

    def to_source(self, ticks: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(ticks, dtype=float), self.beats, self.index)


def continue_one(pipe: Pipeline, performed: symusic.Score, item: dict, args) -> dict | None:
    source = Path(item["source"])
    piece = make_piece(source, PROMPT_BARS, NEW_BARS)
    if piece is None:
        return None
    tpq = piece.prompt.tpq
    full = TrueTime(item["beats"], tpq, float("inf"))
    begin = round(full.to_performance(piece.start))
    end = round(full.to_performance(piece.start + PROMPT_BARS * piece.bar))
    clock = TrueTime(item["beats"], tpq, end)
    prompt = performed.clip(begin, end, clip_end=False).shift_time(-begin)
    result = pipe.continue_midi(
        prompt, 1, bars=NEW_BARS, seed=args.seed, find_bar_lines=args.find_bar_lines
    )[0]
    new = symusic.Score(piece.prompt.tpq)
    offset = piece.start + PROMPT_BARS * piece.bar
    for track in result.score.tracks:
        copy = symusic.Track(name=track.name, program=track.program, is_drum=track.is_drum)
        notes = [n for n in track.notes if n.time >= result.prompt_end_tick]
        if not notes:
            continue
        starts = clock.to_source([n.time + begin for n in notes]) - offset
        ends = clock.to_source([n.time + n.duration + begin for n in notes]) - offset
        for n, s, e in zip(notes, starts, ends, strict=True):
            if 0 <= s < NEW_BARS * piece.bar:
                copy.notes.append(symusic.Note(round(s), max(1, round(e - s)), n.pitch, n.velocity))
        new.tracks.append(copy)
    row = score_piece(piece, new, NEW_BARS)
    row["piece"] = str(source)
    row["warnings"] = result.warnings
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders written by perform.py")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument(
        "--find-bar-lines", action=argparse.BooleanOptionalAction, default=True,
        help="the pipeline's find_bar_lines (default: on, as the app and the CLI run)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    pipe = Pipeline.from_pretrained(args.checkpoint)
    results = {}
    for folder in args.folders:
        truth = json.loads((folder / "beats.json").read_text())
        rows = []
        for name, item in sorted(truth.items()):
            row = continue_one(pipe, symusic.Score(str(folder / name)), item, args)
            if row is None:
                print(f"{name}: no evaluation window in its source", file=sys.stderr)
                continue
            rows.append(row)
        summary = summarize(rows)
        targets = check_targets(summary, speed=False)
        passed = sum(t["pass"] for t in targets.values())
        results[str(folder)] = {"summary": summary, "targets": targets, "pieces": rows}
        print(
            f"{folder}: {len(rows)} pieces; targets {passed}/{len(targets)}; "
            + "; ".join(
                f"{k} {v['value']:.2f}{'' if v['pass'] else ' ✗'}" for k, v in targets.items()
            )
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
