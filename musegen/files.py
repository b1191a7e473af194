"""Writing files so a crash never leaves half of one, and JSON-lines logs that survive a kill.

Every write goes to a temporary name in the same folder (a rename only replaces atomically
within one filesystem), is flushed to disk with ``fsync``, and is then renamed over the target
with :func:`os.replace`: a reader sees the old file or the new one, never a mix. Directories
(checkpoints, prepared datasets) are written whole beside their target and swapped in by
:func:`replace_dir`.

A JSON-lines file gets one record appended per line; a kill can cut the last line short, so
:func:`read_jsonl` skips a line that does not parse and :func:`append_jsonl` starts a new line
first when the file does not end with one (the next record is then not glued to the torn one).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` that keeps its suffix (writers choose formats by it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; it replaces ``path`` when the block ends.

    For writers that want a file name (matplotlib's ``savefig``, soundfile). When the block
    raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp, open(tmp, "xb") as fh:
        fh.write(payload)
    return path


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (ending in a newline) to ``path`` atomically."""
    return write_atomic(path, json.dumps(data, indent=indent) + "\n")


def replace_dir(tmp: str | Path, directory: str | Path, old: str | Path | None = None) -> Path:
    """Swap the finished directory ``tmp`` in as ``directory``; the old one is deleted after.

    The files of ``tmp`` are flushed to disk first. An existing ``directory`` is renamed to
    ``old`` (default: a hidden name beside it) before ``tmp`` takes its place, and put back if
    that rename fails, so at every moment a complete directory exists under one of the two names.
    """
    tmp, directory = Path(tmp), Path(directory)
    old = (
        Path(old)
        if old is not None
        else directory.with_name(f".{directory.name}.old-{os.getpid()}")
    )
    for path in sorted(tmp.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _fsync_file(path)
    moved = directory.exists()
    if moved:
        os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        if moved:
            os.replace(old, directory)
        raise
    _fsync_dir(directory.parent)
    if moved:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line and flush it to disk."""
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        torn = False
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + json.dumps(record).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file (``[]`` when it does not exist).

    A line that does not parse is one a kill cut short while it was written: it is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Replace a JSON-lines file with ``records``, atomically."""
    return write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


__all__ = [
    "append_jsonl",
    "atomic_path",
    "read_jsonl",
    "replace_dir",
    "write_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
]
