"""Write the corpus that ships inside the music21 wheel as MIDI files: an offline training set.

music21 carries thousands of encoded pieces (Bach chorales, Palestrina masses, string quartets,
folk-tune collections) as MusicXML, Humdrum and ABC. Converting them once gives musegen real,
multi-part music to train and test on without any download. Output names are derived from the
corpus paths, so a rerun writes exactly the same files.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from musegen.data.sources import BuildReport as SourcesReport
from musegen.data.sources import SourceInfo, hash_split, write_corpus_json
from musegen.errors import MusegenError, first_line

# Encodings music21 parses into notes; ``.rntxt`` files are harmonic analyses, not scores.
SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc")
# Collections left out unless named: test fixtures and textbook exercises, not repertoire.
EXCLUDED_BY_DEFAULT = ("demos", "theoryExercises")
MANIFEST_NAME = "music21_corpus.json"
PIECE_TIMEOUT_S = 600  # a whole source file (an ABC book holds hundreds of tunes)


@dataclass
class Task:
    """One source file of the corpus and how many of its pieces to write (None = all)."""

    collection: str
    relpath: str  # relative to the corpus root, posix
    max_pieces: int | None = None


@dataclass
class BuildReport:
    """What a build wrote: per-piece note counts and per-piece reasons for skipping."""

    written: dict[str, int] = field(default_factory=dict)  # output relpath -> notes
    skipped: dict[str, str] = field(default_factory=dict)  # source piece -> reason

    @property
    def notes(self) -> int:
        return sum(self.written.values())


def _music21():
    try:
        import music21
    except ImportError:
        raise MusegenError(
            "music21 is not installed: run `pip install musegen[corpus]` (or `pip install music21`)"
        ) from None
    return music21


def corpus_root() -> Path:
    """The folder of music21's bundled corpus."""
    return Path(_music21().corpus.__file__).parent


def _score_relpaths() -> list[str]:
    """Score files of the bundled corpus, as posix paths relative to its root."""
    root = corpus_root()
    return [
        Path(p).relative_to(root).as_posix()
        for p in _music21().corpus.getCorePaths()
        if Path(p).suffix.lower() in SCORE_SUFFIXES
    ]


def available_collections() -> list[str]:
    """Every collection (top-level folder) of the bundled corpus holding score files."""
    return sorted({rel.split("/")[0] for rel in _score_relpaths()}, key=str.lower)


def _abc_tune_count(path: Path) -> int:
    """Tunes in an ABC file (one per ``X:`` reference line); other formats hold one piece."""
    if path.suffix.lower() != ".abc":
        return 1
    text = path.read_text(encoding="latin-1")
    return max(1, len(re.findall(r"^X:", text, flags=re.MULTILINE)))


def plan_tasks(collections: Iterable[str] | None = None, limit: int | None = None) -> list[Task]:
    """Source files to convert, in a fixed order; ``limit`` caps pieces per collection."""
    root = corpus_root()
    known = available_collections()
    if collections is None:
        chosen = [c for c in known if c not in EXCLUDED_BY_DEFAULT]
    else:
        chosen = list(dict.fromkeys(collections))
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise MusegenError(
                f"unknown music21 collection(s) {', '.join(unknown)}: "
                f"choose from {', '.join(known)}"
            )
    if limit is not None and limit < 1:
        raise MusegenError("--limit must be at least 1")
    paths = _one_encoding_per_piece(_score_relpaths())
    tasks: list[Task] = []
    for collection in chosen:
        budget = limit
        for rel in (p for p in paths if p.split("/")[0] == collection):
            if budget is not None and budget <= 0:
                break
            task = Task(collection, rel, budget)
            if budget is not None:
                budget -= _abc_tune_count(root / rel)
            tasks.append(task)
    return tasks


def _one_encoding_per_piece(relpaths: Iterable[str]) -> list[str]:
    """Sorted paths, keeping one file where a piece comes in two encodings (MusicXML first).

    A few pieces (e.g. Beethoven's op. 18 no. 1) ship as both MusicXML and Humdrum; both would
    map to the same output name and be near-duplicates that could leak across splits.
    """

    def rank(rel: str) -> int:
        return SCORE_SUFFIXES.index("." + rel.rsplit(".", 1)[1].lower())

    best: dict[str, str] = {}
    for rel in sorted(relpaths, key=rank):  # stable: on a tie the first listed is kept
        best.setdefault(rel.rsplit(".", 1)[0], rel)
    return sorted(best.values())


def _output_name(relpath: str, index: int | None) -> str:
    """``bach/bwv66.6.mxl`` → ``bach/bwv66.6.mid``; the 3rd tune of an ABC book → ``…_0003.mid``."""
    stem = relpath.rsplit(".", 1)[0]
    return f"{stem}.mid" if index is None else f"{stem}_{index:04d}.mid"


def _on_alarm(signum, frame):  # pragma: no cover - only fires on a pathological file
    raise TimeoutError(f"took longer than {PIECE_TIMEOUT_S} s")


