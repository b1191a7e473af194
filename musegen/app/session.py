"""The app's per-session plumbing, kept apart from the Blocks layout so it can be tested alone.

Three jobs: reading a prompt the user uploaded (or picked) into bytes with clear errors, a
:class:`Workspace` that gives every request its own temporary folder and removes it again, and
:class:`SessionState`, the small value Gradio keeps per browser tab (current prompt, undo
history, last results). Only bytes live in the state, never server paths, so nothing a user
names is ever used as a path outside Gradio's own upload handling.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pretty_midi
import symusic

from musegen.errors import MidiError
from musegen.tokenizer import count_notes, load_score

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
EXAMPLES_DIR = Path(__file__).parents[1] / "examples"
GM_INSTRUMENTS: tuple[str, ...] = tuple(pretty_midi.INSTRUMENT_MAP)
MAX_UNDO = 20

# Shown in the example picker; files not listed here still appear, titled from their name.
EXAMPLE_TITLES = {
    "bach_chorale": "Bach chorale, BWV 66.6 (4 voices, organ)",
    "folk_reel": "Folk reel, 7th Regiment Reel (fiddle)",
    "joplin_rag": "Joplin, Maple Leaf Rag (piano)",
    "mozart_quartet": "Mozart, 'Hunt' quartet K. 458 (strings)",
}


def list_examples(directory: Path = EXAMPLES_DIR) -> dict[str, Path]:
    """Bundled example prompts as ``{title: path}``, sorted by title."""
    found = {}
    for path in sorted(directory.glob("*.mid")):
        found[EXAMPLE_TITLES.get(path.stem, path.stem.replace("_", " ").capitalize())] = path
    return dict(sorted(found.items()))


def read_upload(path: str | Path | None, limit: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of a file Gradio received, checked for size and MIDI content.

    ``path`` must come from Gradio's upload handling (it lives in Gradio's cache); the user's
    own file name is only used in messages.
    """
    if not path:
        raise MidiError("no file was uploaded: choose a .mid or .midi file")
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise MidiError(
            f"{path.name} is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB: "
            "upload a shorter MIDI file"
        )
    data = path.read_bytes()
    check_prompt(data, path.name)
    return data


def check_prompt(data: bytes, name: str = "prompt") -> symusic.Score:
    """Parse MIDI bytes and insist on at least one note, with the file name in the message."""
    try:
        score = load_score(data)
    except MidiError as exc:
        raise MidiError(str(exc).replace("<bytes>", name)) from None
    if count_notes(score) == 0:
        raise MidiError(f"{name}: the MIDI file has no notes; upload one with music in it")
    return score


def describe_score(score: symusic.Score) -> str:
    """One line about a prompt: tracks, notes, length, instruments."""
    tracks = [t for t in score.tracks if len(t.notes)]
    seconds = score.to("second").end() if tracks else 0.0
    names = []
    for track in tracks:
        name = "Drums" if track.is_drum else GM_INSTRUMENTS[track.program % 128]
        if name not in names:
            names.append(name)
    more = f" and {len(names) - 6} more" if len(names) > 6 else ""
    return (
        f"{len(tracks)} track{'s' if len(tracks) != 1 else ''}, {count_notes(score)} notes, "
        f"{seconds:.1f} s — {', '.join(names[:6])}{more}"
    )


def programs_for(names: list[str] | None) -> list[int] | None:
    """GM program numbers for instrument names from the picker (``None`` = no restriction)."""
    if not names:
        return None
    index = {name: i for i, name in enumerate(GM_INSTRUMENTS)}
    return [index[n] for n in names if n in index] or None


@dataclass
class SessionState:
    """What one browser tab remembers between clicks. Small and deep-copyable (bytes only)."""

    prompt: bytes | None = None
    prompt_name: str = ""
    history: list[tuple[bytes | None, str]] = field(default_factory=list)
    results: list[bytes] = field(default_factory=list)

    def set_prompt(self, data: bytes | None, name: str) -> None:
        """Make ``data`` the prompt, remembering the previous one for :meth:`undo`."""
        self.history.append((self.prompt, self.prompt_name))
        del self.history[:-MAX_UNDO]
        self.prompt, self.prompt_name = data, name

    def undo(self) -> bool:
        """Go back to the previous prompt; False when there is nothing to undo."""
        if not self.history:
            return False
        self.prompt, self.prompt_name = self.history.pop()
        return True

    def prompt_score(self) -> symusic.Score | None:
        return load_score(self.prompt) if self.prompt else None


def safe_stem(text: str, default: str = "musegen") -> str:
    """A file-name-safe stem (letters, digits, - and _), for download names only."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(text).stem).strip("_")[:40]
    return stem or default


class Workspace:
    """Per-request output folders under one private temporary root.

    Every request gets ``root/<session key>/<uuid>``; starting a new request removes the
    session's older folders (Gradio has already copied what it serves into its own cache),
    a session ending removes its folder, and folders older than ``max_age_s`` are swept.
    """

    def __init__(self, root: Path | None = None, max_age_s: float = 3600.0) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="musegen-app-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self._lock = threading.Lock()

    def _session_dir(self, key: str) -> Path:
        return self.root / (re.sub(r"[^A-Za-z0-9]", "", key)[:32] or "anon")

    def new_request_dir(self, key: str) -> Path:
        """A fresh empty folder for one request of session ``key``."""
        self.sweep()
        session = self._session_dir(key)
        with self._lock:
            if session.is_dir():
                for old in session.iterdir():
                    shutil.rmtree(old, ignore_errors=True)
            path = session / uuid.uuid4().hex[:12]
            path.mkdir(parents=True)
        return path

    def drop_session(self, key: str) -> None:
        """Remove everything session ``key`` wrote."""
        shutil.rmtree(self._session_dir(key), ignore_errors=True)

    def sweep(self) -> int:
        """Remove request folders older than ``max_age_s``; returns how many went."""
        cutoff = time.time() - self.max_age_s
        removed = 0
        with self._lock:
            for session in list(self.root.glob("*")):
                for request in list(session.glob("*")):
                    if request.stat().st_mtime < cutoff:
                        shutil.rmtree(request, ignore_errors=True)
                        removed += 1
                if session.is_dir() and not any(session.iterdir()):
                    session.rmdir()
        return removed

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = [
    "GM_INSTRUMENTS",
    "MAX_UPLOAD_BYTES",
    "SessionState",
    "Workspace",
    "check_prompt",
    "describe_score",
    "list_examples",
    "programs_for",
    "read_upload",
    "safe_stem",
]
