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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pretty_midi
import symusic

from musegen import bar_lines
from musegen.errors import MidiError
from musegen.score_check import PROMPT_LIMITS, ScoreLimits, load_checked
from musegen.tokenizer import count_notes, load_score

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
EXAMPLES_DIR = Path(__file__).parents[1] / "examples"
GM_INSTRUMENTS: tuple[str, ...] = tuple(pretty_midi.INSTRUMENT_MAP)
MAX_UNDO = 20
# A finished request's folder stays this long, so Gradio can copy what it returns even when the
# same session has started another request meanwhile.
KEEP_FINISHED_S = 120.0
# Any session's finished folder goes this long after its request, whoever starts the next one.
IDLE_FINISHED_S = 600.0

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


def read_upload(
    path: str | Path | None, limit: int = MAX_UPLOAD_BYTES, limits: ScoreLimits | None = None
) -> bytes:
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
    check_prompt(data, path.name, limits)
    return data


def check_prompt(
    data: bytes,
    name: str = "prompt",
    limits: ScoreLimits | None = None,
    notes: list[str] | None = None,
) -> symusic.Score:
    """The prompt as generation will see it (:func:`musegen.score_check.check_score` under
    ``limits``, default :data:`~musegen.score_check.PROMPT_LIMITS`: silence trimmed, tempi
    normalised), or a one-line MidiError that names the file. What was repaired in a damaged
    file is appended to ``notes``, and so is a bar-line fault that continuing will work
    around (:mod:`musegen.bar_lines`), so the page can say so as soon as the file is in."""
    score = load_checked(data, limits or PROMPT_LIMITS, name, notes=notes)
    if notes is None:
        return score
    found, played = bar_lines.examine(score)
    if found is not None:
        notes.append(
            f'its bar lines do not follow its notes ({found.reason}): with "Find the bar '
            f'lines from the notes" on, it is continued on {found.beats_per_bar}/4 bars found '
            "from them"
        )
    elif played:
        notes.append(bar_lines.PLAYED)
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

    Every request gets its own ``root/<session key>/<uuid>`` (:meth:`request`), so concurrent
    calls of one session (one gradio_client ``Client`` sending four at once) never share,
    overwrite or delete each other's files. A folder is *in flight* from :meth:`new_request_dir`
    until :meth:`finish`; nothing removes an in-flight folder. Starting a request removes the
    session's folders that finished more than ``keep_finished_s`` ago (by then Gradio has
    copied what it serves into its own cache), a session ending removes its finished folders,
    and folders older than ``max_age_s`` are swept. An API client never says it is done, so
    :meth:`start_janitor` also removes every folder finished ``idle_finished_s`` ago on a timer,
    not only when the next request comes.
    """

    def __init__(
        self,
        root: Path | None = None,
        max_age_s: float = 3600.0,
        keep_finished_s: float = KEEP_FINISHED_S,
        idle_finished_s: float = IDLE_FINISHED_S,
    ) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="musegen-app-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self.keep_finished_s = keep_finished_s
        self.idle_finished_s = idle_finished_s
        self._lock = threading.Lock()
        self._in_flight: set[Path] = set()
        self._finished: dict[Path, float] = {}  # folder → when its request finished (monotonic)
        self._janitor_stop: threading.Event | None = None

    def _session_dir(self, key: str) -> Path:
        return self.root / (re.sub(r"[^A-Za-z0-9]", "", key)[:32] or "anon")

    @contextmanager
    def request(self, key: str) -> Iterator[Path]:
        """A fresh folder for one request of session ``key``, in flight while the block runs."""
        path = self.new_request_dir(key)
        try:
            yield path
        finally:
            self.finish(path)

    def new_request_dir(self, key: str) -> Path:
        """A fresh empty folder for one request of session ``key``, in flight until
        :meth:`finish`; the session's folders that finished long enough ago are removed."""
        session = self._session_dir(key)
        self.expire(session)
        with self._lock:
            path = session / uuid.uuid4().hex
            path.mkdir(parents=True)
            self._in_flight.add(path)
        return path

    def expire(self, session: Path | None = None) -> None:
        """Remove finished folders: ``session``'s after ``keep_finished_s``, every other
        session's after ``idle_finished_s`` (an API client never closes a tab to say it is
        done), and anything older than ``max_age_s``."""
        now = time.monotonic()
        mine = now - self.keep_finished_s
        others = now - max(self.keep_finished_s, self.idle_finished_s)
        with self._lock:
            for old in list(self._finished):
                if self._finished[old] <= (mine if old.parent == session else others):
                    shutil.rmtree(old, ignore_errors=True)
                    del self._finished[old]
        self.sweep()  # also removes the session folders this emptied

    def start_janitor(self, every_s: float = 30.0) -> None:
        """Run :meth:`expire` every ``every_s`` seconds in a daemon thread (once per
        workspace), so an idle server gets back to its starting size."""
        if self._janitor_stop is not None:
            return
        stop = self._janitor_stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every_s):
                self.expire()

        threading.Thread(target=loop, name="musegen-workspace-janitor", daemon=True).start()

    def finish(self, path: Path) -> None:
        """The request writing to ``path`` is done (its folder may go once it is old enough)."""
        with self._lock:
            if path in self._in_flight:
                self._in_flight.discard(path)
                self._finished[path] = time.monotonic()

    def drop_session(self, key: str) -> None:
        """Remove what session ``key`` wrote, except folders of requests still in flight."""
        session = self._session_dir(key)
        with self._lock:
            if not any(p.parent == session for p in self._in_flight):
                shutil.rmtree(session, ignore_errors=True)
                self._finished = {p: t for p, t in self._finished.items() if p.parent != session}
                return
            for old in list(session.glob("*")):
                if old not in self._in_flight:
                    shutil.rmtree(old, ignore_errors=True)
                    self._finished.pop(old, None)

    def sweep(self) -> int:
        """Remove request folders older than ``max_age_s`` (never one in flight); returns how
        many went."""
        cutoff = time.time() - self.max_age_s
        removed = 0
        with self._lock:
            for session in list(self.root.glob("*")):
                for request in list(session.glob("*")):
                    if request in self._in_flight:
                        continue
                    try:
                        old = request.stat().st_mtime < cutoff
                    except FileNotFoundError:
                        continue
                    if old:
                        shutil.rmtree(request, ignore_errors=True)
                        self._finished.pop(request, None)
                        removed += 1
                if session.is_dir() and not any(session.iterdir()):
                    session.rmdir()
        return removed

    def close(self) -> None:
        if self._janitor_stop is not None:
            self._janitor_stop.set()
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
