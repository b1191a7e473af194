"""Ship a training run as a checkpoint: float16 weights, the data it learnt from and their
licences (from the prepared manifest), and the notes per instrument it saw (for generation's
honest limits).

    python scripts/ship_checkpoint.py runs/mix/latest data/prepared_mix checkpoints/musegen-mix
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from musegen.checkpoint import load_pretrained, save_pretrained
from musegen.data.dataset import MANIFEST, PreparedDataset
from musegen.data.stats import program_counts
from musegen.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_checkpoint", type=Path)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    loaded = load_pretrained(args.run_checkpoint)
    dataset = PreparedDataset.open(args.prepared)
    if load_tokenizer(dataset.tokenizer_path).vocab != loaded.tokenizer.vocab:
        raise SystemExit(f"{args.prepared} was not prepared with this checkpoint's tokenizer")
    manifest = json.loads((args.prepared / MANIFEST).read_text())
    sources = [
        {k: s[k] for k in ("name", "licence", "attribution", "url", "files", "groups") if k in s}
        for s in manifest.get("sources", [])
    ]
    extra = {k: v for k, v in loaded.meta.items() if k not in ("model", "musegen_version")}
    extra["training_programs"] = {
        str(p): n for p, n in program_counts(dataset.split("train"), loaded.tokenizer).items()
    }
    extra["training_data"] = {"sources": sources, "tokens": manifest.get("totals")}
    save_pretrained(loaded.model, loaded.tokenizer, args.out, extra=extra, dtype=torch.float16)
    print(f"shipped {args.run_checkpoint} → {args.out}")


if __name__ == "__main__":
    main()
