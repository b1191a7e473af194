"""Held-out pieces for the per-group continuation evaluation (``musegen evaluate-groups``).

Where the pieces of a group come from, and which of them count as held out:

- a prepared dataset (``musegen prepare``): every file of its manifest with the chosen split and
  a ``group``, read from the source folder the manifest records;
- a folder given for one group, recognised by what it holds and reduced to the split its own
  builder uses, so a test piece is never one the model trained on:
  a builder's OUT_DIR (``corpus.json``: each file's split), Groove (``info.csv``: the dataset's
  split), POP909 (``POP909/NNN/``: a hash of the song id), Nottingham (``MIDI/``: a hash of the
  file name), a ``musegen corpus music21`` folder (``music21_corpus.json``: ``musegen prepare``'s
  content-hash split with its default 5 % test); any other folder is used whole (an
  evaluation-only set such as the Beatles transcriptions).

Files named ``…_v0``, ``…_v1`` … are versions of one song: only one per song is used.
Pieces are visited in an order fixed by a hash of their path, so a run is reproducible and
two checkpoints are measured on the same pieces.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import symusic

from musegen import bar_lines, metrics
from musegen.errors import MusegenError
from musegen.tokenizer import load_tick_score

MIDI_SUFFIXES = (".mid", ".midi")
_VERSION = re.compile(r"_v\d+$")


@dataclass
class GroupSource:
    """The candidate files of one group, in evaluation order, and how they were chosen."""

    name: str
    files: list[Path]
    held_out: str  # in words: which split rule picked the files


def _ordered(files: list[Path], root: Path) -> list[Path]:
    """One file per song (the lowest version), in a reproducible pseudo-random order."""
    songs: dict[str, Path] = {}
    for path in sorted(files):
        song = str(path.parent / _VERSION.sub("", path.stem))
        songs.setdefault(song, path)

    def key(path: Path) -> str:
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        return hashlib.sha256(str(rel).encode()).hexdigest()

    return sorted(songs.values(), key=key)


def _midi_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)


def from_prepared(directory: Path, split: str) -> list[GroupSource]:
    """Every group of a prepared dataset's manifest, with the files of ``split``."""
    from musegen.data.dataset import MANIFEST

    manifest = json.loads((directory / MANIFEST).read_text())
    root = Path(manifest["source"])
    groups: dict[str, list[Path]] = {}
    for entry in manifest["files"]:
        if entry.get("split") == split and entry.get("group"):
            groups.setdefault(entry["group"], []).append(root / entry["path"])
    if not groups:
        raise MusegenError(
            f"{directory}: no file of split {split!r} has a group in the manifest (prepare it "
            "from corpus builder output, or pass --group NAME=FOLDER)"
        )
    rule = f"{directory} manifest, split={split}"
    return [
        GroupSource(name, _ordered(files, root), rule) for name, files in sorted(groups.items())
    ]


def _builder_split(folder: Path, split: str) -> tuple[list[Path], str] | None:
    from musegen.data.sources import file_labels, find_corpora

    corpora = find_corpora(folder)
    if not corpora:
        return None
    labels = file_labels(corpora)
    files = [folder / rel for rel, label in labels.items() if label.get("split") == split]
    return files, f"corpus.json split={split}"


def _groove_split(folder: Path, split: str) -> tuple[list[Path], str] | None:
    if not (folder / "info.csv").is_file():
        return None
    from musegen.data.groove import SPLIT_NAMES

    with open(folder / "info.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    files = [
        folder / r["midi_filename"]
        for r in rows
        if SPLIT_NAMES.get(r.get("split", "").strip()) == split
    ]
    return files, f"Groove info.csv split={split}"


def _pop909_split(folder: Path, split: str) -> tuple[list[Path], str] | None:
    from musegen.data import pop909

    root = pop909.songs_root(folder)
    if not root.is_dir() or not any(p.name.isdigit() for p in root.iterdir() if p.is_dir()):
        return None
    songs = [d for d in pop909.song_dirs(folder) if pop909.song_split(d.name) == split]
    files = [d / f"{d.name}.mid" for d in songs if (d / f"{d.name}.mid").is_file()]
    return files, f"POP909 song-id hash split={split}"


def _nottingham_split(folder: Path, split: str) -> tuple[list[Path], str] | None:
    from musegen.data import nottingham
    from musegen.data.sources import hash_split

    midi = folder / nottingham.MIDI_SUBDIR
    if not midi.is_dir():
        return None
    files = [p for p in _midi_files(midi) if hash_split(f"nottingham:{p.name}") == split]
    return files, f"Nottingham file-name hash split={split}"