def convert_file(task: Task, out_dir: str) -> tuple[dict[str, int], dict[str, str]]:
    """Parse one corpus file and write each of its pieces as MIDI (runs in a worker process)."""
    import symusic
    from music21 import converter
    from music21.midi import translate

    written: dict[str, int] = {}
    skipped: dict[str, str] = {}
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(PIECE_TIMEOUT_S)
    try:
        parsed = converter.parse(corpus_root() / task.relpath, forceSource=True)
        is_opus = type(parsed).__name__ == "Opus"
        scores = list(parsed.scores) if is_opus else [parsed]
        if task.max_pieces is not None:
            scores = scores[: task.max_pieces]
        for i, score in enumerate(scores, start=1):
            name = _output_name(task.relpath, i if is_opus else None)
            try:
                data = _midi_bytes(score, translate)
                notes = sum(len(t.notes) for t in symusic.Score.from_midi(data).tracks)
                if notes == 0:
                    raise ValueError("no notes")
                target = Path(out_dir) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + f".tmp{os.getpid()}")
                tmp.write_bytes(data)
                tmp.replace(target)
                written[name] = notes
            except Exception as exc:
                skipped[name] = _one_line(exc)
    except Exception as exc:
        skipped[task.relpath] = _one_line(exc)
    finally:
        signal.alarm(0)
    return written, skipped


def _midi_bytes(score, translate) -> bytes:
    """MIDI of a score; if its repeat signs are malformed (music21 then refuses to expand them,
    e.g. a Chopin mazurka), the piece is written once through without its repeats."""
    from music21 import bar, repeat
    from music21.repeat import ExpanderException

    try:
        return translate.streamToMidiFile(score).writestr()
    except ExpanderException:
        for measure in score.recurse().getElementsByClass("Measure"):
            if isinstance(measure.leftBarline, bar.Repeat):
                measure.leftBarline = None
            if isinstance(measure.rightBarline, bar.Repeat):
                measure.rightBarline = None
        for mark in list(score.recurse().getElementsByClass(repeat.RepeatExpression)):
            mark.activeSite.remove(mark)
        return translate.streamToMidiFile(score).writestr()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc, 160)}".rstrip(": ")


def build_corpus(
    out_dir: str | Path,
    collections: Iterable[str] | None = None,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> BuildReport:
    """Convert the chosen collections into ``out_dir``, in parallel; write a JSON summary."""
    from tqdm import tqdm

    if workers is not None and workers < 1:
        raise MusegenError("--workers must be at least 1")
    _music21()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MusegenError(f"{out} exists and is not a folder")
    tasks = plan_tasks(collections, limit)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    root = corpus_root()
    # Largest files first, so a long quartet does not start last and hold up the end.
    order = sorted(tasks, key=lambda t: -(root / t.relpath).stat().st_size)
    report = BuildReport()
    bar = tqdm(total=len(tasks), unit="file", desc="music21 corpus", disable=not progress)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(convert_file, t, str(out)): t for t in order}
        for future in as_completed(futures):
            try:
                written, skipped = future.result()
            except Exception as exc:  # a worker died: record the file, keep going
                written, skipped = {}, {futures[future].relpath: _one_line(exc)}
            report.written.update(written)
            report.skipped.update(skipped)
            bar.update(1)
            bar.set_postfix(pieces=len(report.written), skipped=len(report.skipped))
    bar.close()
    report.written = dict(sorted(report.written.items()))
    report.skipped = dict(sorted(report.skipped.items()))
    _write_summary(out, report, collections, limit)
    return report


def _write_summary(out: Path, report: BuildReport, collections, limit) -> None:
    """``music21_corpus.json``: provenance (music21 version, choices) and every piece's fate."""
    per_collection: dict[str, dict[str, int]] = {}
    for name, notes in report.written.items():
        entry = per_collection.setdefault(name.split("/")[0], {"files": 0, "notes": 0})
        entry["files"] += 1
        entry["notes"] += notes
    summary = {
        "music21_version": _music21().__version__,
        "collections": sorted(per_collection),
        "requested": {"collections": list(collections) if collections else None, "limit": limit},
        "files": len(report.written),
        "notes": report.notes,
        "per_collection": dict(sorted(per_collection.items())),
        "skipped": report.skipped,
        "written": report.written,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(summary, indent=1) + "\n")
    _write_corpus_json(out, report)


# Terms that differ from the corpus's general "public-domain music, encodings distributed by
# permission" (datasets/README.md quotes music21's own licence files).
COLLECTION_TERMS = {
    "essenFolksong": "non-commercial use only (permission of E. Dahlig-Turek)",
    "palestrina": "Humdrum licensing agreement (© 2000 John Miller, derivative formats reserved)",
    "josquin": "GPL (ABC encodings © 1999 Laura E. Conrad)",
}
FOLK_COLLECTIONS = {"essenFolksong", "miscFolk", "airdsAirs", "oneills1850", "ryansMammoth"}
MUSIC21_SOURCE = SourceInfo(
    name="music21 corpus",
    licence="public-domain music; encodings distributed with music21 (BSD) by permission; "
    "see each file's 'terms'",
    attribution="the music21 corpus (Cuthbert and Ariza, MIT), as shipped in the music21 wheel",
    url="https://pypi.org/project/music21/",
)


def _write_corpus_json(out: Path, report: BuildReport) -> None:
    """``corpus.json`` in the format of the other builders, so ``prepare`` records the source,
    each piece's evaluation group (classical or folk), split and licence terms."""
    sources = SourcesReport(MUSIC21_SOURCE, out)
    for name in report.written:
        collection = name.split("/")[0]
        sources.written[name] = {
            "collection": collection,
            "terms": COLLECTION_TERMS.get(collection, "public domain / by permission"),
            "group": "folk" if collection in FOLK_COLLECTIONS else "classical",
            "split": hash_split(name),
        }
    sources.skipped.update(report.skipped)
    write_corpus_json(sources, "MusicXML/Humdrum/ABC pieces of the music21 corpus, one MIDI each")
