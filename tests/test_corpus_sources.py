"""Corpus builders for Groove, POP909, Nottingham and the full-band arrangements, on tiny
datasets made here in the layout of the real ones (never the real corpora)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import symusic

from musegen.cli import main
from musegen.data import fullband, groove, nottingham, pop909
from musegen.data.prepare import PrepareOptions, prepare
from musegen.data.sources import CORPUS_FILE
from musegen.errors import MusegenError

TPQ = 480
SEC_PER_TICK = 0.5 / TPQ  # 120 bpm
INFO_HEADER = "drummer,session,id,style,bpm,beat_type,time_signature,midi_filename,"
INFO_HEADER += "audio_filename,duration,split"
# (file stem, style, bpm, beat/fill, meter, split); "broken" is corrupt, "gone" is missing
GROOVE_ROWS = (
    ("1_rock_118_beat_4-4", "rock", 118, "beat", "4-4", "train"),
    ("2_funk_121_beat_4-4", "funk", 121, "beat", "4-4", "train"),
    ("3_rock_120_beat_4-4", "rock", 120, "beat", "4-4", "test"),  # nearest tempo, but test
    ("4_rock_120_fill_4-4", "rock", 120, "fill", "4-4", "train"),
    ("5_jazz_120_beat_3-4", "jazz", 120, "beat", "3-4", "validation"),
    ("6_broken_120_beat_4-4", "rock", 120, "beat", "4-4", "train"),
    ("7_gone_120_beat_4-4", "rock", 120, "beat", "4-4", "train"),
)
CHORDS = ("C:maj", "A:min", "F:maj/3", "G:7", "N", "Bb:maj", "C#:min7", "Eb:sus4")
ROOTS = {"C": 0, "A": 9, "F": 5, "G": 7, "Bb": 10, "C#": 1, "Eb": 3}


def drum_performance(bars: int, seed: int) -> symusic.Score:
    """A rock beat with human timing (a few ticks early or late): kick, snare, hi-hat."""
    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, 120.0))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    track = symusic.Track(name="", program=0, is_drum=True)
    for step in range(bars * 16):
        jitter = ((step * 7 + seed) % 5 - 2) * 4
        time = max(0, step * TPQ // 4 + jitter)
        if step % 2 == 0:
            track.notes.append(symusic.Note(time, 40, 42, 60 + step % 30))
        if step % 8 == 0:
            track.notes.append(symusic.Note(time, 40, 36, 100))
        if step % 8 == 4:
            track.notes.append(symusic.Note(time, 40, 38, 90 + seed))
    score.tracks.append(track)
    return score


@pytest.fixture(scope="module")
def groove_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("groove")
    lines = [INFO_HEADER]
    for i, (stem, style, bpm, kind, meter, split) in enumerate(GROOVE_ROWS):
        rel = f"drummer1/session1/{stem}.mid"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if "broken" in stem:
            (root / rel).write_bytes(b"this is not a MIDI file")
        elif "gone" not in stem:
            drum_performance(bars=3, seed=i).dump_midi(str(root / rel))
        lines.append(f"drummer1,drummer1/session1,drummer1/session1/{i},{style},{bpm},{kind},")
        lines[-1] += f"{meter},{rel},{stem}.wav,6.0,{split}"
    (root / "info.csv").write_text("\n".join(lines) + "\n")
    return root


def pop_song(seed: int) -> symusic.Score:
    """Melody, bridge and piano over 9 bars after a one-beat pickup; the piano repeats a pitch
    with overlapping notes (as real transcriptions do), which the full band must untangle."""
    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, 120.0))
    score.time_signatures.append(symusic.TimeSignature(0, 2, 4))
    start = 240 + TPQ  # beat 1 (the first downbeat) at 0.25 s + 0.5 s
    for name, base in (("MELODY", 72), ("BRIDGE", 64), ("PIANO", 48)):
        track = symusic.Track(name=name, program=0)
        for k in range(36):
            pitch = base + (k * (3 + seed)) % 12
            track.notes.append(symusic.Note(start + k * TPQ, TPQ, pitch, 80))
            if name == "PIANO":
                track.notes.append(symusic.Note(start + k * TPQ + 60, TPQ, pitch, 70))
        score.tracks.append(track)
    return score


@pytest.fixture(scope="module")
def pop_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pop909")
    for n in (1, 2, 3, 4):
        song = root / "POP909" / f"{n:03d}"
        song.mkdir(parents=True)
        if n == 3:
            (song / "003.mid").write_bytes(b"MThd but nothing else")
        else:
            pop_song(n).dump_midi(str(song / f"{n:03d}.mid"))
        beats = [f"{0.25 + 0.5 * k} {float(k % 2 == 1)} {float(k % 4 == 1)}" for k in range(40)]
        (song / "beat_midi.txt").write_text("\n".join(beats) + "\n")
        spans = [(0.25 + 1.0 * k, 0.25 + 1.0 * (k + 1), CHORDS[k % len(CHORDS)]) for k in range(20)]
        (song / "chord_midi.txt").write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in spans))
        (song / "key_audio.txt").write_text("0.0\t20.0\tC:maj\n")
    return root


@pytest.fixture(scope="module")
def nottingham_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nottingham")
    (root / "MIDI").mkdir()
    for name in ("jigs1", "jigs2", "reelsa-c3"):
        score = pop_song(len(name))
        score.tracks = score.tracks[:2]
        for track in score.tracks:
            track.name = ""
        score.dump_midi(str(root / "MIDI" / f"{name}.mid"))
    (root / "MIDI" / "waltzes9.mid").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory, groove_dir, pop_dir, nottingham_dir) -> dict:
    """Every builder run once into one mix folder, as a user combining corpora would."""
    mix = tmp_path_factory.mktemp("mix")
    reports = {
        "groove": groove.build(groove_dir, mix / "groove", progress=False),
        "pop909": pop909.build(pop_dir, mix / "pop909", progress=False),
        "nottingham": nottingham.build(nottingham_dir, mix / "nottingham", progress=False),
        "fullband": fullband.build(pop_dir, groove_dir, mix / "fullband", progress=False),
    }
    return {"mix": mix, "reports": reports}


def corpus_of(folder: Path) -> dict:
    return json.loads((folder / CORPUS_FILE).read_text())


def test_groove_keeps_drums_metadata_and_its_own_split(built) -> None:
    out, report = built["mix"] / "groove", built["reports"]["groove"]
    data = corpus_of(out)
    assert data["source"]["licence"] == "CC BY 4.0" and "Gillick" in data["source"]["attribution"]
    files = data["files"]
    assert len(files) == 5 and set(report.written) == set(files)
    rock = files["drummer1/session1/1_rock_118_beat_4-4.mid"]
    assert rock | {"notes": 0} == rock | {
        "style": "rock",
        "bpm": 118,
        "beat_type": "beat",
        "meter": "4/4",
        "drummer": "drummer1",
        "split": "train",
        "group": "drums",
        "notes": 0,
    }
    assert files["drummer1/session1/5_jazz_120_beat_3-4.mid"]["split"] == "val"
    assert files["drummer1/session1/3_rock_120_beat_4-4.mid"]["split"] == "test"
    for rel in files:
        score = symusic.Score(str(out / rel))
        assert [t.is_drum for t in score.tracks] == [True] and score.note_num() > 0
    assert "not a MIDI file" in data["skipped"]["drummer1/session1/6_broken_120_beat_4-4.mid"]
    assert "drummer1/session1/7_gone_120_beat_4-4.mid" in data["skipped"]


def test_pop909_keeps_annotations_track_names_and_song_split(built) -> None:
    out = built["mix"] / "pop909"
    data = corpus_of(out)
    assert data["source"]["licence"] == "MIT" and sorted(data["files"]) == [
        "001.mid",
        "002.mid",
        "004.mid",
    ]
    assert "003" in data["skipped"]
    meta = data["files"]["002.mid"]
    assert meta["group"] == "pop_piano" and meta["split"] == pop909.song_split("002")
    assert meta["beats"][:2] == [0.25, 0.75] and meta["downbeats"][:2] == [1, 5]
    assert meta["chords"][0] == [0.25, 1.25, "C:maj"] and meta["key"] == [[0.0, 20.0, "C:maj"]]
    score = symusic.Score(str(out / "002.mid"))
    assert [t.name for t in score.tracks] == ["MELODY", "BRIDGE", "PIANO"]


def test_nottingham_names_tracks_and_hashes_file_names(built) -> None:
    out = built["mix"] / "nottingham"
    data = corpus_of(out)
    assert data["source"]["licence"].startswith("GPL-3.0")
    assert sorted(data["files"]) == ["jigs1.mid", "jigs2.mid", "reelsa-c3.mid"]
    assert data["files"]["reelsa-c3.mid"]["collection"] == "reelsa-c"
    assert all(m["group"] == "folk" for m in data["files"].values())
    assert "empty file" in data["skipped"]["waltzes9.mid"]
    score = symusic.Score(str(out / "jigs1.mid"))
    assert [t.name for t in score.tracks] == ["MELODY", "CHORDS"]


def fullband_pieces(built) -> list[tuple[symusic.Score, dict]]:
    out = built["mix"] / "fullband"
    files = corpus_of(out)["files"]
    return [(symusic.Score(str(out / rel)), meta) for rel, meta in sorted(files.items())]


def test_fullband_drums_come_from_groove_train_beats_and_sit_on_the_16th_grid(built) -> None:
    pieces = fullband_pieces(built)
    assert len(pieces) == 3 and "003" in corpus_of(built["mix"] / "fullband")["skipped"]
    train_beats = {"1_rock_118_beat_4-4", "2_funk_121_beat_4-4"}
    for score, meta in pieces:
        assert Path(meta["drums"]["file"]).stem in train_beats
        drums = [t for t in score.tracks if t.is_drum]
        assert len(drums) == 1 and drums[0].name == "DRUMS" and len(drums[0].notes) > 50
        beat_ticks = [
            round((0.25 + 0.5 * k) / SEC_PER_TICK) + meta["shift_ticks"] for k in range(40)
        ]
        grid = {b + q * TPQ // 4 for b in beat_ticks for q in range(4)}
        for note in drums[0].notes:
            assert min(abs(note.time - g) for g in grid) <= 2, note
        first_downbeat = beat_ticks[1]
        assert first_downbeat % (4 * TPQ) == 0  # the song's first bar starts on a bar line
        assert min(n.time for n in drums[0].notes) == first_downbeat


def test_fullband_bass_plays_chord_roots_in_the_bass_register(built) -> None:
    chords = [(0.25 + 1.0 * k, 0.25 + 1.0 * (k + 1), CHORDS[k % len(CHORDS)]) for k in range(20)]
    for score, meta in fullband_pieces(built):
        (bass,) = [t for t in score.tracks if t.name == "BASS"]
        assert 32 <= bass.program <= 39 and not bass.is_drum and len(bass.notes) > 10
        for note in bass.notes:
            seconds = (note.time - meta["shift_ticks"]) * SEC_PER_TICK
            label = next(c for a, b, c in chords if a <= seconds + 1e-3 < b)
            root = ROOTS[label.split(":")[0]]
            allowed = {root, (root + 7) % 12} if meta["bass_rhythm"] == "root_fifth" else {root}
            assert note.pitch % 12 in allowed and 28 <= note.pitch <= 55
            on_chord_start = any(abs(seconds - a) < 1e-3 for a, _, _ in chords)
            assert not on_chord_start or note.pitch % 12 == root


def test_fullband_tracks_have_no_overlapping_notes_and_varied_programs(built) -> None:
    programs = set()
    for score, meta in fullband_pieces(built):
        names = [t.name for t in score.tracks]
        assert names == ["MELODY", "BRIDGE", "PIANO", "BASS", "DRUMS"]
        assert meta["split"] == pop909.song_split(meta["song_id"]) and meta["group"] == "full_band"
        for track in score.tracks:
            last_end: dict[int, int] = {}
            for note in sorted(track.notes, key=lambda n: (n.time, n.pitch)):
                assert note.duration > 0 and note.time >= last_end.get(note.pitch, 0), track.name
                last_end[note.pitch] = note.time + note.duration
        bass = score.tracks[3].notes
        assert all(a.time + a.duration <= b.time for a, b in itertools.pairwise(bass))
        programs |= {t.program for t in score.tracks[:3]}
        assert len({t.program for t in score.tracks[:3]}) == 3
    assert programs != {0}
    assert "Groove" in corpus_of(built["mix"] / "fullband")["description"]


def test_every_build_is_byte_identical_on_rerun(built, groove_dir, pop_dir, tmp_path) -> None:
    fullband.build(pop_dir, groove_dir, tmp_path / "fb", progress=False)
    groove.build(groove_dir, tmp_path / "g", progress=False)
    for name, again in (("fullband", tmp_path / "fb"), ("groove", tmp_path / "g")):
        first = built["mix"] / name
        files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
        for rel in files:
            assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_missing_source_names_the_dataset_and_where_to_get_it(tmp_path, pop_dir) -> None:
    with pytest.raises(MusegenError, match=r"magenta\.tensorflow\.org/datasets/groove"):
        groove.build(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(MusegenError, match="music-x-lab/POP909-Dataset"):
        pop909.build(tmp_path, tmp_path / "out")
    with pytest.raises(MusegenError, match="jukedeck/nottingham-dataset"):
        nottingham.build(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(MusegenError, match=r"info\.csv"):
        fullband.build(pop_dir, tmp_path / "nowhere", tmp_path / "out")


def test_cli_builds_refuses_a_full_folder_and_overwrites(nottingham_dir, tmp_path, capsys) -> None:
    out = tmp_path / "nott"
    assert main(["corpus", "nottingham", str(nottingham_dir), str(out), "--limit", "2"]) == 0
    assert "wrote 2 MIDI files" in capsys.readouterr().out
    assert main(["corpus", "nottingham", str(nottingham_dir), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["corpus", "nottingham", str(nottingham_dir), str(out), "--overwrite"]) == 0
    assert len(corpus_of(out)["files"]) == 3
    assert main(["corpus", "groove", str(tmp_path / "nope"), str(tmp_path / "g")]) == 2
    assert "download it from" in capsys.readouterr().err


def test_prepare_records_sources_groups_and_honours_corpus_splits(built, tmp_path) -> None:
    manifest = prepare(
        built["mix"], tmp_path / "prepared", PrepareOptions(workers=1), progress=False
    )
    licences = {s["folder"]: s["licence"] for s in manifest["sources"]}
    assert licences["groove"] == "CC BY 4.0" and licences["pop909"] == "MIT"
    assert licences["nottingham"].startswith("GPL-3.0") and "CC BY 4.0" in licences["fullband"]
    fb = next(s for s in manifest["sources"] if s["folder"] == "fullband")
    assert fb["groups"] == {"full_band": 3} and "Groove" in fb["attribution"]
    files = {f["path"]: f for f in manifest["files"]}
    test_drums = files["groove/drummer1/session1/3_rock_120_beat_4-4.mid"]
    assert test_drums["split"] == "test" and test_drums["split_by"] == "corpus"
    assert test_drums["group"] == "drums"
    for song in ("001", "002", "004"):
        pop, band = files[f"pop909/{song}.mid"], files[f"fullband/{song}.mid"]
        assert pop["split"] == band["split"] == pop909.song_split(song)
        assert (pop["group"], band["group"]) == ("pop_piano", "full_band")
    assert files["nottingham/jigs1.mid"]["group"] == "folk"


def test_groove_drums_are_written_as_general_midi_drums(tmp_path) -> None:
    """The TD-11 articulations General MIDI lacks (hi-hat edge 22/26, below a tokenizer's drum
    range) or gives to another instrument (crash edge 55 is a splash, tom rim 58 a vibraslap)
    become the drum that was hit; one hit per time and drum, the loudest kept."""
    score = symusic.Score(TPQ)
    track = symusic.Track(name="", program=0, is_drum=True)
    for time, pitch, velocity in (
        (0, 36, 100), (0, 22, 50), (0, 42, 70), (120, 26, 60), (240, 55, 90), (360, 58, 80),
    ):  # fmt: skip
        track.notes.append(symusic.Note(time, 30, pitch, velocity))
    score.tracks.append(track)
    score.dump_midi(str(tmp_path / "td11.mid"))
    out = groove.drum_score(tmp_path / "td11.mid")
    hits = [(n.time, n.pitch, n.velocity) for n in out.tracks[0].notes]
    assert hits == [(0, 36, 100), (0, 42, 70), (120, 46, 60), (240, 49, 90), (360, 43, 80)]
    assert out.tracks[0].is_drum and out.tracks[0].name == "DRUMS"
