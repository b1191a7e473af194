"""``musegen corpus fullband``: band arrangements assembled from POP909 songs and Groove drums.

No licensed multitrack pop/rock corpus is available, so band material is built from two
licensed ones, deterministically and coherent by construction:

- **drums**: a Groove *beat* performance in 4/4 from Groove's *train* split (test drums never
  leak into training), chosen from the song id among the performances whose tempo is closest
  to the song's. Each hit is placed by its position in beats, snapped to the 16th-note grid,
  onto the song's own annotated beats (``beat_midi.txt``), bar by bar from the song's 4/4
  downbeats, looping the performance over the song;
- **bass**: the root of each annotated chord (``chord_midi.txt``) in the bass register
  (MIDI 33–51), in one of three rhythms chosen from the song id (root on every beat; root in
  eighths; root on beats 1 and 3 and fifth on 2 and 4, root again whenever the chord changes);
- **melody, bridge, piano**: the song's own tracks, on General MIDI programs drawn from the
  song id out of instrument families (lead synths, guitars, electric pianos, organs, strings,
  brass, reeds; acoustic piano sometimes).

Everything is shifted so the first bar starts on a bar line of a 4/4 meter, and no track holds
two overlapping notes of one pitch. A piece inherits its POP909 song's split.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import symusic

from musegen.data import groove, pop909
from musegen.data.sources import (
    BuildReport,
    SourceInfo,
    check_limit,
    prepare_out_dir,
    require_dir,
    run_items,
    stable_index,
    write_corpus_json,
    write_score,
)
from musegen.errors import MusegenError

SOURCE = SourceInfo(
    name="musegen full-band arrangements (POP909 + Groove MIDI)",
    licence="MIT (POP909 material) and CC BY 4.0 (Groove MIDI drum performances)",
    attribution=f"{pop909.SOURCE.attribution}. Drums: {groove.SOURCE.attribution}",
    url=f"{pop909.SOURCE.url} and {groove.SOURCE.url}",
)
GROUP = "full_band"
DESCRIPTION = " ".join(__doc__.split("\n\n", 1)[1].replace("**", "").replace("``", "").split())
CANDIDATES = 8  # Groove performances nearest the song's tempo that the song id chooses from
STEPS = 4  # grid steps per beat: 16th notes
BASS_ROOT_LOW = 33  # roots in 33..44 (A1..G#2), fifths up to 51: inside the 28..55 bass range
BASS_RHYTHMS = ("quarters", "eighths", "root_fifth")
BASS_PROGRAMS = (32, 33, 33, 34, 34, 35, 36, 38, 39)  # finger and pick basses more often
# Per role, families of GM programs (0-based); the song id picks a family, then a program.
FAMILIES = {
    "MELODY": (
        (80, 81, 82, 84, 85, 87),  # lead synths
        (64, 65, 66, 71, 73),  # reeds and flute
        (56, 61),  # trumpet, brass section
        (27, 29, 30),  # clean, overdriven, distortion guitar
        (40, 48, 50),  # violin, strings
        (0, 4, 5),  # piano, electric pianos
    ),
    "BRIDGE": (
        (48, 49, 50, 51),  # string ensembles
        (24, 25, 26, 27),  # guitars
        (16, 17, 18),  # organs
        (4, 5),  # electric pianos
        (61, 62, 65, 66),  # brass, saxophones
        (88, 89, 81),  # pads, saw lead
    ),
    "PIANO": (
        (0, 1, 2),  # acoustic / electric grand: piano kept for a share of songs
        (4, 5),  # electric pianos
        (24, 25, 27, 28),  # guitars
        (16, 18),  # organs
        (48, 50),  # strings
        (88, 89),  # pads
    ),
}
NOTE_NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


@dataclass(frozen=True)
class DrumLoop:
    """A drum performance as (16th step, pitch, velocity) hits, cut to whole 4/4 bars."""

    path: str
    hits: tuple[tuple[int, int, int], ...]
    bars: int


@lru_cache(maxsize=64)
def load_loop(path: Path) -> DrumLoop:
    """Snap each hit to the nearest 16th of its beat position; one hit per (step, pitch)."""
    score = groove.drum_score(path)
    tpq = score.ticks_per_quarter
    loudest: dict[tuple[int, int], int] = {}
    for note in score.tracks[0].notes:
        key = (round(note.time * STEPS / tpq), note.pitch)
        loudest[key] = max(loudest.get(key, 0), note.velocity)
    bars = max(step for step, _ in loudest) // (4 * STEPS)  # whole bars only
    if bars < 2:
        raise MusegenError(f"{path.name}: shorter than two bars")
    hits = tuple(sorted((s, p, v) for (s, p), v in loudest.items() if s < bars * 4 * STEPS))
    return DrumLoop(path.name, hits, bars)


def choose_drums(rows: list[dict], song_id: str, song_bpm: float, groove_dir: Path) -> tuple:
    """The Groove performance for a song: among the CANDIDATES closest in tempo, the one the song
    id picks (the next if it does not load). Returns (info row, DrumLoop)."""
    ranked = sorted(rows, key=lambda r: (abs(math.log2(float(r["bpm"]) / song_bpm)), r["id"]))
    near = ranked[:CANDIDATES]
    first = stable_index(f"fullband-drums:{song_id}", len(near))
    for k in range(len(near)):
        row = near[(first + k) % len(near)]
        try:
            return row, load_loop(groove_dir / row["midi_filename"])
        except Exception:
            continue
    raise MusegenError("none of the nearest Groove performances could be read")


def train_beats(groove_dir: Path) -> list[dict]:
    """Groove rows usable under a song: 4/4 beats (not fills) from the train split only."""
    rows = [
        r
        for r in groove.read_info(groove_dir)
        if r["split"] == "train" and r["beat_type"] == "beat" and r["time_signature"] == "4-4"
    ]
    if not rows:
        raise MusegenError(f"{groove_dir} has no 4/4 beat performance in Groove's train split")
    return rows


def bar_starts(downbeats: list[int], first: int, last: int) -> list[tuple[int, int]]:
    """(first beat, beats) of each bar from beat ``first`` to ``last``: the annotated
    downbeats, with gaps longer than a 4/4 bar filled every four beats."""
    marks = sorted({first, last} | {d for d in downbeats if first < d < last})
    bars = []
    for a, b in itertools.pairwise(marks):
        bars += [(s, min(4, b - s)) for s in range(a, b, 4)]
    return bars


def parse_root(label: str) -> int | None:
    """Pitch class of a chord label's root (``C#:min7`` → 1); None for no chord (``N``)."""
    name = label.split(":", 1)[0]
    if not name or name[0] not in NOTE_NAMES:
        return None
    return (NOTE_NAMES[name[0]] + name.count("#") - name.count("b")) % 12


