"""``musegen corpus nottingham``: the cleaned Nottingham folk tunes (melody + chords).

The tunes come from the Nottingham Music Database as cleaned by Jukedeck: jigs, reels,
hornpipes, waltzes and more, each a melody over a chord accompaniment. The dataset has no split
of its own, so each file's split is fixed by a hash of its name: stable across reruns and
independent of the file bytes (a re-encoded tune keeps its split).
"""

from __future__ import annotations

import re
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
from musegen.errors import MidiError

SOURCE = SourceInfo(
    name="Nottingham Music Database (cleaned)",
    licence="GPL-3.0 (the jukedeck/nottingham-dataset repository); the tunes are traditional",
    attribution=(
        "Nottingham Music Database (Eric Foxley), cleaned MIDI version by Jukedeck "
        "(jukedeck/nottingham-dataset), GPL-3.0"
    ),
    url="https://github.com/jukedeck/nottingham-dataset",
)
GROUP = "folk"
MIDI_SUBDIR = "MIDI"
TRACK_NAMES = ("MELODY", "CHORDS")

DESCRIPTION = (
    "Nottingham folk tunes from the cleaned MIDI version, one file per tune: the melody and, "
    "where present, the chord accompaniment, with track names MELODY and CHORDS. Split by a "
    "hash of the file name (about 90/5/5)."
)


def _collection(stem: str) -> str:
    """The tune book a file belongs to: its name without the tune number (``jigs12`` → jigs)."""
    return re.sub(r"\d+$", "", stem) or stem


def tune_score(path: Path) -> symusic.Score:
    """A tune with empty tracks dropped and its tracks named by role (melody first)."""
    score = load_midi(path)
    tracks = [t for t in score.tracks if t.notes]
    if not tracks:
        raise MidiError("no notes")
    score.tracks = tracks
    for i, track in enumerate(score.tracks):
        track.name = TRACK_NAMES[i] if i < len(TRACK_NAMES) else f"TRACK{i + 1}"
    return score


def metadata(path: Path, score: symusic.Score) -> dict:
    sig = score.time_signatures[0] if len(score.time_signatures) else None
    return {
        "collection": _collection(path.stem),
        "meter": f"{sig.numerator}/{sig.denominator}" if sig else None,
        "tracks": len(score.tracks),
        "notes": score.note_num(),
        "split": hash_split(f"nottingham:{path.name}"),
        "group": GROUP,
    }


def build(
    src_dir: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Write every tune of ``SRC_DIR/MIDI`` (sorted by name; or the first ``limit``)."""
    check_limit(limit)
    src = require_dir(src_dir, SOURCE, MIDI_SUBDIR)
    paths = sorted(
        (p for p in (src / MIDI_SUBDIR).iterdir() if p.suffix.lower() in (".mid", ".midi")),
        key=lambda p: p.name,
    )[:limit]
    out = prepare_out_dir(out_dir, overwrite)
    report = BuildReport(SOURCE, out)

    def convert(path: Path) -> tuple[str, dict]:
        score = tune_score(path)
        rel = f"{path.stem}.mid"
        write_score(score, out, rel)
        return rel, metadata(path, score)

    run_items(((p.name, p) for p in paths), convert, report, progress, total=len(paths))
    write_corpus_json(report, DESCRIPTION, {"limit": limit})
    return report
