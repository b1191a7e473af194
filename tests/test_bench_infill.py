"""bench_infill's suffix sweep: the same-left-view control sees as much of the left side as
the target's first token does with the suffix in place."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_infill as bench

from musegen.data.infill import InfillVocab

V = 20
VOCAB = InfillVocab(16, 17, 18, 19, 1, np.zeros(V, np.int8), np.full(V, -2))


class Recorder(torch.nn.Module):
    """Uniform logits; remembers the length of every prompt+target it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.lengths: list[int] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.lengths.append(ids.shape[1] + 1)
        return torch.zeros(1, ids.shape[1], V)


def test_the_same_view_control_cuts_the_left_side_by_what_the_suffix_takes():
    prefix, given, suffix, target = (np.full(n, 2) for n in (300, 10, 100, 20))
    model = Recorder()
    out = bench.suffix_sweep(model, 128, prefix, given, suffix, target, VOCAB, [16, 64])
    assert list(out) == ["16", "64"]
    both_16, same_16, both_64, same_64 = model.lengths
    assert both_16 == 300 + 10 + 16 + 3 + 20  # prefix, Span, given, Suffix, right, Fill, target
    assert same_16 == (128 - 10 - 16 - 3) + 10 + 3 + 20  # the left side it would see, no suffix
    assert both_64 == 300 + 10 + 64 + 3 + 20
    assert same_64 == (128 - 10 - 64 - 3) + 10 + 3 + 20
    assert all(np.isclose(v["both_sides"], np.log(V)) for v in out.values())  # uniform logits


def test_an_unbounded_model_keeps_the_whole_left_side():
    prefix, given, suffix, target = (np.full(n, 2) for n in (300, 10, 100, 20))
    model = Recorder()
    bench.suffix_sweep(model, None, prefix, given, suffix, target, VOCAB, [64])
    assert model.lengths[1] == 300 + 10 + 3 + 20


def test_guidance_at_scale_zero_is_the_plain_prediction_and_amplifies_the_right_side():
    target = np.array([3, 5])
    left = torch.zeros(2, V)
    both = left.clone()
    both[:, 3] = 1.0  # the right side raises token 3: right for the first token, wrong after
    plain = float(torch.nn.functional.cross_entropy(both, torch.as_tensor(target)))
    assert np.isclose(bench.guided_nll(both, left, target, 0.0), plain)
    amplified = both + 2.0 * (both - left)
    expected = float(torch.nn.functional.cross_entropy(amplified, torch.as_tensor(target)))
    assert np.isclose(bench.guided_nll(both, left, target, 2.0), expected)
    first = slice(0, 1)  # the token the right side got right: guidance lowers its NLL
    assert bench.guided_nll(both[first], left[first], target[first], 2.0) < bench.guided_nll(
        both[first], left[first], target[first], 0.0
    )


def test_seam_statistics_average_the_samples():
    import symusic

    def score(n: int) -> symusic.Score:
        s = symusic.Score(480)
        t = symusic.Track(program=0)
        for i in range(n):
            t.notes.append(symusic.Note(i * 480, 480, 60, 80))
        s.tracks.append(t)
        return s

    out = bench.seam([score(4), score(16)], score(8))
    assert out["density_ratios"] == [0.5, 2.0]
    assert np.isclose(out["density_err"], np.log(2))  # |log 0.5| and |log 2| alike
    assert out["pc_distance"] == 0.0  # every note a C, as in the real bars
