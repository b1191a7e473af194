"""Time the default model's headline request: 4 new bars of a full-band prompt, batch 1, CPU.

    python benchmarks/bench_band_continuation.py [--midi SONG.mid] [--repeats 5] [--threads 2]

Without --midi the prompt is the 8-bar drums/bass/piano/guitar groove of
tests/test_shipped_checkpoint.py. Prints each run and the median (target: ≤ 5 s on 2 cores).
Run it on an idle machine: other load stalls 2-thread torch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musegen.pipeline import Pipeline
from musegen.tokenizer import load_score
from tests.test_shipped_checkpoint import band_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    ap.add_argument("--midi", type=Path, default=None, help="prompt (its first 8 bars)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.checkpoint)
    prompt = band_prompt() if args.midi is None else load_score(args.midi)
    settings = {"bars": 4, "num_samples": 1}
    if args.midi is not None:
        settings["prompt_bars"] = "1-8"
    pipe.continue_midi(prompt, seed=0, **settings)  # warm-up
    times, notes = [], []
    for seed in range(args.repeats):
        start = time.perf_counter()
        [result] = pipe.continue_midi(prompt, seed=seed, **settings)
        times.append(time.perf_counter() - start)
        notes.append(result.continuation.note_num())
        print(f"seed {seed}: {times[-1]:.2f} s, {result.new_tokens} tokens, {notes[-1]} notes")
    print(f"median {statistics.median(times):.2f} s for 4 bars (target ≤ 5 s)")


if __name__ == "__main__":
    main()
