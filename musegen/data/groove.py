"""``musegen corpus groove``: the Groove MIDI Dataset as a drum corpus with its own metadata.

Groove (Gillick et al., 2019) holds 1,150 performances by 10 drummers on an electronic kit,
each described in ``info.csv`` (style, bpm, beat or fill, meter) and assigned to a
train/validation/test split by the dataset's authors. We keep that split rather than hashing:
published results on Groove use it, and the full-band builder relies on it to keep test drums
out of training material. Files are normalised (one track, on the drum channel, named
``DRUMS``) so a tokenizer never mistakes a drum kit for a piano, and their drums are put in
General MIDI (:data:`GM_DRUMS`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import symusic

from musegen.data.sources import (
    BuildReport,
    SourceInfo,
    check_limit,
    load_midi,
    prepare_out_dir,
    require_dir,
    run_items,
    write_corpus_json,
    write_score,
)
from musegen.errors import MidiError, MusegenError

SOURCE = SourceInfo(
    name="Groove MIDI Dataset",
    licence="CC BY 4.0",
    attribution=(
        "Groove MIDI Dataset by Jon Gillick, Adam Roberts, Jesse Engel, Douglas Eck and David "
        "Bamman (Google Magenta), 'Learning to Groove with Inverse Sequence Transformations', "
        "ICML 2019; licensed under CC BY 4.0"
    ),
    url="https://magenta.tensorflow.org/datasets/groove",
)
GROUP = "drums"
INFO = "info.csv"
SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}

DESCRIPTION = (
    "Groove MIDI Dataset performances, one drum track per file, on the General MIDI drum "
    "channel; metadata (drummer, style, bpm, beat/fill, meter) and the train/validation/test "
    "split are the dataset's own, from info.csv."
)


# The Roland TD-11 articulations of Groove's kit that General MIDI lacks or gives to another
# instrument, as the General MIDI drum they are played on (the dataset's own mapping table).
# Without this a model learns the kit's dialect: the hi-hat edge hits (22, 26) lie outside a
# tokenizer's usual drum range and vanish, a crash is mostly 55 (a splash in General MIDI) and
# a floor-tom rim 58 (a vibraslap), so it answers a user's open hi-hat or crash with the wrong
# drum. The other pitches already mean in General MIDI what was hit.
GM_DRUMS = {
    22: 42,  # hi-hat closed (edge) -> closed hi-hat
    26: 46,  # hi-hat open (edge) -> open hi-hat
    50: 48,  # tom 1 (rim) -> tom 1 (Hi-Mid Tom)
    47: 45,  # tom 2 (rim) -> tom 2 (Low Tom)
    58: 43,  # tom 3 (rim) -> tom 3 (High Floor Tom)
    55: 49,  # crash 1 (edge) -> Crash Cymbal 1
    52: 57,  # crash 2 (edge) -> Crash Cymbal 2
    59: 51,  # ride (edge) -> Ride Cymbal 1
}


def read_info(src: Path) -> list[dict[str, str]]:
    """The rows of ``info.csv`` sorted by MIDI path, so every build visits files in one order."""
    with open(src / INFO, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "midi_filename" not in rows[0]:
        raise MusegenError(f"{src / INFO} has no midi_filename column: is this Groove's info.csv?")
    return sorted(rows, key=lambda r: r["midi_filename"])


def metadata(row: dict[str, str]) -> dict:
    """What info.csv says about one performance, with the split named as musegen names it."""
    split = SPLIT_NAMES.get(row.get("split", "").strip())
    if split is None:
        raise MusegenError(f"unknown split {row.get('split')!r} in info.csv")
    return {
        "drummer": row["drummer"],
        "session": row["session"],
        "style": row["style"],
        "bpm": int(float(row["bpm"])),
        "beat_type": row["beat_type"],
        "meter": row["time_signature"].replace("-", "/"),
        "duration_s": round(float(row["duration"]), 3),
        "split": split,
        "group": GROUP,
    }


def drum_score(path: Path) -> symusic.Score:
    """A Groove file as one drum track of General MIDI drums; every note goes to the drum
    channel."""
    return general_midi_drums(load_midi(path))


def general_midi_drums(score: symusic.Score) -> symusic.Score:
    """``score``'s notes as one drum track of General MIDI drums (:data:`GM_DRUMS`), one hit
    per time and drum, the loudest."""
    hits: dict[tuple[int, int], tuple[int, int]] = {}  # (time, drum): the loudest hit's
    for note in (n for t in score.tracks for n in t.notes):  # (velocity, duration)
        key = (note.time, GM_DRUMS.get(note.pitch, note.pitch))
        hits[key] = max(hits.get(key, (0, 0)), (note.velocity, max(1, note.duration)))
    if not hits:
        raise MidiError("no notes")
    track = symusic.Track(name="DRUMS", program=0, is_drum=True)
    for (time, pitch), (velocity, duration) in sorted(hits.items()):
        track.notes.append(symusic.Note(time, duration, pitch, velocity))
    out = symusic.Score(score.ticks_per_quarter)
    out.tempos.extend(score.tempos)
    out.time_signatures.extend(score.time_signatures)
    out.tracks.append(track)
    return out


def build(
    src_dir: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Write every performance listed in ``info.csv`` (or the first ``limit``) to ``out_dir``,
    keeping the dataset's relative paths; missing or unreadable files are reported."""
    check_limit(limit)
    src = require_dir(src_dir, SOURCE, INFO)
    rows = read_info(src)[:limit]
    out = prepare_out_dir(out_dir, overwrite)
    report = BuildReport(SOURCE, out)

    def convert(row: dict[str, str]) -> tuple[str, dict]:
        meta = metadata(row)
        score = drum_score(src / row["midi_filename"])
        rel = row["midi_filename"]
        write_score(score, out, rel)
        return rel, meta | {"notes": score.note_num()}

    items = ((row["midi_filename"], row) for row in rows)
    run_items(items, convert, report, progress, total=len(rows))
    write_corpus_json(report, DESCRIPTION, {"limit": limit})
    return report
