"""One training step (fwd + bwd + AdamW) of a model, median of several: compare two trees.

    python benchmarks/bench_train_step.py --attention absolute            # this tree
    git worktree add /tmp/base 001ee13 && \
      python benchmarks/bench_train_step.py --tree /tmp/base --attention absolute

Same shape as bench_model's training row (``small`` preset, L = 512, batch 8); several timed
steps instead of one, because one step on a shared 2-core machine varies by ±20 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--attention", default="relative")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree))
    import torch
    import torch.nn.functional as F

    from musegen.config import preset
    from musegen.model import MusicTransformer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MusicTransformer(
        preset("small", vocab_size=502, max_seq_len=512, attention=args.attention)
    )
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    ids = torch.randint(0, 500, (8, 513))
    times = []
    for _ in range(args.steps + 1):  # the first step warms up
        start = time.perf_counter()
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    print(f"{args.tree} {args.attention}: median {statistics.median(times[1:]):.3f} s/step")


if __name__ == "__main__":
    main()
