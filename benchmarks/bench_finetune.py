"""Fine-tuning, measured: full and LoRA fine-tunes of the default model vs training from scratch,
at the same wall-clock budget, on a small style corpus held out from the default model.

    python benchmarks/bench_finetune.py --data data/style_prepared --minutes 10   # full
    python benchmarks/bench_finetune.py --data data/style_prepared --quick        # smoke run

``--data`` must be prepared with the default model's tokenizer (``musegen prepare SRC OUT
--tokenizer-from CHECKPOINT``) from a collection the model did not train on. Each run gets the
same ``--minutes`` (``max_minutes``; quick: a few steps); the result is the test-split NLL of
the run's best checkpoint (and of the untouched base, for reference). Writes
``benchmarks/results/finetune[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from musegen.checkpoint import load_pretrained
from musegen.evaluate import EvalSettings, continuations, load_corpus
from musegen.pipeline import Pipeline, default_checkpoint
from musegen.training.config import TrainConfig
from musegen.training.deploy import corpus_windows, windows_nll
from musegen.training.finetune import finetune_configs
from musegen.training.loop import train

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
STATS = (
    "pitch_class_histogram_distance",
    "note_density_ratio",
    "groove_consistency_generated",
    "groove_consistency_real",
    "token_error_rate_constrained",
)


def measure(pipeline: Pipeline, args) -> tuple[float, dict]:
    """Test NLL and ``musegen evaluate``'s continuation figures of ``pipeline`` on the style."""
    nll = windows_nll(pipeline.model, *args.windows)
    settings = EvalSettings(num_prompts=args.prompts, progress=False)
    found = continuations(pipeline, args.corpus, settings)
    return nll, {name: found[name] for name in (*STATS, "prompts") if name in found}


def run_one(name: str, args, work: Path) -> dict:
    common = dict(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        max_steps=args.max_steps,
        max_minutes=args.minutes,
        eval_every=args.eval_every,
        save_every=args.eval_every,
        sample_tokens=0,
        device="cpu",
        progress=False,
        threads=args.threads,
    )
    out = str(work / name)
    if name == "scratch":
        base = load_pretrained(args.checkpoint).config
        config = TrainConfig(data=args.data, out=out, lr=5e-4, **common)
        model = base.with_overrides()
    else:
        rank = args.lora_rank if name == "lora" else 0
        config, model = finetune_configs(args.checkpoint, args.data, out, rank, train=common)
    started = time.monotonic()
    result = train(config, model)
    seconds = time.monotonic() - started
    nll, stats = measure(Pipeline.from_pretrained(result.best_dir), args)
    row = {"run": name, "steps": result.steps, "seconds": seconds, "nll": nll}
    row["continuations"] = stats
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="style corpus, the model's tokenizer")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: shipped model")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall clock per run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=12, help="held-out continuation prompts")
    args = parser.parse_args()
    args.checkpoint = args.checkpoint or default_checkpoint()
    args.batch_size, args.seq_len = (2, 64) if args.quick else (8, 512)
    args.max_steps = 3 if args.quick else 100_000  # the clock stops a full run
    args.eval_every = 3 if args.quick else 100
    if args.quick:
        args.minutes, args.prompts = None, min(args.prompts, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = Pipeline.from_pretrained(args.checkpoint)
    tokenizer = base.tokenizer
    args.windows = corpus_windows(
        args.data, tokenizer, "test", args.seq_len, 8 if args.quick else 128
    )
    args.corpus = load_corpus(Path(args.data), "test", tokenizer)
    base_nll, base_continuations = measure(base, args)
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "minutes_per_run": args.minutes,
        "quick": args.quick,
        "base_nll": base_nll,
        "base_continuations": base_continuations,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        for name in ("full", "lora", "scratch"):
            results["runs"].append(run_one(name, args, Path(tmp)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"finetune{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"wrote {path}")


def table(results: dict) -> str:
    """The runs as a markdown table (the base model first, untouched)."""
    lines = [
        f"{results['minutes_per_run']} min per run, {results['when']}; continuations: "
        f"{results['base_continuations'].get('prompts', 0)} held-out prompts, 4 bars each.\n",
        "| run | steps | test NLL | pitch-class dist. | density ratio | groove (real) "
        "| token errors |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        {
            "run": "base (no training)",
            "steps": 0,
            "nll": results["base_nll"],
            "continuations": results["base_continuations"],
        },
        *results["runs"],
    ]
    for r in rows:
        c = r["continuations"]
        lines.append(
            f"| {r['run']} | {r['steps']} | {r['nll']:.4f} "
            f"| {c.get('pitch_class_histogram_distance', float('nan')):.3f} "
            f"| {c.get('note_density_ratio', float('nan')):.2f} "
            f"| {c.get('groove_consistency_generated', float('nan')):.2f} "
            f"({c.get('groove_consistency_real', float('nan')):.2f}) "
            f"| {c.get('token_error_rate_constrained', float('nan')):.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
