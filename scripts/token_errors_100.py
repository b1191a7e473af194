"""Token error rate of 100 continuations of the bundled examples, with and without constraints.

Reproduces the "100 samples" figure of checkpoints/musegen-music21/MODEL_CARD.md:
    python scripts/token_errors_100.py [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from musegen.evaluate import token_error_rate
from musegen.pipeline import Pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "musegen" / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument("--per-example", type=int, default=25)
    parser.add_argument("--bars", type=int, default=2)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(args.checkpoint)
    tokenizer = pipe.tokenizer
    report = {}
    for constrained in (True, False):
        errors, tokens, samples, started = 0.0, 0, 0, time.time()
        for example in sorted(EXAMPLES.glob("*.mid")):
            results = pipe.continue_midi(
                example, args.per_example, bars=args.bars, seed=args.seed, constrained=constrained
            )
            for r in results:  # errors of the new tokens, judged in the prompt's context
                errors += token_error_rate(tokenizer, r.prompt_ids, r.tokens) * len(r.tokens)
                tokens += len(r.tokens)
                samples += 1
        report["constrained" if constrained else "unconstrained"] = {
            "samples": samples,
            "new_tokens": tokens,
            "token_errors": round(errors),
            "error_rate": errors / max(1, tokens),
            "seconds": round(time.time() - started, 1),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
