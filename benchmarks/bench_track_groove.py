"""Where does a continuation lose the prompt's rhythm: in the drums or in the pitched tracks?

The groove column of ``musegen evaluate-groups`` averages every track of a piece; this splits it.
Each piece's first 8 bars are continued for 4 (seed SEED+i for piece i, the app's defaults, as
``evaluate-groups`` draws them), and each track of the prompt's last 4 bars gets the groove of
the new bars and of the real next bars (the Jaccard similarity of each bar's 16th-note onsets to
the best-matching prompt bar of that track, :func:`musegen.metrics.onset_similarity_by_track`).

    python benchmarks/bench_track_groove.py FOLDER [--split val] [--pieces 16] [--seed 0] \
        [--checkpoint CKPT ...] [--json FILE] [--repeat-guidance S …]

FOLDER is a built corpus (its ``corpus.json`` split) or any folder of MIDI files (every file).
Prints, per checkpoint, the mean over tracks for drums and for pitched tracks, model / real.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from musegen import metrics
from musegen.eval_pieces import from_folder, pieces
from musegen.evaluate_groups import GroupEvalSettings, continue_piece
from musegen.generation.settings import add_guidance_overrides, guidance_overrides
from musegen.pipeline import Pipeline

PROMPT_BARS, NEW_BARS = 8, 4


def track_rows(
    pipe: Pipeline, folder: Path, split: str, count: int, seed: int, guidance: dict | None = None
) -> list[dict]:
    """One row per (piece, prompt track): its kind and groove, model and real."""
    settings = GroupEvalSettings(progress=False, guidance=guidance or {})
    rows = []
    for i, piece in enumerate(pieces(from_folder("g", folder, split), count, PROMPT_BARS, 4)):
        new = continue_piece(pipe, piece, PROMPT_BARS, NEW_BARS, seed + i, settings)["new"]
        model = metrics.onset_similarity_by_track(piece.tail, new, piece.bar, NEW_BARS)
        real = metrics.onset_similarity_by_track(piece.tail, piece.real, piece.bar, NEW_BARS)
        for key, values in model.items():
            rows.append(
                {
                    "piece": piece.name,
                    "program": key[0],
                    "drums": key[1],
                    "model": float(np.mean(values)),
                    "real": float(np.mean(real[key])),
                }
            )
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for kind, drums in (("drums", True), ("pitched", False)):
        chosen = [r for r in rows if r["drums"] == drums]
        out[kind] = {
            "tracks": len(chosen),
            "model": float(np.mean([r["model"] for r in chosen])) if chosen else None,
            "real": float(np.mean([r["real"] for r in chosen])) if chosen else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--pieces", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", nargs="+", default=[None], help="default: the shipped model")
    ap.add_argument("--json", type=Path)
    add_guidance_overrides(ap)
    args = ap.parse_args()
    report = {}
    for checkpoint in args.checkpoint:
        pipe = Pipeline.from_pretrained(checkpoint)
        rows = track_rows(
            pipe, args.folder, args.split, args.pieces, args.seed, guidance_overrides(args)
        )
        name = checkpoint or "default"
        report[name] = {"summary": summary(rows), "tracks": rows}
        for kind, s in report[name]["summary"].items():
            if s["tracks"]:
                print(f"{name}: {kind} ({s['tracks']} tracks) groove {s['model']:.2f} / real "
                      f"{s['real']:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
