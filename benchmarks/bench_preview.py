"""How long after the tokens are done the app has something to play: before and after previews.

The app used to render the whole piece (prompt + continuation) to WAV and draw its whole piano
roll before showing a result; now it writes the MIDI, a piano roll zoomed on the new bars and a
short compressed preview (2 bars of lead-in + the new bars) first, and the full WAV after. This script
times both paths on the same result: a long multi-track prompt (made here, about 3¾ minutes and
9 tracks, or a real file with ``--midi``) with 4 new bars appended, as the sampler's result would
be. Model time is not included (it is the same in both).

    python benchmarks/bench_preview.py            # 3 repeats
    python benchmarks/bench_preview.py --quick    # 1 repeat
    python benchmarks/bench_preview.py --midi /work/shared/corpora/pop909/001/001.mid
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import symusic

from musegen.app.results import save_full, save_preview
from musegen.generation.prompt import bar_starts
from musegen.pipeline import GenerationResult
from musegen.render.audio import render_audio, write_audio
from musegen.render.pianoroll import render_pianoroll
from musegen.tokenizer import load_tick_score

NEW_BARS = 4
TARGET_S = 2.0
# (program, is_drum, note length in 16ths, octave): a pop band, 9 tracks
BAND = [
    (0, False, 2, 60),  # piano
    (33, False, 4, 36),  # bass
    (25, False, 2, 55),  # guitar
    (48, False, 16, 60),  # strings
    (73, False, 4, 72),  # flute
    (65, False, 8, 64),  # sax
    (11, False, 4, 72),  # vibraphone
    (89, False, 16, 48),  # pad
    (0, True, 2, 36),  # drums
]


def long_piece(seconds: float = 225.0, tempo: float = 120.0, tpq: int = 480) -> symusic.Score:
    """About ``seconds`` of a 9-track pop arrangement in 4/4 (deterministic)."""
    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, tempo))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    bars = round(seconds / (4 * 60 / tempo))
    chords = [0, 5, 7, 9]
    for k, (program, drum, length, octave) in enumerate(BAND):
        track = symusic.Track(program=program, is_drum=drum, name=f"track {k}")
        step = tpq * length // 4
        for bar in range(bars):
            root = chords[bar % 4]
            for i in range(4 * tpq // step):
                pitch = (36, 42, 38, 42)[i % 4] if drum else octave + root + (0, 4, 7, 12)[i % 4]
                track.notes.append(symusic.Note(bar * 4 * tpq + i * step, step, pitch, 80))
        score.tracks.append(track)
    return score


def with_continuation(score: symusic.Score, bars: int = NEW_BARS) -> GenerationResult:
    """``score`` with its last ``bars`` bars played again after its end, as a sampler's result."""
    starts = bar_starts(score)
    end = starts[-1]
    source = starts[max(0, len(starts) - 1 - bars)]
    out = score.copy()
    for track in out.tracks:
        again = [n for n in track.notes if source <= n.time < end]
        for n in again:
            track.notes.append(symusic.Note(n.time - source + end, n.duration, n.pitch, n.velocity))
    continuation = out.clip(end, out.end() + 1, clip_end=False).shift_time(-end)
    return GenerationResult(out, continuation, end, 0, bars, 0, 0.0, True)


def before(result: GenerationResult, directory: Path) -> None:
    """The old path: MIDI, the whole piece to WAV, the whole piano roll."""
    (directory / "old.mid").write_bytes(result.midi_bytes())
    write_audio(render_audio(result.score), directory / "old.wav")
    render_pianoroll(result.score, path=directory / "old.png", split_tick=result.prompt_end_tick)


def after(result: GenerationResult, directory: Path):
    """The new path up to "playable": MIDI, zoomed roll, compressed preview of lead-in + new bars."""
    return save_preview(result, directory, 0, "new")


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat instead of three")
    parser.add_argument("--midi", type=Path, help="a real prompt instead of the made-up one")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    score = load_tick_score(args.midi) if args.midi else long_piece()
    result = with_continuation(score)
    seconds = score.to("second").end()
    print(
        f"prompt: {args.midi or 'made-up pop arrangement'}: {seconds:.0f} s, "
        f"{len(score.tracks)} tracks, {len(bar_starts(score)) - 1} bars, "
        f"{score.note_num()} notes; +{NEW_BARS} new bars"
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        after(result, directory)  # warm up: SoundFont load, matplotlib fonts
        old = [timed(before, result, directory) for _ in range(repeats)]
        new = [timed(after, result, directory) for _ in range(repeats)]
        variation = after(result, directory)
        full = timed(save_full, variation, result.score)
        wav_mb = variation.wav_path.stat().st_size / 1e6
        ogg_kb = variation.preview_path.stat().st_size / 1e3
    old_s, new_s = statistics.median(old), statistics.median(new)
    print(f"before (whole-song WAV + whole roll): median {old_s:.2f} s  {old}")
    print(
        f"after  (preview: MIDI + zoomed roll + preview of {variation.window.label()}): "
        f"median {new_s:.2f} s  {new}"
    )
    print(
        f"ratio before/after: {old_s / new_s:.1f}x; target ≤ {TARGET_S} s: "
        f"{'met' if new_s <= TARGET_S else 'MISSED'}"
    )
    print(
        f"full WAV + whole roll afterwards (in the background): {full:.2f} s; "
        f"WAV {wav_mb:.1f} MB vs preview {ogg_kb:.0f} kB"
    )


if __name__ == "__main__":
    main()
