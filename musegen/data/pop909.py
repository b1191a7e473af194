"""``musegen corpus pop909``: the POP909 songs with their beat, chord and key annotations.

POP909 (Wang et al., ISMIR 2020) arranges 909 Chinese pop songs for piano in three tracks: the
vocal melody, secondary melodies ("bridge") and the accompaniment. Each song folder also holds
beat, chord and key annotations; we keep them in ``corpus.json`` because the full-band builder
and any later analysis need them, and they are what makes POP909 more than a piano corpus.
The split is fixed by a hash of the song id, so everything derived from one song (this corpus,
the full-band arrangement) falls in the same split.
"""

from __future__ import annotations

import bisect
import itertools
from pathlib import Path

import symusic

from musegen.data.sources import (
    BuildReport,
    SourceInfo,
    check_limit,
    hash_split,
    load_midi,
    prepare_out_dir,
    require_dir,
    run_items,
    write_corpus_json,
    write_score,
)
from musegen.errors import MidiError, MusegenError

SOURCE = SourceInfo(
    name="POP909",
    licence="MIT",
    attribution=(
        "POP909 dataset, Copyright (c) 2020 Music X Lab (Ziyu Wang, Ke Chen, Junyan Jiang et "
        "al., 'POP909: A Pop-song Dataset for Music Arrangement Generation', ISMIR 2020); MIT "
        "licence"
    ),
    url="https://github.com/music-x-lab/POP909-Dataset",
)
GROUP = "pop_piano"
SONGS_SUBDIR = "POP909"
TRACK_NAMES = ("MELODY", "BRIDGE", "PIANO")

DESCRIPTION = (
    "POP909 piano arrangements, one file per song with three tracks named MELODY (vocal line), "
    "BRIDGE (secondary melodies) and PIANO (accompaniment). Metadata keeps the song's "
    "annotations: beat times in seconds (beat_midi.txt) with the indices of 4/4 downbeats, "
    "chord labels with start/end seconds (chord_midi.txt) and keys (key_audio.txt). Split by a "
    "hash of the song id (about 90/5/5)."
)


def songs_root(src: Path) -> Path:
    """The folder of NNN song folders: ``SRC/POP909`` in the dataset, or SRC itself."""
    return src / SONGS_SUBDIR if (src / SONGS_SUBDIR).is_dir() else src


def require_songs(src_dir: str | Path) -> Path:
    """The dataset folder (holding POP909/NNN/ or NNN/ song folders), or one clear line."""
    src = Path(src_dir)
    if src.is_dir() and song_dirs(src):
        return src
    require_dir(src, SOURCE, SONGS_SUBDIR)  # names what is missing and where to download it
    raise MusegenError(f"{songs_root(src)} holds no NNN song folders; download {SOURCE.url}")


def song_dirs(src: Path) -> list[Path]:
    root = songs_root(src)
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def song_split(song_id: str) -> str:
    """The split of a song and of everything built from it."""
    return hash_split(f"pop909:{song_id}")


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def read_beats(song_dir: Path) -> tuple[list[float], list[int]]:
    """Beat times (s) and indices of 4/4 downbeats, from ``beat_midi.txt`` (columns: time,
    2/4 downbeat flag, 4/4 downbeat flag)."""
    rows = _rows(song_dir / "beat_midi.txt")
    times = [float(r[0]) for r in rows]
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise ValueError("beat_midi.txt beat times do not increase")
    downbeats = [i for i, r in enumerate(rows) if len(r) > 2 and float(r[2]) == 1.0]
    return times, downbeats


def read_spans(path: Path) -> list[tuple[float, float, str]]:
    """(start s, end s, label) rows of ``chord_midi.txt`` or ``key_audio.txt``."""
    return [(float(r[0]), float(r[1]), r[2]) for r in _rows(path) if len(r) >= 3]