def chord_root(chords: list[tuple[float, float, str]], t: float) -> int | None:
    for start, end, label in chords:
        if start <= t + 1e-3 < end:
            return parse_root(label)
    return None


def clean_track(track: symusic.Track) -> None:
    """Trim each note at the next onset of its pitch; drop what is left with no length."""
    notes = sorted(track.notes, key=lambda n: (n.pitch, n.time, -n.duration))
    kept: list[symusic.Note] = []
    for note in notes:
        prev = kept[-1] if kept and kept[-1].pitch == note.pitch else None
        if prev is not None and note.time < prev.time + prev.duration:
            prev.duration = note.time - prev.time
            if prev.duration <= 0:
                kept.pop()
        kept.append(symusic.Note(note.time, max(1, note.duration), note.pitch, note.velocity))
    track.notes = sorted(kept, key=lambda n: (n.time, n.pitch))


def choose_programs(song_id: str) -> dict[str, int]:
    """Distinct GM programs for melody, bridge and piano, drawn from each role's families."""
    chosen: dict[str, int] = {}
    for role, families in FAMILIES.items():
        start = stable_index(f"fullband-family:{song_id}:{role}", len(families))
        options = [p for k in range(len(families)) for p in families[(start + k) % len(families)]]
        first = stable_index(f"fullband-program:{song_id}:{role}", len(families[start]))
        options = options[first:] + options[:first]
        chosen[role] = next(p for p in options if p not in chosen.values())
    return chosen


class Grid:
    """The song's beats in ticks: a position (beat index + fraction) becomes a tick."""

    def __init__(self, ticks: list[int]):
        self.ticks = ticks

    def at(self, beat: int, frac: float) -> int:
        a, b = self.ticks[beat], self.ticks[beat + 1]
        return round(a + frac * (b - a))


def drum_track(grid: Grid, bars: list[tuple[int, int]], loop: DrumLoop) -> symusic.Track:
    track = symusic.Track(name="DRUMS", program=0, is_drum=True)
    per_bar = 4 * STEPS
    for k, (first, beats) in enumerate(bars):
        offset = (k % loop.bars) * per_bar
        for step, pitch, velocity in loop.hits:
            local = step - offset
            if 0 <= local < beats * STEPS:
                beat, frac = first + local // STEPS, (local % STEPS) / STEPS
                time = grid.at(beat, frac)
                length = max(1, grid.at(beat, frac + 0.125) - time)  # a 32nd note
                track.notes.append(symusic.Note(time, length, pitch, velocity))
    return track


