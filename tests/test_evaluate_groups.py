"""The per-group continuation evaluation: each metric on hand-made cases, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import symusic
from conftest import make_score, write_midi

from musegen import metrics
from musegen.cli import main
from musegen.eval_pieces import Piece, from_folder, make_piece
from musegen.evaluate_groups import GroupEvalSettings, check_targets, score_piece, summarize

TPQ = 480
BAR = 4 * TPQ


def _score(*tracks: tuple[int, bool, list[tuple[int, int]]]) -> symusic.Score:
    """A 4/4 score from (program, is_drum, [(onset tick, pitch)]) tuples; 8th-note lengths."""
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for program, drum, notes in tracks:
        track = symusic.Track(program=program, is_drum=drum)
        for time, pitch in notes:
            track.notes.append(symusic.Note(time, TPQ // 2, pitch, 80))
        score.tracks.append(track)
    return score


def _bars(pattern: list[int], pitch: int, bars: int) -> list[tuple[int, int]]:
    """The same onsets (in 16ths) in each of ``bars`` bars."""
    return [(b * BAR + s * TPQ // 4, pitch) for b in range(bars) for s in pattern]


def test_keeps_playing_counts_silenced_tracks():
    prompt = _score((0, False, _bars([0, 4], 60, 4)), (0, True, _bars([0, 8], 36, 4)))
    new = _score((0, False, _bars([0], 62, 4)))  # the drums stop
    assert metrics.tracks_playing(prompt, new) == (2, 1)
    assert metrics.tracks_playing(prompt, _score()) == (2, 0)
    # any drum program is the same kit
    assert metrics.tracks_playing(prompt, _score((0, False, []), (25, True, [(0, 36)])))[1] == 1


def test_density_ratio_and_in_key_rate():
    real = _score((0, False, _bars([0, 4, 8, 12], 60, 4)))
    half = _score((0, False, _bars([0, 8], 60, 4)))
    assert metrics.density_ratio(half, real, 4 * BAR) == pytest.approx(0.5)
    assert metrics.density_ratio(real, _score(), 4 * BAR) is None
    c_major = _score((0, False, [(i * TPQ, p) for i, p in enumerate([60, 62, 64, 65, 67, 60, 67])]))
    tonic, mode = metrics.estimate_key(c_major)
    assert (tonic, mode) == (0, "major")
    key = metrics.key_pitch_classes(tonic, mode)
    assert metrics.in_key_rate(c_major, key) == 1.0
    assert metrics.in_key_rate(_score((0, False, [(0, 61), (TPQ, 60)])), key) == 0.5


def test_pitch_range_difference():
    a = _score((0, False, [(0, 60), (TPQ, 72)]))
    b = _score((0, False, [(0, 62), (TPQ, 76)]))
    assert metrics.range_difference(a, b) == pytest.approx(3.0)
    assert metrics.range_difference(a, _score((1, False, [(0, 60)]))) is None


def test_onset_similarity_copy_is_one_and_a_silent_track_zero():
    tail = _score((0, False, _bars([0, 3, 8, 10], 60, 4)), (0, True, _bars([0, 8], 36, 4)))
    assert metrics.onset_similarity(tail, tail, BAR, 4) == pytest.approx(1.0)
    only_piano = _score((0, False, _bars([0, 3, 8, 10], 60, 4)))
    assert metrics.onset_similarity(tail, only_piano, BAR, 4) == pytest.approx(0.5)
    by_track = metrics.onset_similarity_by_track(tail, only_piano, BAR, 4)
    assert by_track == {(0, False): [1.0] * 4, (0, True): [0.0] * 4}  # the drums fell silent
    held = _score((0, False, _bars([0], 60, 4)), (0, True, _bars([0, 8], 36, 4)))
    assert metrics.onset_similarity(tail, held, BAR, 4) == pytest.approx((0.25 + 1) / 2)
    # a slightly early onset counts on the grid step it was meant for
    early = _score((0, True, [(b * BAR - 10, 36) for b in range(1, 4)] + [(0, 36)]))
    assert metrics.onset_grids(early, BAR, 4)[(0, True)][:, 0].all()


def test_longest_bar_repetition():
    bar_a, bar_b = _bars([0, 4], 60, 1), [(t + BAR, p + 2) for t, p in _bars([0, 4], 60, 1)]
    loop = _score((0, False, _bars([0, 4], 60, 5)))
    assert metrics.longest_bar_repetition(loop, BAR, 5) == 5
    assert metrics.longest_bar_repetition(_score((0, False, bar_a + bar_b)), BAR, 2) == 1
    assert metrics.longest_bar_repetition(_score(), BAR, 4) == 0


def test_drum_kit_distance_compares_the_drums_hit():
    """Half the L1 distance of the drum-pitch histograms: the kit played, not when; new bars
    without drums are as far as can be, and a piece whose real bars have none gets no figure."""
    open_hat = _score((0, True, _bars([0, 4, 8, 12], 46, 4) + _bars([0, 8], 36, 4)))
    closed_hat = _score((0, True, _bars([2, 6, 10, 14], 42, 4) + _bars([0, 8], 36, 4)))
    assert metrics.drum_histogram(open_hat)[[36, 46]].tolist() == pytest.approx([1 / 3, 2 / 3])
    assert not metrics.drum_histogram(_score((0, False, _bars([0], 60, 4)))).any()
    piano = (0, False, _bars([0, 8], 60, 4))
    piece = Piece("band", BAR, open_hat, open_hat, open_hat)
    row = score_piece(piece, closed_hat, 4)
    assert row["kit_copy"] == 0.0 and row["kit_model"] == pytest.approx(2 / 3)
    assert score_piece(piece, _score(piano), 4)["kit_model"] == 1.0
    no_drums = Piece("piano", BAR, _score(piano), _score(piano), _score(piano))
    assert "kit_model" not in score_piece(no_drums, closed_hat, 4)


def test_copy_baseline_groove_ratio_and_targets():
    rows = [
        {
            "tracks": 2, "keep_model": 2, "keep_real": 2, "keep_copy": 2,
            "notes_model": 10, "density_model": 1.0, "density_copy": 1.0,
            "pitch_class_model": 0.2, "pitch_class_copy": 0.2,
            "in_key_model": 0.9, "in_key_real": 0.9, "in_key_copy": 0.9,
            "groove_model": 0.7, "groove_real": 0.7, "groove_copy": 1.0,
            "range_model": 1.0, "range_copy": 1.0, "seconds": 1.0, "tokens": 100,
        }
    ]  # fmt: skip
    summary = summarize(rows)
    assert summary["groove_ratio"] == 1.0 and summary["pitch_class_ratio"] == 1.0
    targets = check_targets(summary, speed=True)
    assert all(t["pass"] for t in targets.values()) and "seconds_median" in targets
    silent = summarize([rows[0] | {"keep_model": 0, "density_model": 0.1, "notes_model": 0}])
    failed = {k for k, t in check_targets(silent, speed=False).items() if not t["pass"]}
    assert failed == {"keeps_playing", "density_in_range", "density_min"}
    assert silent["empty_continuations"] == 1


def test_make_piece_skips_leading_empty_bars(tmp_path: Path):
    score = make_score(bars=14, tracks=((0, False), (0, True)), tpq=TPQ)
    score = score.shift_time(2 * BAR)  # two empty bars first
    piece = make_piece(write_midi(tmp_path / "p.mid", score), 8, 4)
    assert piece is not None and piece.bar == BAR
    assert min(n.time for t in piece.prompt.tracks for n in t.notes) == 0
    assert max(n.time for t in piece.prompt.tracks for n in t.notes) < 8 * BAR
    assert piece.real.note_num() and piece.real.end() <= 4 * BAR + TPQ
    assert make_piece(write_midi(tmp_path / "short.mid", make_score(bars=6)), 8, 4) is None


def test_folder_versions_count_once(tmp_path: Path):
    for name in ("song_v0", "song_v1", "other_v0"):
        write_midi(tmp_path / "band" / f"{name}.mid", bars=13)
    source = from_folder("band", tmp_path / "band", "test")
    assert sorted(p.name for p in source.files) == ["other_v0.mid", "song_v0.mid"]


def test_cli_end_to_end(tmp_path: Path, tiny_checkpoint: Path, capsys):
    for i in range(2):
        write_midi(tmp_path / "band" / f"piece{i}.mid", bars=13, tracks=((0, False), (0, True)))
    out_json, out_md = tmp_path / "eval.json", tmp_path / "eval.md"
    code = main(
        ["evaluate-groups", "--checkpoint", str(tiny_checkpoint), "--compare",
         str(tiny_checkpoint), "--group", f"full_band={tmp_path / 'band'}", "--pieces", "2",
         "--long-pieces", "1", "--long-bars", "2", "--json", str(out_json), "--markdown",
         str(out_md), "--quiet"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out_json.read_text())
    assert len(report["models"]) == 2
    group = report["models"][0]["groups"]["full_band"]
    assert group["summary"]["pieces"] == 2 and group["summary"]["long_pieces"] == 1
    assert group["summary"]["keeps_playing_copy"] == 1.0
    assert {"keeps_playing", "seconds_median"} <= set(group["targets"])
    # same seeds, same checkpoint: the two columns agree
    assert (
        report["models"][1]["groups"]["full_band"]["pieces"][0]["notes_model"]
        == (group["pieces"][0]["notes_model"])
    )
    table = out_md.read_text()
    assert table.count("| full_band |") == 4 and "Long pieces" in table
    assert main(["evaluate-groups", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "--group" in capsys.readouterr().err
    # --candidates K: each piece's continuation is the best of K, and the title says so.
    group_flag = ["--group", f"full_band={tmp_path / 'band'}", "--pieces", "1", "--quiet"]
    common = ["evaluate-groups", "--checkpoint", str(tiny_checkpoint), *group_flag]
    assert main([*common, "--candidates", "2", "--markdown", str(out_md)]) == 0
    assert "best of 2 candidates" in out_md.read_text()
    assert main([*common, "--candidates", "0"]) == 2
    assert "candidates=0" in capsys.readouterr().err
    # Guidance flags override the settings' defaults; a bad strength is a one-line error.
    assert main([*common, "--key-guidance", "0", "--markdown", str(out_md)]) == 0
    assert "key guidance 0.0" in out_md.read_text()
    assert main([*common, "--groove-guidance", "9"]) == 2
    assert "groove_guidance must be" in capsys.readouterr().err


def test_the_measuring_commands_sample_as_the_app_does():
    """A figure in the model card must describe what a user gets: same top-p by default."""
    from musegen.cli import build_parser
    from musegen.evaluate import EvalSettings
    from musegen.generation.settings import GenerationSettings

    app = GenerationSettings().top_p
    assert GroupEvalSettings().top_p == EvalSettings().top_p == app
    parser = build_parser()
    for command in ("evaluate", "evaluate-groups"):
        args = parser.parse_args([command, "--data", "somewhere"])
        assert args.top_p == app
