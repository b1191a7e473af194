"""How well ``musegen.bar_lines`` finds beats and bar lines, and how often it would touch a file
that needs nothing.

Two measurements, printed and written as JSON:

1. **POP909 as distributed** (``--pop909 DIR``, the dataset's own folder): each song's MIDI file
   against its annotations (``beat_midi.txt``), cut to its first 16 bars: whether the file is flagged; whether the beats
   found lie on the annotated beats (within a 32nd note); whether most annotated
   4/4 downbeats in those bars lie on the bar lines found. ``--split`` picks the songs (train to design on, test to report).
2. **Clean corpora** (``--clean DIR`` …, folders of MIDI files whose bar lines are right: the
   prepared corpora, the eval-only band files): the share of files it would re-bar (each one a
   false alarm) and, with the beats taken as the file's, how often the downbeats found are the
   file's bar lines.
3. **Performances** (``--performed DIR`` …, folders written by ``perform.py``: held-out pieces
   played without a click): the share flagged, and the share recognised as played without a
   click and left on its own bars (``examine``: the user is told), which in 2. is a false alarm
   unless the file was in fact played in.

    python benchmarks/bench_bar_lines.py --pop909 ../shared/corpora/pop909 --split test \\
        --clean data/corpora/nottingham data/m21_bach --files 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import symusic

from musegen import bar_lines
from musegen.data import pop909

TOLERANCE_BEATS = 1 / 8  # a 32nd note
PROMPT_BEATS = 64  # a POP909 song is cut to its first 16 bars, as a user might upload it


def _near(tick: int, target: int, period: int, tpq: int) -> bool:
    off = (tick - target) % period
    return min(off, period - off) <= TOLERANCE_BEATS * tpq


def pop909_songs(src: Path, split: str, files: int) -> dict:
    songs = [d for d in pop909.song_dirs(src) if pop909.song_split(d.name) == split]
    songs = songs[:files] if files else songs
    rows = []
    for song in songs:
        try:
            score = symusic.Score(str(song / f"{song.name}.mid"))
            times, downbeats = pop909.read_beats(song)
        except Exception as error:
            print(f"{song.name}: skipped ({error})", file=sys.stderr)
            continue
        tpq = score.ticks_per_quarter
        ticks = pop909.seconds_to_ticks(score, times)
        # What a user would upload: the song's first PROMPT_BEATS beats.
        start = min(n.time for t in score.tracks for n in t.notes)
        score = score.clip(0, start + PROMPT_BEATS * tpq, clip_end=False)
        found = bar_lines.find(score)
        row = {"song": song.name, "flagged": found is not None}
        beat = found.beat_offset if found else 0
        row["beats_right"] = _near(beat, ticks[0], tpq, tpq)
        inside = [
            ticks[d] for d in downbeats if start - tpq // 2 <= ticks[d] < start + PROMPT_BEATS * tpq
        ]
        if found is not None and inside:
            # A bar line of the re-barred file is at tick k·bar, i.e. at k·bar − shift here.
            row["meter"] = found.beats_per_bar
            hits = [_near(-found.shift, tick, 4 * tpq, tpq) for tick in inside]
            row["downbeats_right"] = found.beats_per_bar == 4 and 2 * sum(hits) > len(hits)
        rows.append(row)
    return _summary(rows, ("flagged", "beats_right", "downbeats_right"))


def performed_files(folder: Path) -> dict:
    """Performances written by ``perform.py`` (played without a click), each cut to its first
    :data:`PROMPT_BEATS` beats: how many are flagged (``find`` leaves them on their own bars
    unless their notes also sit off the grid by a constant offset or the meter is 1/4)."""
    truth = json.loads((folder / "beats.json").read_text())
    rows = []
    for name, item in sorted(truth.items()):
        score = symusic.Score(str(folder / name))
        beats = np.asarray(item["beats"])
        end = int(beats[min(PROMPT_BEATS, len(beats) - 1)])
        score = score.clip(0, end, clip_end=False)
        beats = beats[beats <= end]
        found, played = bar_lines.examine(score)
        row = {"file": name, "flagged": found is not None, "played": played}
        if found is not None:
            # The quarter notes of the bars found (bar lines from tick 0), on the file's ticks.
            quarters = found.to_file(np.arange(4 * PROMPT_BEATS) * found.tpq)
            tolerance = 0.07 / (60 / 120 / score.ticks_per_quarter)  # 70 ms at the recorder's tempo
            inside = (quarters >= beats[0] - tolerance) & (quarters <= beats[-1] + tolerance)
            row["beat_f"] = _f_measure(quarters[inside], beats, tolerance)
            row["meter"] = f"{found.beats_per_bar}/4"
        rows.append(row)
    out = _summary(rows, ("flagged", "played"))
    f = [r["beat_f"] for r in rows if "beat_f" in r]
    out["beat_f_median"] = float(np.median(f)) if f else None
    return out


def _f_measure(found: np.ndarray, truth: np.ndarray, tolerance: float) -> float:
    """Of beats found and true beats, the share within ``tolerance`` of one of the other kind,
    combined (the F-measure of beat tracking)."""
    if not len(found) or not len(truth):
        return 0.0
    precision = np.mean([np.abs(truth - b).min() <= tolerance for b in found])
    recall = np.mean([np.abs(found - b).min() <= tolerance for b in truth])
    return float(2 * precision * recall / max(precision + recall, 1e-9))


def clean_files(folder: Path, files: int, seed: int) -> dict:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    random.Random(seed).shuffle(paths)
    paths = paths[:files] if files else paths
    rows = []
    for path in paths:
        try:
            score = symusic.Score(str(path))
        except Exception as error:
            print(f"{path}: skipped ({error})", file=sys.stderr)
            continue
        start = min((n.time for t in score.tracks for n in t.notes), default=0)
        score = score.clip(0, start + PROMPT_BEATS * score.ticks_per_quarter, clip_end=False)
        onsets = bar_lines._Onsets.of(score)
        if len(onsets.times) < bar_lines.MIN_ONSETS:
            continue
        found, played = bar_lines.examine(score)
        row = {"file": str(path), "flagged": found is not None, "played": played}
        if found is not None:
            row["reason"] = found.reason
        numerator, denominator = bar_lines.declared_meter(score)
        if denominator == 4 and numerator in bar_lines.METERS and len(score.time_signatures) <= 1:
            tpq = score.ticks_per_quarter
            beats, downbeat = bar_lines._downbeat(onsets, tpq, 0)
            first_bar = sorted(score.time_signatures, key=lambda s: s.time)
            origin = first_bar[0].time if first_bar else 0
            row["downbeats_right"] = beats == numerator and _near(
                downbeat, origin, numerator * tpq, tpq
            )
        rows.append(row)
    summary = _summary(rows, ("flagged", "played", "downbeats_right"))
    summary["flagged_files"] = [(r["file"], r["reason"]) for r in rows if r["flagged"]][:20]
    summary["played_files"] = [r["file"] for r in rows if r["played"]][:20]
    return summary


def _summary(rows: list[dict], keys: tuple[str, ...]) -> dict:
    out: dict = {"files": len(rows)}
    for key in keys:
        values = [r[key] for r in rows if key in r]
        out[key] = {"of": len(values), "share": float(np.mean(values)) if values else None}
    out["rows"] = rows
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pop909", type=Path, help="the POP909 dataset folder, as distributed")
    parser.add_argument("--split", default="test", help="POP909 songs of this split")
    parser.add_argument("--clean", type=Path, nargs="*", default=[], help="folders of MIDI files")
    parser.add_argument("--files", type=int, default=0, help="at most this many per set (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="which clean files, when --files")
    parser.add_argument(
        "--performed", type=Path, nargs="*", default=[], help="folders written by perform.py"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results: dict = {}
    if args.pop909:
        results[f"pop909_{args.split}"] = pop909_songs(args.pop909, args.split, args.files)
    for folder in args.clean:
        results[str(folder)] = clean_files(folder, args.files, args.seed)
    for folder in args.performed:
        results[f"performed:{folder}"] = performed_files(folder)
    for name, summary in results.items():
        parts = [f"{name}: {summary['files']} files"]
        for key, value in summary.items():
            if isinstance(value, dict) and value.get("share") is not None:
                parts.append(f"{key} {value['share']:.1%} of {value['of']}")
            elif key == "beat_f_median" and value is not None:
                parts.append(f"quarter-note F-measure median {value:.2f}")
        print("; ".join(parts))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