def _music21_split(folder: Path, split: str) -> tuple[list[Path], str] | None:
    if not (folder / "music21_corpus.json").is_file():
        return None
    from musegen.data.prepare import PrepareOptions, split_for

    options = PrepareOptions()
    files = []
    for path in _midi_files(folder):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if split_for(sha, options.val_fraction, options.test_fraction) == split:
            files.append(path)
    return files, f"musegen prepare content-hash split={split} (default fractions)"


def from_folder(name: str, folder: Path, split: str) -> GroupSource:
    """One group's candidate files from ``folder`` (see the module docstring)."""
    if not folder.is_dir():
        raise MusegenError(f"--group {name}={folder}: not a folder")
    if split != "all":
        for rule in (_builder_split, _groove_split, _pop909_split, _nottingham_split):
            found = rule(folder, split)
            if found is not None:
                return GroupSource(name, _ordered(found[0], folder), found[1])
        found = _music21_split(folder, split)
        if found is not None:
            return GroupSource(name, _ordered(found[0], folder), found[1])
    files = _midi_files(folder)
    if not files:
        raise MusegenError(f"--group {name}={folder}: no .mid/.midi files")
    return GroupSource(name, _ordered(files, folder), "every file (no split of its own)")


# --- one evaluation window of a piece ---------------------------------------------------------
@dataclass
class Piece:
    """``prompt_bars + new_bars`` bars of a real piece, in its own ticks, split three ways."""

    name: str
    bar: int  # ticks per bar
    prompt: symusic.Score  # the first prompt_bars bars
    tail: symusic.Score  # the prompt's last ``tail_bars`` bars, moved to tick 0 (copy baseline)
    real: symusic.Score  # the real next new_bars bars, moved to tick 0
    start: int = 0  # the tick of the file (as cut: re-barred or not) where the prompt starts


def _bar_of_every_note(score: symusic.Score, bar: int) -> set[int]:
    return {n.time // bar for t in score.tracks for n in t.notes}


def make_piece(
    path: Path,
    prompt_bars: int,
    new_bars: int,
    tail_bars: int = 4,
    tries: int = 4,
    find_bar_lines: bool = False,
) -> Piece | None:
    """The first window of ``path`` (leading empty bars skipped) whose prompt's last bar and
    real next bars have notes, in one time signature; None when the piece has none.

    ``find_bar_lines``: when :func:`musegen.bar_lines.find` finds the file's bar lines wrong
    from the notes of its first ``prompt_bars`` × 4 beats (what a user would upload), the
    piece is cut on the bars found instead, as the pipeline continues such an upload."""
    try:
        score = load_tick_score(path)
    except MusegenError:
        return None
    if not score.note_num():
        return None
    if find_bar_lines:
        start = min(n.time for t in score.tracks for n in t.notes)
        upload = score.clip(0, start + prompt_bars * 4 * score.tpq, clip_end=False)
        found = bar_lines.find(upload)
        if found is not None:
            score = bar_lines.rebar(score, found)
    if len(score.time_signatures) == 1 and score.time_signatures[0].numerator == 1:
        # POP909 files declare 1/4 throughout while their beat annotations count 4/4 bars: a
        # one-beat "bar" would make an 8-bar prompt 8 beats long, so read them as 4/4.
        score.time_signatures[0] = symusic.TimeSignature(0, 4, 4)
    bar = metrics.bar_length(score)
    meters = [(ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures]
    used = _bar_of_every_note(score, bar)
    first = min(used)
    for start in range(first, first + tries):
        prompt_end = start + prompt_bars
        if prompt_end - 1 not in used or not any(
            b in used for b in range(prompt_end, prompt_end + new_bars)
        ):
            continue
        if max(used) < prompt_end + new_bars - 1:
            return None  # the piece ends inside the real next bars
        if len({m[1:] for m in meters if m[0] < (prompt_end + new_bars) * bar}) > 1:
            return None  # a meter change before the window's end would make bars unequal
        window = score.clip(start * bar, (prompt_end + new_bars) * bar, clip_end=False)
        window = window.shift_time(-start * bar)
        cut = prompt_bars * bar
        return Piece(
            name=str(path),
            bar=bar,
            prompt=window.clip(0, cut, clip_end=False),
            tail=window.clip(cut - tail_bars * bar, cut, clip_end=False).shift_time(
                -(cut - tail_bars * bar)
            ),
            real=window.clip(cut, cut + new_bars * bar, clip_end=False).shift_time(-cut),
            start=start * bar,
        )
    return None


def pieces(
    source: GroupSource, count: int, prompt_bars: int, new_bars: int, find_bar_lines: bool = False
) -> list[Piece]:
    """The first ``count`` usable pieces of ``source``, in its order."""
    out = []
    for path in source.files:
        if len(out) >= count:
            break
        piece = make_piece(path, prompt_bars, new_bars, find_bar_lines=find_bar_lines)
        if piece is not None:
            out.append(piece)
    return out
