"""Best-of-K infilling: each sample is the candidate closest in key and note density to the
bars around the span (musegen.generation.seam)."""

from __future__ import annotations

import numpy as np
import pytest
import symusic
from conftest import make_score
from test_infill import BAND, check_result, pipe  # noqa: F401 - the tiny pipeline fixture

from musegen.errors import MusegenError
from musegen.generation.seam import SeamJudge, best_of
from musegen.pipeline import DEFAULT_CANDIDATES

TPQ, BAR = 480, 1920
C_MAJOR = (60, 62, 64, 65, 67, 69, 71, 72)  # eight notes: a bar of eighths holds each once
F_SHARP_MAJOR = (66, 68, 70, 71, 73, 75, 77, 78)


def bars_of(pitches, per_bar: int, bars: int, program: int = 0, drum: bool = False):
    """A track of ``bars`` bars with ``per_bar`` even notes each, cycling through ``pitches``."""
    track = symusic.Track(program=program, is_drum=drum)
    step = BAR // per_bar
    for i in range(bars * per_bar):
        track.notes.append(symusic.Note(i * step, step, pitches[i % len(pitches)], 80))
    return track


def piece(*tracks: symusic.Track) -> symusic.Score:
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for t in tracks:
        score.tracks.append(t)
    return score


def test_best_of_keeps_the_smallest_distance_of_each_group():
    assert best_of([3.0, 1.0, 2.0, 5.0, 4.0, 4.0], 3) == [1, 4]  # a tie: the first
    assert best_of([1.0, 2.0], 1) == [0, 1]


def test_the_key_and_the_density_of_the_bars_around_decide():
    around = piece(bars_of(C_MAJOR, 8, 12))  # bars 5-8 get replaced
    judge = SeamJudge(around, (5, 8), None)
    same = piece(bars_of(C_MAJOR, 8, 4))
    assert judge.distance(same) == pytest.approx(0.0)
    other_key = judge.distance(piece(bars_of(F_SHARP_MAJOR, 8, 4)))
    busier = judge.distance(piece(bars_of(C_MAJOR, 32, 4)))
    silent = judge.distance(piece(symusic.Track(program=0)))
    assert 0.5 < other_key < 1 and busier == pytest.approx(np.log(32.5 / 8.5))
    assert silent > max(other_key, busier)  # an empty span is never preferred
    assert best_of([judge.distance(piece(t)) for t in (
        bars_of(F_SHARP_MAJOR, 8, 4), bars_of(C_MAJOR, 32, 4), bars_of(C_MAJOR, 7, 4)
    )], 3) == [2]  # fmt: skip


def test_only_the_target_tracks_are_judged_and_a_new_track_takes_the_key_only():
    around = piece(bars_of(C_MAJOR, 8, 12, program=0), bars_of((36, 42), 16, 12, drum=True))
    piano_span = piece(bars_of(C_MAJOR, 8, 4, program=0), bars_of((36,), 1, 4, drum=True))
    # Regenerating the piano: the (kept) drums inside the span do not count.
    assert SeamJudge(around, (5, 8), frozenset({0})).distance(piano_span) == pytest.approx(0.0)
    # Drums have no key: judged by density alone.
    drums = SeamJudge(around, (5, 8), frozenset({-1}))
    assert drums.pitch_classes is None and drums.notes_per_bar == 16
    assert drums.distance(piece(bars_of((36,), 16, 4, drum=True))) == pytest.approx(0.0)
    # An added bass has nothing around it: any density, the piece's key.
    bass = SeamJudge(around, (5, 8), frozenset({33}))
    assert bass.notes_per_bar is None
    sparse = piece(bars_of((36, 43), 1, 4, program=33))  # C and G: in key
    assert bass.distance(sparse) < bass.distance(piece(bars_of((37, 42), 8, 4, program=33)))


def test_the_right_side_counts_and_a_span_with_nothing_around_cannot_be_judged():
    turning = piece(bars_of(C_MAJOR, 8, 8))  # bars 1-8 in C, bars 9-12 in F#; span 5-8
    turning.tracks[0].notes.extend(bars_of(F_SHARP_MAJOR, 8, 4).shift_time(8 * BAR).notes)
    fs_span = piece(bars_of(F_SHARP_MAJOR, 8, 4))
    both = SeamJudge(turning, (5, 8), None).distance(fs_span)
    left_only = SeamJudge(turning, (5, 8), None, right=False).distance(fs_span)
    assert both < left_only  # the right side is in F# too
    whole = SeamJudge(piece(bars_of(C_MAJOR, 8, 4)), (1, 4), None)
    assert whole.distance(fs_span) == whole.distance(piece(bars_of(C_MAJOR, 8, 4))) == 0.0


def test_each_sample_is_the_best_of_its_own_draws(pipe):  # noqa: F811
    score = make_score(bars=8, tracks=BAND, seed=3)
    drawn = pipe.infill(score, bars=(3, 5), num_samples=6, seed=20, candidates=1)
    judge = SeamJudge(score, (3, 5), None)
    want = [drawn[i] for i in best_of([judge.distance(r.continuation) for r in drawn], 3)]
    got = pipe.infill(score, bars=(3, 5), num_samples=2, candidates=3, seed=20)
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert [r.seed for r in got] == [r.seed for r in want]
    assert 20 <= got[0].seed < 23 <= got[1].seed < 26  # sample k draws seeds 20+3k … 22+3k
    for r in got:
        check_result(pipe, score, r, 3, 5, targets={0, 1, 2})
    default = pipe.infill(score, bars=(3, 5), seed=20)[0]  # DEFAULT_CANDIDATES draws
    assert 20 <= default.seed < 20 + DEFAULT_CANDIDATES


def test_partial_results_show_one_candidate_per_sample(pipe):  # noqa: F811
    score = make_score(bars=8, tracks=BAND)
    steps = list(pipe.stream_infill(score, (3, 4), num_samples=2, every=8, candidates=3))
    assert len(steps) > 1 and all(len(step) == 2 for step in steps)


@pytest.mark.parametrize("candidates", [0, 17, 2.5, True, "3"])
def test_a_bad_candidate_count_is_a_one_line_error(pipe, candidates):  # noqa: F811
    with pytest.raises(MusegenError, match="candidates"):
        pipe.infill(make_score(bars=6), bars=(2, 3), candidates=candidates)


def test_cli_candidates_are_recorded_and_checked(pipe, tmp_path, capsys):  # noqa: F811
    from conftest import write_midi
    from test_infill import infill_cli, manifest

    midi = write_midi(tmp_path / "a.mid", bars=6, tracks=BAND, seed=1)
    out = tmp_path / "out"
    args = ["--bars", "2-3", "--seed", "4", "--candidates", "3"]
    assert infill_cli(pipe.checkpoint_dir, midi, out, *args) == 0
    row = manifest(out)[-1]
    assert row["candidates"] == 3 and 4 <= row["seed"] < 7
    best = pipe.infill(midi, bars=(2, 3), candidates=3, seed=4)[0]
    assert row["seed"] == best.seed and row["new_tokens"] == best.new_tokens
    # Another candidate count is another request: redone, not skipped.
    assert infill_cli(pipe.checkpoint_dir, midi, out, *args[:-1], "1") == 0
    assert manifest(out)[-1]["candidates"] == 1
    assert infill_cli(pipe.checkpoint_dir, midi, out, *args[:-1], "0") == 2
    assert "candidates=0" in capsys.readouterr().err
