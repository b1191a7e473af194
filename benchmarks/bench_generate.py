"""Pipeline generation speed against the bare model loop, and token errors without the grammar.

    python benchmarks/bench_generate.py                  # small preset, batch 4, 256 tokens
    python benchmarks/bench_generate.py --quick          # tiny preset, fewer tokens

The bare loop is prefill + one cached forward + top-p sampling per step on raw logits. The
pipeline does everything a user gets: MIDI → tokens, grammar masks, processors, stopping,
decoding back to scores. Both produce the same number of tokens (a token budget, no bars), so
the ratio is the overhead of constraints and decoding (issue 5 target: ≤ 15 %).

The second part samples 100 continuations from a random tiny model per tokenizer with and
without the grammar and reports miditok's ``tokens_errors`` rate for each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_score

from musegen.config import preset
from musegen.model.transformer import MusicTransformer
from musegen.pipeline import Pipeline
from musegen.tokenizer import TokenizerSettings, build_tokenizer, encode

PROMPT = make_score(bars=4, tracks=((0, False), (33, False), (0, True)))


def pipeline_for(kind: str, shape: str) -> Pipeline:
    tokenizer = build_tokenizer(TokenizerSettings(kind=kind))
    torch.manual_seed(0)
    config = preset(shape, vocab_size=len(tokenizer), dropout=0.0)
    return Pipeline(MusicTransformer(config).eval(), tokenizer, config)


@torch.inference_mode()
def bare_loop(pipe: Pipeline, prompt: list[int], batch: int, tokens: int) -> float:
    """Seconds for prefill + ``tokens`` cached steps with plain top-p sampling."""
    model, gen = pipe.model, torch.Generator().manual_seed(0)
    started = time.perf_counter()
    ids = torch.tensor([prompt] * batch)
    cache = model.new_cache(batch)
    logits = model(ids, cache=cache)[:, -1]
    for _ in range(tokens):
        probs = logits.float().softmax(-1)
        sorted_p, order = probs.sort(-1, descending=True)
        sorted_p.masked_fill_(sorted_p.cumsum(-1) - sorted_p > 0.95, 0.0)
        nxt = order.gather(-1, torch.multinomial(sorted_p, 1, generator=gen))
        logits = model(nxt, cache=cache)[:, -1]
    return time.perf_counter() - started


def speed(shape: str, batch: int, tokens: int, repeats: int) -> None:
    pipe = pipeline_for("REMI", shape)
    prompt = [pipe.bos, *encode(pipe.tokenizer, PROMPT)]
    pipe.continue_midi(PROMPT, batch, bars=None, max_new_tokens=8, seed=0)  # warm-up
    bare, full, made = [], [], 0
    for r in range(repeats):
        bare.append(bare_loop(pipe, prompt, batch, tokens))
        t0 = time.perf_counter()
        results = pipe.continue_midi(PROMPT, batch, bars=None, max_new_tokens=tokens, seed=r)
        full.append(time.perf_counter() - t0)
        made = sum(r.new_tokens for r in results)
    b, f = min(bare), min(full)
    print(f"speed ({shape}, batch {batch}, {tokens} new tokens, best of {repeats}):")
    print(f"  bare model loop   {batch * tokens / b:8.1f} tokens/s ({b:.2f} s)")
    print(f"  pipeline          {made / f:8.1f} tokens/s ({f:.2f} s, constrained, decoded)")
    print(f"  overhead          {100 * (f / b - 1):+.1f} %  (target ≤ 15 %)")


def error_rates(samples: int, tokens: int) -> None:
    print(f"token errors over {samples} continuations of a random tiny model ({tokens} tokens):")
    for kind in ("REMI", "TSD", "MIDILike"):
        pipe = pipeline_for(kind, "tiny")
        row = []
        for constrained in (True, False):
            errors = total = 0
            for start in range(0, samples, 20):
                for r in pipe.continue_midi(
                    PROMPT,
                    min(20, samples - start),
                    bars=None,
                    max_new_tokens=tokens,
                    seed=start,
                    constrained=constrained,
                ):
                    full = r.prompt_ids + r.tokens
                    errors += round(pipe.tokenizer.tokens_errors(full) * len(full))
                    total += r.new_tokens
            row.append(
                f"{'constrained' if constrained else 'unconstrained'} "
                f"{errors / max(total, 1):.3%} ({errors} errors / {total} tokens)"
            )
        print(f"  {kind:9s} " + "; ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, fewer tokens")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--samples", type=int, default=100, help="continuations per tokenizer (0: skip)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = "tiny" if args.quick else "small"
    speed(shape, args.batch, 64 if args.quick else args.tokens, args.repeats)
    if args.samples:
        error_rates(args.samples, 48 if args.quick else 96)


if __name__ == "__main__":
    main()
