"""How often does a checkpoint keep every track of a band playing? The hand-made pop-rock groove
of ``tests/test_shipped_checkpoint.py`` (drums, root-fifth bass, piano, guitar), continued for
4 bars in 8 variations per seed set.

    python benchmarks/bench_band_tracks.py CHECKPOINT [CHECKPOINT ...] [--seeds 0,100]
        [--track-guidance S]

Prints, per checkpoint and seed set, the variations in which all four tracks play at least 2
notes, and each variation's note count per track. One seed set of 8 is too few to compare two
models (it moved by 3 between seed sets for the same model), hence several.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_shipped_checkpoint import BAND_TRACKS, band_prompt, every_track_plays, track_notes

from musegen.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--seeds", default="0,100", help="first seed of each set of 8 variations")
    ap.add_argument(
        "--track-guidance", type=float, default=None, help="strength (default: the app's)"
    )
    args = ap.parse_args()
    overrides = {} if args.track_guidance is None else {"track_guidance": args.track_guidance}
    for checkpoint in args.checkpoints:
        pipe = Pipeline.from_pretrained(checkpoint)
        total = kept = 0
        for seed in (int(s) for s in args.seeds.split(",")):
            results = pipe.continue_midi(band_prompt(), 8, bars=4, seed=seed, **overrides)
            notes = [track_notes(r) for r in results]
            ok = sum(map(every_track_plays, notes))
            total, kept = total + len(notes), kept + ok
            rows = [{BAND_TRACKS.get(k, str(k)): n for k, n in row.items()} for row in notes]
            print(f"{checkpoint} seeds {seed}..{seed + 7}: all four tracks in {ok} of 8; {rows}")
        print(f"{checkpoint}: all four tracks in {kept} of {total} variations")


if __name__ == "__main__":
    main()
