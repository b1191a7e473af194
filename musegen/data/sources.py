"""What every corpus builder shares: source info, ``corpus.json``, the build report.

A builder reads a dataset the user downloaded (Groove, POP909, Nottingham) and writes MIDI files
plus one ``corpus.json`` into OUT_DIR. That file carries the dataset's licence and attribution
(so ``musegen prepare`` can put them in the prepared manifest and a model card can cite them)
and, per written file, the dataset's own metadata, its ``split`` and its evaluation ``group``.
Builds are deterministic: files are written in a fixed order from fixed inputs, and the JSON
holds nothing that depends on the machine or the clock, so a rebuild gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import symusic

from musegen.errors import MidiError, MusegenError, first_line
from musegen.files import write_atomic
from musegen.tokenizer import load_score, score_to_midi_bytes

CORPUS_FILE = "corpus.json"
FORMAT = "musegen-corpus"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SourceInfo:
    """Where a corpus comes from and under which terms: cited in manifests and model cards."""

    name: str
    licence: str
    attribution: str
    url: str  # where a user downloads the dataset

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class BuildReport:
    """What a build wrote (relative path → metadata) and skipped (input → one-line reason)."""

    source: SourceInfo
    out_dir: Path
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A human summary: one line per skipped input, then the totals."""
        lines = [f"skipped {name}: {reason}" for name, reason in self.skipped.items()]
        splits = {s: sum(m["split"] == s for m in self.written.values()) for s in SPLITS}
        per_split = ", ".join(f"{s} {n}" for s, n in splits.items())
        lines.append(
            f"{self.source.name}: wrote {len(self.written)} MIDI files to {self.out_dir} "
            f"({per_split}); {len(self.skipped)} skipped"
        )
        return lines


def require_dir(path: str | Path, source: SourceInfo, expected: str) -> Path:
    """``path`` as a folder holding ``expected``, or one clear line on what to download."""
    src = Path(path)
    if not src.is_dir() or not (src / expected).exists():
        where = "does not exist" if not src.exists() else f"has no {expected}"
        raise MusegenError(
            f"{src} {where}: expected the {source.name} folder (with {expected}); "
            f"download it from {source.url}"
        )
    return src


def hash_split(key: str, val_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """A split fixed by a name (song id, file name): stable across reruns and machines, and the
    same for everything derived from one song, so nothing of a test song reaches training."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2.0**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def stable_index(key: str, n: int) -> int:
    """A deterministic choice among ``n`` options from a name (Python's hash() is salted)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % n


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def load_midi(path: Path) -> symusic.Score:
    """Parse a source MIDI file; the error names no absolute path, so reports stay portable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MidiError(f"cannot be read ({exc.strerror})") from None
    try:
        return load_score(data)
    except MidiError as exc:
        raise MidiError(str(exc).removeprefix("<bytes>: ")) from None


def write_score(score: symusic.Score, out_dir: Path, rel: str) -> None:
    atomic_write_bytes(out_dir / rel, score_to_midi_bytes(score))


def prepare_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Create OUT_DIR, refusing a non-empty one unless ``overwrite``; with it, remove the files
    a previous build listed (and only those), so a smaller rebuild leaves no stale pieces."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MusegenError(f"OUT_DIR {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MusegenError(
                f"OUT_DIR {out} is not empty; choose another folder or pass --overwrite"
            )
        old = read_corpus(out / CORPUS_FILE) if (out / CORPUS_FILE).exists() else None
        for rel in (old or {}).get("files", {}):
            (out / rel).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_corpus_json(report: BuildReport, description: str, settings: dict | None = None) -> Path:
    """``corpus.json``: source info, how it was built, every file's metadata, every skip."""
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": report.source.as_dict(),
        "description": description,
        "settings": settings or {},
        "files": dict(sorted(report.written.items())),
        "skipped": dict(sorted(report.skipped.items())),
    }
    path = report.out_dir / CORPUS_FILE
    atomic_write_bytes(path, _dumps(data).encode())
    return path


def _dumps(data: dict) -> str:
    """Indented JSON with one line per file entry: POP909's annotations would otherwise take a
    line per beat time and grow the file tenfold."""
    items = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data["files"].items()]
    head = json.dumps({k: v for k, v in data.items() if k not in ("files", "skipped")}, indent=1)
    files = "{\n" + ",\n".join(items) + "\n }" if items else "{}"
    skipped = json.dumps(data["skipped"], indent=2).replace("\n}", "\n }")
    return f'{head[:-2]},\n "files": {files},\n "skipped": {skipped}\n}}\n'


def read_corpus(path: Path) -> dict | None:
    """A ``corpus.json`` written by a builder, or None when it is unreadable or not ours."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def find_corpora(src: Path) -> dict[str, dict]:
    """``corpus.json`` files at ``src`` and in its immediate subfolders (a mix folder holds one
    corpus per subfolder), keyed by the subfolder's posix prefix ("" for the root)."""
    found = {}
    candidates = [src, *sorted(p for p in src.iterdir() if p.is_dir())] if src.is_dir() else []
    for folder in candidates:
        data = read_corpus(folder / CORPUS_FILE)
        if data is not None:
            found["" if folder == src else folder.name] = data
    return found


def file_labels(corpora: dict[str, dict]) -> dict[str, dict]:
    """Per file (path relative to the mix folder): its corpus ``split`` and ``group``."""
    labels = {}
    for prefix, data in corpora.items():
        for rel, meta in data.get("files", {}).items():
            path = f"{prefix}/{rel}" if prefix else rel
            labels[path] = {"split": meta.get("split"), "group": meta.get("group")}
    return labels


def run_items(
    items: Iterable[tuple[str, Any]],
    convert: Callable[[Any], tuple[str, dict] | None],
    report: BuildReport,
    progress: bool,
    total: int | None = None,
) -> None:
    """Convert each input; an input that raises is skipped with a one-line reason, never fatal
    (one corrupt file in a thousand must not cost the other 999). ``convert`` writes the file
    and returns (relative path, metadata); None skips silently."""
    from tqdm import tqdm

    bar = tqdm(items, total=total, unit="file", desc=report.source.name, disable=not progress)
    for name, item in bar:
        try:
            result = convert(item)
        except Exception as exc:
            kind = "" if isinstance(exc, MusegenError) else f"{type(exc).__name__}: "
            report.skipped[name] = f"{kind}{first_line(exc)}".rstrip(": ")
            continue
        if result is not None:
            rel, meta = result
            report.written[rel] = meta
    bar.close()


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise MusegenError("--limit must be at least 1")
