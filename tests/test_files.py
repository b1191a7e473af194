"""Atomic writes and JSON-lines logs (musegen.files)."""

from __future__ import annotations

import json

import pytest

from musegen.files import (
    append_jsonl,
    atomic_path,
    read_jsonl,
    replace_dir,
    write_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"x": 1})
    write_json_atomic(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_atomic(tmp_path / "c.txt", "é")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "é"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "loss.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path  # writers pick formats by suffix
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_replace_dir_swaps_a_directory_whole(tmp_path):
    final, tmp = tmp_path / "ckpt", tmp_path / ".ckpt.tmp"
    for content in ("one", "two"):
        tmp.mkdir()
        (tmp / "f").write_text(content)
        replace_dir(tmp, final)
        assert (final / "f").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_jsonl_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, {"step": 1})
    with path.open("a") as fh:
        fh.write('{"step": 2, "lo')  # a kill in the middle of a line
    assert read_jsonl(path) == [{"step": 1}]
    append_jsonl(path, {"step": 3})  # starts a new line: the torn one does not swallow it
    assert read_jsonl(path) == [{"step": 1}, {"step": 3}]
    write_jsonl_atomic(path, [{"step": 1}])
    assert path.read_text() == '{"step": 1}\n'
