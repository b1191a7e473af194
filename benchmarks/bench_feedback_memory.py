"""Peak memory and time of one feedback training step: the memory kept in parts (what a
training forward does) against one concatenated tensor per layer (the earlier layout, whose
saved keys grow as L²/2; see *Training memory* in ``musegen/model/feedback.py``).

    python benchmarks/bench_feedback_memory.py [--batch 8] [--length 128] [--steps 2]
        [--variant parts]

Each variant runs in its own process (peak RSS is per process), at the attention-family
benchmark's full shape (d_model 256, 6 layers, 8 heads). Prints one line per variant.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))


def step(batch: int, length: int, steps: int, parts: bool) -> None:
    from bench_attention_family import MODES, model_config

    from musegen.model import MusicTransformer
    from musegen.model.feedback import FeedbackCache

    if not parts:  # the earlier code: one growing tensor per layer, saved at every step
        FeedbackCache.keep_parts = lambda self: None
    mode = MODES["full"]
    torch.manual_seed(0)
    model = MusicTransformer(model_config("feedback", mode, 506, mode["seq_len"])).train()
    ids = torch.randint(0, 506, (batch, length + 1))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    name = "parts" if parts else "concatenated"
    print(f"{name:>12}: B={batch} L={length}: last step {times[-1]:.1f} s, peak RSS {peak:.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument(
        "--variant",
        choices=["parts", "concatenated"],
        help="only this one, in this process (default: both, each in its own)",
    )
    args = ap.parse_args()
    if args.variant:
        return step(args.batch, args.length, args.steps, args.variant == "parts")
    for variant in ("parts", "concatenated"):
        cmd = [sys.executable, __file__, "--variant", variant, "--batch", str(args.batch)]
        subprocess.run([*cmd, "--length", str(args.length), "--steps", str(args.steps)], check=True)


if __name__ == "__main__":
    main()
