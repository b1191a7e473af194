"""``musegen generate`` end to end on a tiny random checkpoint."""

from __future__ import annotations

import json

import mido
import pretty_midi
import symusic
from conftest import write_midi

from musegen.cli import main

FAST = ["--instruments", "0", "--no-drums", "--batch-size", "4"]


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def gen(checkpoint, out, *args: str) -> int:
    """``musegen generate --checkpoint CHECKPOINT --out OUT ARGS…``; the exit code."""
    return main(["generate", "--checkpoint", str(checkpoint), "--out", str(out), *args])


def test_folder_with_a_corrupt_prompt_and_resume(tiny_checkpoint, midi_folder, tmp_path, capsys):
    (midi_folder / "broken.mid").write_bytes(b"MThd\x00\x00 not really")
    out = tmp_path / "out"
    argv = [
        "generate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--prompt",
        str(midi_folder),
        "--out",
        str(out),
        "--num-samples",
        "2",
        "--bars",
        "2",
        *FAST,
    ]
    assert main(argv) == 1  # one prompt failed
    rows = manifest(out)
    failed = [r for r in rows if r.get("status") == "failed"]
    assert len(failed) == 1 and "broken.mid" in failed[0]["prompt"] and failed[0]["error"]
    done = [r for r in rows if r.get("output")]
    assert len(done) == 2 * 8
    for row in done:
        path = out / row["output"]
        assert row["bars"] == 2 and row["seed"] in (0, 1) and row["new_tokens"] > 0
        pm = pretty_midi.PrettyMIDI(str(path))
        assert mido.MidiFile(str(path)).length > 0
        score = symusic.Score(str(path))
        end_tick = row["prompt_end_tick"]  # the file is the decoded score: same ticks
        assert any(n.start >= end_tick for t in score.tracks for n in t.notes)
        assert pm.instruments
    assert (out / "set0__piece0_s0_0.mid").is_file()

    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mid")}
    capsys.readouterr()
    assert main(argv) == 1
    assert "skipped 8 prompt(s)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mid")} == stamp
    assert len([r for r in manifest(out) if r.get("output")]) == 16


def test_single_bad_prompt_is_one_line(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.mid"
    bad.write_text("not midi")
    code = gen(tiny_checkpoint, tmp_path / "out", "--prompt", str(bad))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a MIDI file" in err and len(err.splitlines()) == 1


def test_absurd_settings_fail_before_loading(tmp_path, capsys):
    code = gen(tmp_path / "none", tmp_path, "--temperature", "0")
    assert code == 2 and "temperature" in capsys.readouterr().err


def test_bars_and_continuation_only(tiny_checkpoint, tmp_path):
    prompt = write_midi(tmp_path / "song.mid", bars=2)
    out = tmp_path / "out"
    args = ["--prompt", str(prompt), "--bars", "3", "--seed", "7", "--continuation-only"]
    assert gen(tiny_checkpoint, out, *args, "--pianoroll", *FAST) == 0
    [row] = manifest(out)
    assert row["output"] == "song_s7_0.mid" and row["bars"] == 3
    score = symusic.Score(str(out / "song_s7_0.mid"))
    starts = [n.start for t in score.tracks for n in t.notes]
    assert starts and max(starts) < 3 * 4 * score.tpq  # three 4/4 bars
    assert (out / "song_s7_0.png").stat().st_size > 0


def test_from_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ["--num-samples", "2", "--bars", "0", "--max-new-tokens", "30"]
    assert gen(tiny_checkpoint, out, *args) == 0
    assert sorted(p.name for p in out.glob("*.mid")) == ["sample_s0_0.mid", "sample_s1_1.mid"]
