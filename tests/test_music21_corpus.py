"""The offline corpus builder, and the round trip of real multi-part music through prepare."""

from __future__ import annotations

import builtins
import json
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("music21")

from musegen.cli import main
from musegen.data.dataset import PreparedDataset
from musegen.data.music21 import available_collections, build_corpus, plan_tasks
from musegen.data.prepare import PrepareOptions, prepare
from musegen.errors import MusegenError
from musegen.tokenizer import count_notes, decode, load_score, load_tokenizer

# Piano (Joplin, Chopin), four-voice chorales (Bach) and a string quartet (Mozart).
PIECES = {"bach": 2, "joplin": 1, "chopin": 1, "mozart": 1}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m21") / "midi"
    for collection, limit in PIECES.items():
        build_corpus(out, [collection], limit=limit, workers=2, progress=False)
    return out


def grid_notes(score, per_beat: int) -> Counter:
    """(pitch, program, onset on the tokenizer's grid) of every note; drums as program -1."""
    notes: Counter = Counter()
    for track in score.tracks:
        program = -1 if track.is_drum else track.program
        for note in track.notes:
            onset = round(note.time * per_beat / score.ticks_per_quarter)
            notes[(note.pitch, program, onset)] += 1
    return notes


@pytest.mark.slow
def test_round_trip_keeps_99_percent_of_notes(built: Path, tmp_path: Path) -> None:
    options = PrepareOptions(val_fraction=0.0, test_fraction=0.0, workers=2)
    prepare(built, tmp_path / "prepared", options, progress=False)
    dataset = PreparedDataset.open(tmp_path / "prepared")
    tokenizer = load_tokenizer(dataset.tokenizer_path)
    per_beat = max(r for _, _, r in options.tokenizer.beat_res)
    train = dataset.split("train")
    kept = [f for f in dataset.manifest["files"] if f["split"] == "train"]
    assert {f["path"].split("/")[0] for f in kept} == set(PIECES)
    multitrack = 0
    for i, entry in enumerate(kept):
        original = load_score(built / entry["path"])
        multitrack += len(original.tracks) > 1
        back = decode(tokenizer, train.document(i).tolist())
        want, got = grid_notes(original, per_beat), grid_notes(back, per_beat)
        recovered = sum((want & got).values()) / sum(want.values())
        assert recovered >= 0.99, (entry["path"], recovered)
    assert multitrack >= 3


def test_build_is_deterministic_and_summarised(tmp_path: Path) -> None:
    first = build_corpus(tmp_path / "a", ["bach"], limit=2, workers=2, progress=False)
    again = build_corpus(tmp_path / "b", ["bach"], limit=2, workers=1, progress=False)
    assert list(first.written) == ["bach/bwv1.6.mid", "bach/bwv10.7.mid"]
    for name in first.written:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    summary = json.loads((tmp_path / "b" / "music21_corpus.json").read_text())
    on_disk = sum(count_notes(load_score(tmp_path / "b" / name)) for name in again.written)
    assert summary["files"] == 2 and summary["notes"] == on_disk > 0
    assert summary["written"] == first.written and not summary["skipped"]


def test_tune_books_are_split_into_tunes(tmp_path: Path) -> None:
    report = build_corpus(tmp_path, ["nottingham-dataset"], workers=1, progress=False)
    names = sorted(report.written)
    assert names[:2] == [f"nottingham-dataset/reelsa-c_{i:04d}.mid" for i in (1, 2)]


@pytest.mark.slow
def test_malformed_repeats_are_written_once_through(built: Path) -> None:
    """music21 refuses to expand the repeats of this mazurka; it is kept, not skipped."""
    assert (built / "chopin" / "mazurka06-2.mid").is_file()


def test_plan_prefers_one_encoding_per_piece() -> None:
    paths = [t.relpath for t in plan_tasks(["beethoven"])]
    stems = [p.rsplit(".", 1)[0] for p in paths]
    assert len(stems) == len(set(stems))
    assert "beethoven/opus18no1/movement1.mxl" in paths


def test_unknown_collection_and_bad_limit() -> None:
    assert "bach" in available_collections()
    with pytest.raises(MusegenError, match="unknown music21 collection"):
        plan_tasks(["bach", "nope"])
    with pytest.raises(MusegenError, match="--limit"):
        plan_tasks(["bach"], limit=0)


def test_cli_writes_files_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["corpus", "music21", str(tmp_path), "--collections", "bach", "--limit", "1"])
    assert code == 0
    assert "wrote 1 MIDI files with" in capsys.readouterr().out
    assert main(["corpus", "music21", str(tmp_path), "--collections", "nope"]) == 2
    assert main(["corpus", "music21", str(tmp_path / "w"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_missing_music21_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "music21":
            raise ImportError("no music21")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MusegenError, match=r"pip install musegen\[corpus\]"):
        build_corpus(tmp_path, ["bach"], limit=1)


@pytest.mark.slow
def test_notes_written_match_the_files(built: Path) -> None:
    summary = json.loads((built / "music21_corpus.json").read_text())
    on_disk = {name: count_notes(load_score(built / name)) for name in summary["written"]}
    assert on_disk == summary["written"]
    assert sum(on_disk.values()) == summary["notes"]