def bass_track(grid, bars, beat_times, chords, rhythm: str, program: int) -> symusic.Track:
    track = symusic.Track(name="BASS", program=program, is_drum=False)
    previous = None
    for first, beats in bars:
        for j in range(beats):
            root = chord_root(chords, beat_times[first + j])
            changed, previous = root != previous, root
            if root is None:
                continue
            pitch = BASS_ROOT_LOW + (root - BASS_ROOT_LOW) % 12
            if rhythm == "root_fifth" and j % 2 == 1 and not changed:
                pitch += 7
            halves = (0.0, 0.5) if rhythm == "eighths" else (0.0,)
            span = 0.45 if rhythm == "eighths" else 0.9
            for h in halves:
                start = grid.at(first + j, h)
                velocity = 96 if j == 0 and h == 0 else (84 if h == 0 else 72)
                length = max(1, grid.at(first + j, h + span) - start)
                track.notes.append(symusic.Note(start, length, pitch, velocity))
    return track


def arrange(song_dir: Path, rows: list[dict], groove_dir: Path) -> tuple[symusic.Score, dict]:
    """The full-band score of one POP909 song and what was chosen for it."""
    song_id = song_dir.name
    for name in ("beat_midi.txt", "chord_midi.txt", f"{song_id}.mid"):
        if not (song_dir / name).exists():
            raise MusegenError(f"missing {name}")
    song = pop909.song_score(song_dir / f"{song_id}.mid")
    beat_times, downbeats = pop909.read_beats(song_dir)
    chords = pop909.read_spans(song_dir / "chord_midi.txt")
    if len(beat_times) < 8:
        raise MusegenError("fewer than 8 annotated beats")
    song_bpm = 60.0 / statistics.median(b - a for a, b in itertools.pairwise(beat_times))
    row, loop = choose_drums(rows, song_id, song_bpm, groove_dir)
    ticks = pop909.seconds_to_ticks(song, beat_times)
    first, shift = pop909.downbeat_shift(song, ticks, downbeats)
    end = max(n.time + n.duration for t in song.tracks for n in t.notes)
    last = next((i for i, t in enumerate(ticks) if t >= end), len(ticks) - 1)
    bars = bar_starts(downbeats, first, max(last, first + 1))
    grid = Grid([t + shift for t in ticks])
    rhythm = BASS_RHYTHMS[stable_index(f"fullband-bass:{song_id}", len(BASS_RHYTHMS))]
    bass_program = BASS_PROGRAMS[stable_index(f"fullband-bass-program:{song_id}", 9)]
    programs = choose_programs(song_id)
    score = symusic.Score(song.ticks_per_quarter)
    for tempo in sorted(song.tempos, key=lambda t: t.time) or [symusic.Tempo(0, 120.0)]:
        score.tempos.append(symusic.Tempo(tempo.time + shift if tempo.time else 0, tempo.qpm))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for track in song.tracks:
        if track.notes:
            moved = symusic.Track(name=track.name, program=programs.get(track.name, track.program))
            moved.notes.extend(
                symusic.Note(n.time + shift, n.duration, n.pitch, n.velocity) for n in track.notes
            )
            score.tracks.append(moved)
    score.tracks.append(bass_track(grid, bars, beat_times, chords, rhythm, bass_program))
    score.tracks.append(drum_track(grid, bars, loop))
    for track in score.tracks:
        clean_track(track)
    meta = {
        "song_id": song_id,
        "song_bpm": round(song_bpm, 2),
        "shift_ticks": shift,
        "bars": len(bars),
        "programs": programs | {"BASS": bass_program},
        "bass_rhythm": rhythm,
        "drums": {"file": row["midi_filename"], "style": row["style"], "bpm": int(row["bpm"])},
        "drummer": row["drummer"],
        "notes": score.note_num(),
    }
    return score, meta


def build(
    pop909_dir: str | Path,
    groove_dir: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Arrange every POP909 song (sorted by id; or the first ``limit``) as ``NNN.mid``."""
    check_limit(limit)
    songs = pop909.song_dirs(pop909.require_songs(pop909_dir))[:limit]
    gdir = require_dir(groove_dir, groove.SOURCE, groove.INFO)
    rows = train_beats(gdir)
    out = prepare_out_dir(out_dir, overwrite)
    report = BuildReport(SOURCE, out)

    def convert(song_dir: Path) -> tuple[str, dict]:
        score, meta = arrange(song_dir, rows, gdir)
        rel = f"{song_dir.name}.mid"
        write_score(score, out, rel)
        return rel, meta | {"split": pop909.song_split(song_dir.name), "group": GROUP}

    run_items(((d.name, d) for d in songs), convert, report, progress, total=len(songs))
    settings = {"limit": limit, "candidates": CANDIDATES, "grid_steps_per_beat": STEPS}
    write_corpus_json(report, DESCRIPTION, settings)
    return report