def annotations(song_dir: Path) -> dict:
    """The song's annotations, rounded to the millisecond; a missing file gives None."""
    meta: dict = {"beats": None, "downbeats": None, "chords": None, "key": None}
    if (song_dir / "beat_midi.txt").exists():
        times, downbeats = read_beats(song_dir)
        meta["beats"], meta["downbeats"] = [round(t, 3) for t in times], downbeats
    for key, name in (("chords", "chord_midi.txt"), ("key", "key_audio.txt")):
        if (song_dir / name).exists():
            meta[key] = [
                [round(s, 3), round(e, 3), lab] for s, e, lab in read_spans(song_dir / name)
            ]
    return meta


def seconds_to_ticks(score: symusic.Score, seconds: list[float]) -> list[int]:
    """Tick of each time in seconds, through the song's own tempo map."""
    tpq = score.ticks_per_quarter
    tempos = sorted(score.tempos, key=lambda t: t.time) or [symusic.Tempo(0, 120.0)]
    starts, ticks, rates = [0.0], [0], [tempos[0].mspq / 1e6 / tpq]
    for tempo in tempos[1:]:
        starts.append(starts[-1] + (tempo.time - ticks[-1]) * rates[-1])
        ticks.append(tempo.time)
        rates.append(tempo.mspq / 1e6 / tpq)
    out = []
    for t in seconds:
        i = max(0, bisect.bisect_right(starts, t) - 1)
        out.append(round(ticks[i] + (t - starts[i]) / rates[i]))
    return out


def downbeat_shift(score: symusic.Score, ticks: list[int], downbeats: list[int]) -> tuple[int, int]:
    """(index of the annotated downbeat that starts the music, ticks to shift the score by so
    that beat lands on a 4/4 bar line)."""
    onset = min(n.time for t in score.tracks for n in t.notes)
    first = max([d for d in downbeats if ticks[d] <= onset + 1] or [0])
    return first, -ticks[first] % (4 * score.ticks_per_quarter)


def on_downbeats(score: symusic.Score, song_dir: Path) -> tuple[symusic.Score, int]:
    """The song in 4/4 with its annotated downbeats on bar lines, and the shift in ticks.
    Most POP909 files declare 1/4 or 2/4, which disagrees with their own beat annotations and
    would teach a model one-beat bars."""
    times, downbeats = read_beats(song_dir)
    _, shift = downbeat_shift(score, seconds_to_ticks(score, times), downbeats)
    moved = score.shift_time(shift) if shift else score.copy()
    if len(moved.tempos):
        moved.tempos[0].time = 0
    moved.time_signatures = symusic.core.TimeSignatureTickList()
    moved.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    return moved, shift


def song_score(path: Path) -> symusic.Score:
    """A song with its tracks named by role, so the three stay distinct downstream."""
    score = load_midi(path)
    if not score.note_num():
        raise MidiError("no notes")
    for i, track in enumerate(score.tracks):
        track.name = TRACK_NAMES[i] if i < len(TRACK_NAMES) else f"TRACK{i + 1}"
    return score


def build(
    src_dir: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Write every song (``NNN.mid``, sorted by id; or the first ``limit``) with annotations."""
    check_limit(limit)
    src = require_songs(src_dir)
    songs = song_dirs(src)[:limit]
    out = prepare_out_dir(out_dir, overwrite)
    report = BuildReport(SOURCE, out)

    def convert(song_dir: Path) -> tuple[str, dict]:
        song_id = song_dir.name
        score = song_score(song_dir / f"{song_id}.mid")
        score, shift = on_downbeats(score, song_dir)
        meta = {"song_id": song_id, "notes": score.note_num(), "shift_ticks": shift}
        meta |= annotations(song_dir)
        rel = f"{song_id}.mid"
        write_score(score, out, rel)
        return rel, meta | {"split": song_split(song_id), "group": GROUP}

    run_items(((d.name, d) for d in songs), convert, report, progress, total=len(songs))
    write_corpus_json(report, DESCRIPTION, {"limit": limit})
    return report
