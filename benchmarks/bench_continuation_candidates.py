"""How should a continuation's candidates be judged? Weightings of the judge, on held-out pieces.

    python benchmarks/bench_continuation_candidates.py --data data/prepared_mix --split val \
        --pieces 12 --candidates 8 [--json out.json]

Each group's pieces (those of ``musegen evaluate-groups``: 8-bar prompt, 4 new bars) are
continued ``--candidates`` times at once (seeds ``i*K`` … ``i*K+K-1`` for piece i), every draw
scored against the real next bars as ``evaluate-groups`` scores one, and its three judge terms
kept (:func:`musegen.generation.seam.continuation_terms`: key, density, groove against the
prompt's last 4 bars). Then, for each weighting of the terms and each K' ≤ K, the best of the
first K' draws is chosen and the group's figures recomputed: one generation run compares every
judge and every candidate count. Tune on ``--split val``; the model card reports the chosen
judge on the test pieces through ``evaluate-groups --candidates``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musegen.eval_pieces import from_prepared, pieces
from musegen.evaluate_groups import check_targets, new_bars, score_piece, summarize
from musegen.generation.seam import CONTINUATION_WEIGHTS, continuation_terms
from musegen.pipeline import Pipeline

# (key, density, groove) weightings compared; the shipped one is CONTINUATION_WEIGHTS.
WEIGHTINGS = [(1.0, 1.0, 1.0), CONTINUATION_WEIGHTS, (1.0, 0.0, 0.0), (0.0, 1.0, 1.0)]
SHOWN = ("pitch_class_ratio", "keeps_playing", "density_in_range", "groove_ratio")


def draw(pipeline: Pipeline, data: Path, split: str, n: int, k: int) -> dict[str, list]:
    """Per group, per piece: every candidate's judge terms and its evaluate-groups row."""
    out: dict[str, list] = {}
    for source in from_prepared(data, split):
        out[source.name] = []
        for i, piece in enumerate(pieces(source, n, 8, 4)):
            drawn = pipeline.continue_midi(piece.prompt, k, bars=4, seed=i * k)
            out[source.name].append(
                [
                    {
                        "terms": continuation_terms(
                            r.score, r.prompt_end_tick, r.continuation, r.bars
                        ),
                        "row": score_piece(piece, new_bars(piece, r, 4), 4),
                    }
                    for r in drawn
                ]
            )
        print(f"{source.name}: {len(out[source.name])} pieces", file=sys.stderr, flush=True)
    return out


def table(drawn: dict[str, list], k: int) -> str:
    """Each weighting and candidate count: targets met and the figures judged by them."""
    counts = [c for c in (1, 2, 4, 8, 16) if c <= k]
    lines = ["| weights (key, density, groove) | K | targets | " + " | ".join(drawn) + " |"]
    lines.append("|---" * (3 + len(drawn)) + "|")
    for weights in WEIGHTINGS:
        for count in counts:
            cells, met, total = [], 0, 0
            for pieces_ in drawn.values():
                chosen = []
                for cands in pieces_:
                    score = [np.dot(weights, c["terms"]) for c in cands[:count]]
                    chosen.append(cands[int(np.argmin(score))]["row"])
                summary = summarize(chosen)
                targets = check_targets(summary, speed=False)
                met += sum(t["pass"] for t in targets.values())
                total += len(targets)
                cells.append(
                    " · ".join(
                        f"{summary[name]:.2f}" if summary.get(name) is not None else "–"
                        for name in SHOWN
                    )
                )
            lines.append(f"| {weights} | {count} | {met}/{total} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepared dataset with groups")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--pieces", type=int, default=12, help="pieces per group")
    ap.add_argument("--candidates", type=int, default=8, help="draws per piece (K)")
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    ap.add_argument("--json", type=Path, default=None, help="write every draw's terms and row")
    a = ap.parse_args()
    drawn = draw(Pipeline.from_pretrained(a.checkpoint), a.data, a.split, a.pieces, a.candidates)
    if a.json:
        a.json.write_text(json.dumps(drawn, default=float) + "\n")
    print(f"per group: {' · '.join(SHOWN)}\n")
    print(table(drawn, a.candidates))


if __name__ == "__main__":
    main()
