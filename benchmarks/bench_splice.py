"""How often are the new bars put after the prompt as it was given (``generation/splice.py``)?

Each folder's MIDI files (a seeded sample of FILES of them) are continued for 1 bar from their
bars 1-8 with the default checkpoint and settings. A result that could not be lined up with the
model's reading of its prompt carries the ``UNSPLICED`` warning and comes back as the model read
it. Printed per folder: files continued, spliced, not spliced (named), refused (a file the
pipeline turns down, e.g. no notes in bars 1-8), and whether every spliced result starts at
its file's tempo.

    python benchmarks/bench_splice.py FOLDER [FOLDER ...] [--files 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from musegen.errors import MusegenError
from musegen.pipeline import UNSPLICED, Pipeline
from musegen.tokenizer import load_score


def _first_qpm(score) -> float:
    """The tempo a player starts at: a tempo event's at tick 0, else MIDI's default 120."""
    at_start = [t.qpm for t in score.tempos if t.time == 0]
    return float(at_start[-1]) if at_start else 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained()
    for folder in args.folders:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
        random.Random(args.seed).shuffle(files)
        spliced, unspliced, refused, tempo_kept = 0, [], 0, True
        for path in files[: args.files]:
            try:
                result = pipe.continue_midi(path, 1, bars=1, seed=0, prompt_bars="1-8")[0]
            except MusegenError:
                refused += 1
                continue
            if UNSPLICED in result.warnings:
                unspliced.append(path.name)
                continue
            spliced += 1
            if abs(_first_qpm(result.score) - _first_qpm(load_score(path))) > 1e-3:
                tempo_kept = False
        print(
            f"{folder}: {spliced + len(unspliced) + refused} files: {spliced} spliced, "
            f"{len(unspliced)} not spliced {unspliced}, {refused} refused; starting tempo kept "
            f"in every spliced result: {tempo_kept}"
        )


if __name__ == "__main__":
    main()
