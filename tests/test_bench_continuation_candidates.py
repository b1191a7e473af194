"""bench_continuation_candidates: each weighting of the judge picks its own candidate, and the
group's figures are those of the picks."""

from __future__ import annotations

import sys
from pathlib import Path

import symusic
from conftest import write_midi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_continuation_candidates as bench

from musegen.eval_pieces import make_piece
from musegen.evaluate_groups import score_piece


def test_each_weighting_picks_by_its_own_terms(tmp_path: Path):
    piece = make_piece(write_midi(tmp_path / "a.mid", bars=13, seed=4), 8, 4)
    real = score_piece(piece, piece.real, 4)  # a perfect candidate: pitch-class distance 0
    other = symusic.Score(piece.real.tpq)  # a silent one
    silent = score_piece(piece, other, 4)
    # The real bars look far in key, the silent ones only in density and groove: key-only
    # judging keeps the silent draw, density and groove judging the real one.
    cands = [{"terms": (1.0, 0.0, 0.0), "row": real}, {"terms": (0.0, 0.4, 0.4), "row": silent}]
    lines = bench.table({"band": [cands]}, 2).splitlines()
    by = {tuple(line.split(" | ")[:2]): line for line in lines[2:]}
    key_only, rhythm = by[("| (1.0, 0.0, 0.0)", "2")], by[("| (0.0, 1.0, 1.0)", "2")]
    assert " | 0.00 · 1.00 · " in rhythm  # pitch-class ratio 0, every track keeps playing
    assert " · 0.00 · " in key_only and " | 0.00 · " not in key_only  # no track keeps playing
    for weights in bench.WEIGHTINGS:  # one candidate: nothing to choose, the first is kept
        assert " | 0.00 · 1.00 · " in by[(f"| {weights}", "1")]
    assert len(lines) == 2 + len(bench.WEIGHTINGS) * 2  # K = 1 and 2 for each weighting
