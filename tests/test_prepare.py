"""``musegen prepare``: split, duplicates, bad input, atomic output, the CLI end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import mido
import numpy as np
import pytest
import symusic
from conftest import write_midi

from musegen.cli import main
from musegen.data import pool as corpus_pool
from musegen.data import prepare as corpus
from musegen.data.dataset import PreparedDataset
from musegen.data.prepare import PrepareOptions, prepare, split_for
from musegen.errors import MusegenError
from musegen.tokenizer import TokenizerSettings, count_notes, decode, load_tokenizer

FAST = {"workers": 2}


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def by_path(manifest: dict) -> dict[str, dict]:
    return {f["path"]: f for f in manifest["files"]}


def test_cli_end_to_end(midi_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepared"
    code = main(["prepare", str(midi_folder), str(out), "--workers", "2", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "8 MIDI files: 8 tokenized, 0 duplicates, 0 skipped" in text
    dataset = PreparedDataset.open(out)
    m = dataset.manifest
    assert m["format"] == "musegen-prepared" and m["format_version"] == 1
    assert m["dtype"] == "uint16" and m["vocab_size"] == len(load_tokenizer(out))
    assert sum(s["documents"] for s in m["splits"].values()) == 8
    bos, eos = m["special_ids"]["BOS"], m["special_ids"]["EOS"]
    for name in ("train", "val", "test"):
        split = dataset.split(name)
        assert split.num_docs == m["splits"][name]["documents"] >= 1
        assert split.num_tokens == m["splits"][name]["tokens"]
        for i in range(split.num_docs):
            doc = split.document(i)
            assert doc[0] == bos and doc[-1] == eos and len(doc) > 10
    files = [f for f in m["files"] if f["split"]]
    assert sum(f["tokens"] for f in files) == m["totals"]["tokens"]
    assert all(f["notes"] > 0 and f["sha256"] for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_split_is_deterministic_disjoint_and_hash_based(midi_folder: Path, tmp_path: Path) -> None:
    opts = PrepareOptions(val_fraction=0.3, test_fraction=0.2, **FAST)
    a = prepare(midi_folder, tmp_path / "a", opts, progress=False)
    b = prepare(midi_folder, tmp_path / "b", opts, progress=False)
    assert a["files"] == b["files"]
    for name in ("train", "val", "test"):
        for suffix in (".bin", ".idx.npy"):
            assert (tmp_path / "a" / f"{name}{suffix}").read_bytes() == (
                tmp_path / "b" / f"{name}{suffix}"
            ).read_bytes()
    seen: dict[str, str] = {}
    for f in a["files"]:
        assert seen.setdefault(f["sha256"], f["split"]) == f["split"]
        assert f["split"] == split_for(f["sha256"], 0.3, 0.2)


def test_rerun_is_idempotent_and_leaves_nothing_behind(midi_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare(midi_folder, out, PrepareOptions(**FAST), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    second = prepare(midi_folder, out, PrepareOptions(**FAST), progress=False)
    assert first == second
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["midi", "out"]


def test_duplicates_are_counted_once(midi_folder: Path, tmp_path: Path) -> None:
    shutil.copy(midi_folder / "set0" / "piece0.mid", midi_folder / "zz_copy.MIDI")
    m = prepare(midi_folder, tmp_path / "out", PrepareOptions(**FAST), progress=False)
    dup = by_path(m)["zz_copy.MIDI"]
    assert dup["duplicate_of"] == "set0/piece0.mid" and dup["split"] is None
    assert m["totals"]["duplicates"] == 1 and m["totals"]["ok"] == 8
    assert sum(s["documents"] for s in m["splits"].values()) == 8


def test_small_corpus_still_gets_val_and_test(tmp_path: Path) -> None:
    for i in range(4):
        write_midi(tmp_path / "src" / f"{i}.mid", seed=i)
    m = prepare(tmp_path / "src", tmp_path / "out", PrepareOptions(**FAST), progress=False)
    assert [m["splits"][s]["documents"] for s in ("train", "val", "test")] == [2, 1, 1]


def test_a_single_file_always_lands_in_train(tmp_path: Path) -> None:
    write_midi(tmp_path / "src" / "only.mid")
    opts = PrepareOptions(val_fraction=0.5, test_fraction=0.4, **FAST)
    m = prepare(tmp_path / "src", tmp_path / "out", opts, progress=False)
    assert m["files"][0]["split"] == "train" and m["splits"]["train"]["documents"] == 1


def test_flags_max_files_min_notes_and_kinds(midi_folder: Path, tmp_path: Path) -> None:
    m = prepare(midi_folder, tmp_path / "a", PrepareOptions(max_files=3, **FAST), progress=False)
    assert [f["path"] for f in m["files"]] == [
        "set0/piece0.mid",
        "set0/piece2.mid",
        "set0/piece4.mid",
    ]
    m = prepare(midi_folder, tmp_path / "b", PrepareOptions(min_notes=60, **FAST), progress=False)
    short = by_path(m)["set0/piece0.mid"]  # 4 bars × 8 notes
    assert short["skipped"].startswith("too few notes") and short["split"] is None
    for kind in ("TSD", "MIDILike"):
        opts = PrepareOptions(tokenizer=TokenizerSettings(kind=kind), **FAST)
        m = prepare(midi_folder, tmp_path / kind, opts, progress=False)
        assert m["tokenizer"]["kind"] == kind and m["totals"]["ok"] == 8


def test_bpe_vocabulary_is_trained_and_used(midi_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bpe"
    assert (
        main(
            [
                "prepare",
                str(midi_folder),
                str(out),
                "--bpe-vocab",
                "600",
                "--workers",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    dataset = PreparedDataset.open(out)
    tokenizer = load_tokenizer(dataset.tokenizer_path)
    assert tokenizer.is_trained and dataset.vocab_size == 600
    assert dataset.manifest["tokenizer"]["bpe_vocab_size"] == 600
    train = dataset.split("train")
    assert train.tokens.max() >= 502  # merged tokens are in use
    entry = next(f for f in dataset.manifest["files"] if f["split"] == "train")
    back = decode(tokenizer, train.document(0).tolist())
    assert count_notes(back) == entry["notes"]


# ------------------------------------------------------------------ bad input, one file per class


def _mido_file(path: Path, kind: int, tpq: int = 480, tempo: int = 500_000, gap: int = 0) -> None:
    mid = mido.MidiFile(type=kind, ticks_per_beat=tpq)
    tracks = [mido.MidiTrack() for _ in range(1 if kind == 0 else 2)]
    tracks[0].append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    for i in range(24):
        tracks[-1].append(
            mido.Message("note_on", note=60 + i % 12, velocity=80, time=gap if i == 12 else 0)
        )
        tracks[-1].append(
            mido.Message("note_off", note=60 + i % 12, velocity=0, time=tpq // 2 or 1)
        )
    mid.tracks.extend(tracks)
    mid.save(str(path))


def _score_with(
    notes: list[tuple[int, int, int]], tpq: int = 480, drum: bool = False
) -> symusic.Score:
    score = symusic.Score(tpq)
    track = symusic.Track(program=0, is_drum=drum)
    for time_, dur, pitch in notes:
        track.notes.append(symusic.Note(time_, dur, pitch, 90))
    score.tracks.append(track)
    return score


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> tuple[Path, dict]:
    src = tmp_path_factory.mktemp("bad") / "src"
    src.mkdir()
    (src / "text.mid").write_text("this is a text file, not MIDI\n")
    (src / "empty.mid").write_bytes(b"")
    good = write_midi(src / "good.mid", bars=8).read_bytes()
    (src / "truncated.mid").write_bytes(good[: len(good) // 2])
    (src / "cut_in_header.mid").write_bytes(good[:9])
    write_midi(src / "no_notes.mid", _score_with([]))
    write_midi(src / "drums_only.mid", tracks=((0, True),), bars=8)
    for kind in (0, 1, 2):
        _mido_file(src / f"format{kind}.mid", kind)
    _mido_file(src / "tpq_3.mid", 1, tpq=3)
    _mido_file(src / "tpq_32000.mid", 1, tpq=32000)
    _mido_file(src / "tempo_slowest.mid", 1, tempo=0xFFFFFF)
    _mido_file(src / "tempo_fastest.mid", 1, tempo=1)
    many = [(i * 60, 60, 36 + (i * 7) % 60) for i in range(20_000)]
    write_midi(src / "notes_20000.mid", _score_with(many))
    _mido_file(src / "gap_2000_beats.mid", 1, gap=2000 * 480)
    _mido_file(src / "gap_500k_beats.mid", 1, gap=500_000 * 480)
    (src / "notes.txt").write_text("ignored: not a .mid file")
    m = prepare(src, src.parent / "out", PrepareOptions(min_notes=1, **FAST), progress=False)
    return src, m


EXPECTED = {
    "text.mid": "not MIDI",
    "empty.mid": "empty",
    "cut_in_header.mid": "corrupt",
    "no_notes.mid": "no notes",
    "gap_500k_beats.mid": "too long",
    "good.mid": None,
    "drums_only.mid": None,
    "format0.mid": None,
    "format1.mid": None,
    "tpq_3.mid": None,
    "tpq_32000.mid": None,
    "tempo_slowest.mid": None,
    "tempo_fastest.mid": None,
    "notes_20000.mid": None,
    "gap_2000_beats.mid": None,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_bad_input_class_is_tokenized_or_skipped_with_reason(bad_folder, name: str) -> None:
    _, m = bad_folder
    entry = by_path(m)[name]
    expected = EXPECTED[name]
    if expected is None:
        assert entry["skipped"] is None and entry["split"] in ("train", "val", "test")
        assert entry["tokens"] > entry["notes"] > 0
    else:
        assert entry["skipped"].startswith(expected + ":") and entry["split"] is None
        assert "\n" not in entry["skipped"]


def test_uncertain_inputs_never_crash_and_summary_adds_up(bad_folder) -> None:
    _, m = bad_folder
    files = by_path(m)
    for name in ("truncated.mid", "format2.mid"):  # parsed leniently or rejected: both fine
        entry = files[name]
        if entry["skipped"] is None:
            assert entry["tokens"] > entry["notes"] > 0
        else:
            assert entry["tokens"] == 0 and "\n" not in entry["skipped"]
    assert files["notes_20000.mid"]["notes"] == 20_000
    assert files["notes_20000.mid"]["tokens"] > 4 * 20_000
    totals = m["totals"]
    assert totals["files"] == len(EXPECTED) + 2 and totals["ignored_non_midi_files"] == 1
    assert totals["ok"] + sum(totals["skipped"].values()) == totals["files"]
    lines = corpus.summary_lines(m)
    assert any(line.strip().startswith("skipped (empty): 1") for line in lines)


def _misbehave(path: str, min_notes: int, max_beats: int) -> corpus_pool.FileResult:
    """Stand-in for the worker's encoder: dies on 'crash', sleeps on 'slow' (forked workers
    inherit the monkeypatched module)."""
    path = Path(path).name
    if "crash" in path:
        os._exit(3)
    if "slow" in path:
        time.sleep(30)
    if "hang" in path:  # stuck where the per-file alarm cannot reach
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(30)
    return corpus_pool.FileResult(notes=5, ids=np.arange(3, 30, dtype=np.uint32))


def _run_misbehaving(tmp_path: Path, monkeypatch, names: tuple[str, ...]) -> dict[str, dict]:
    monkeypatch.setattr(corpus_pool, "_encode_checked", _misbehave)
    for name in names:
        write_midi(tmp_path / "src" / f"{name}.mid", seed=len(name))
    opts = PrepareOptions(timeout_s=0.5, min_notes=1, **FAST)
    files = by_path(prepare(tmp_path / "src", tmp_path / "out", opts, progress=False))
    assert all(files[f"{n}.mid"]["skipped"] is None for n in names if len(n) <= 3)
    return files


@pytest.mark.parametrize("n_good", [4, 40])  # one file per task, and chunks of several
def test_a_crashing_or_slow_file_is_skipped_not_fatal(tmp_path: Path, monkeypatch, n_good) -> None:
    good = tuple(chr(ord("a") + i) if i < 26 else f"z{i}" for i in range(n_good))
    files = _run_misbehaving(tmp_path, monkeypatch, ("crash", "slow", *good))
    assert files["crash.mid"]["skipped"].startswith("crashed:")
    assert files["slow.mid"]["skipped"].startswith("timed out:")


@pytest.mark.slow
def test_a_file_hanging_in_native_code_is_skipped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(corpus_pool, "HANG_GRACE_S", 5.0)
    files = _run_misbehaving(tmp_path, monkeypatch, ("a", "b", "hang", "c", "d"))
    assert files["hang.mid"]["skipped"].startswith("timed out:")


# ------------------------------------------------------------------ errors and the output folder


def test_missing_or_empty_source_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["prepare", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no midi here")
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no .mid or .midi files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_folder_of_only_bad_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mid").write_bytes(b"")
    with pytest.raises(MusegenError, match="no usable MIDI file"):
        prepare(tmp_path / "src", tmp_path / "out", PrepareOptions(**FAST), progress=False)
    assert not (tmp_path / "out").exists()


def test_out_dir_holding_something_else_needs_overwrite(midi_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(MusegenError, match=r"not a musegen-prepared dataset.*--overwrite"):
        prepare(midi_folder, out, PrepareOptions(**FAST), progress=False)
    assert (out / "precious.txt").exists()
    prepare(midi_folder, out, PrepareOptions(**FAST), overwrite=True, progress=False)
    assert not (out / "precious.txt").exists()
    PreparedDataset.open(out)


def test_out_dir_with_other_settings_needs_overwrite(midi_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(midi_folder, out, PrepareOptions(**FAST), progress=False)
    other = PrepareOptions(tokenizer=TokenizerSettings(kind="TSD"), **FAST)
    with pytest.raises(MusegenError, match=r"other settings.*--overwrite"):
        prepare(midi_folder, out, other, progress=False)
    assert manifest_of(out)["tokenizer"]["kind"] == "REMI"
    with pytest.raises(MusegenError, match="must not be SRC_DIR"):
        prepare(midi_folder, midi_folder.parent, PrepareOptions(**FAST), progress=False)


def test_failure_midway_leaves_no_dataset(midi_folder: Path, tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(corpus, "_write_splits", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(midi_folder, tmp_path / "out", PrepareOptions(**FAST), progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--val-fraction", "0.6", "--test-fraction", "0.5"], "sum to less than 1"),
        (["--workers", "0"], "--workers"),
        (["--min-notes", "0"], "--min-notes"),
        (["--bpe-vocab", "100"], "larger than the base vocabulary"),
    ],
)
def test_bad_flags_are_clear_errors(
    midi_folder: Path, tmp_path: Path, capsys, flags, message
) -> None:
    assert main(["prepare", str(midi_folder), str(tmp_path / "out"), "--quiet", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_make_score_fixture_round_trips_through_a_split(midi_folder: Path, tmp_path: Path) -> None:
    """The stored document decodes to the file's notes (the data path adds nothing, loses nothing)."""
    prepare(
        midi_folder,
        tmp_path / "out",
        PrepareOptions(val_fraction=0, test_fraction=0, **FAST),
        progress=False,
    )
    dataset = PreparedDataset.open(tmp_path / "out")
    tokenizer = load_tokenizer(dataset.tokenizer_path)
    train = dataset.split("train")
    for i, entry in enumerate(f for f in dataset.manifest["files"] if f["split"]):
        back = decode(tokenizer, train.document(i).tolist())
        assert count_notes(back) == entry["notes"]
