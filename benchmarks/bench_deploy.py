"""Deployment trade-offs: size, speed, NLL and token errors for fp32 / bf16 / int8 / pruned.

For the shipped model (``musegen.pipeline.default_checkpoint()``) and a larger one (the
``base`` preset; randomly initialised unless ``--large CHECKPOINT`` names a trained one: its
NLL and token errors then say nothing, its speed does), each variant gets: the size of
``model.safetensors``, sampling tokens/s at batch 1 and 8 (musegen's sampler, top-p 0.9, from a
random prompt) next to Hugging Face GPT-2 of the same shape in the same run, the test-split
NLL on ``--data`` (a corpus prepared with the model's tokenizer), and the constrained
token-error rate of generated samples.

    python benchmarks/bench_deploy.py --data data/prepared               # full (idle machine)
    python benchmarks/bench_deploy.py --data data/prepared --quick       # a smoke run
    python benchmarks/bench_deploy.py --write-doc                        # docs/deploy.md table
    python benchmarks/bench_deploy.py --speed-repeats 5                  # fp32/int8 speed, medians

Writes ``benchmarks/results/deploy[_quick].json`` and ``deploy[_quick].png`` (NLL vs batch-8
speed); ``--write-doc`` fills the table of ``docs/deploy.md`` from the JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from musegen.checkpoint import load_pretrained, save_pretrained
from musegen.config import ModelConfig, preset
from musegen.evaluate import token_error_rate
from musegen.generation.sampling import Stopping, build_processors, sample
from musegen.model.quant import Int8Linear
from musegen.model.transformer import MusicTransformer
from musegen.pipeline import Pipeline, default_checkpoint
from musegen.training.deploy import corpus_windows, export_int8, windows_nll
from musegen.training.prune import prune_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "deploy.md"
BEGIN, END = "<!-- bench_deploy:begin -->", "<!-- bench_deploy:end -->"
PRUNED_FULL = (("mlp", 0.25), ("mlp", 0.5), ("heads", 0.25), ("magnitude", 0.5))
PRUNED_QUICK = (("mlp", 0.5),)
FP_INT8 = ("fp32", "int8")


def gpt2_like(config: ModelConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_seq_len,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=config.d_ff,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval()


def tps_ours(model, vocab: int, batch: int, prompt: int, new: int) -> float:
    prompts = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    sample(model, prompts.tolist(), build_processors(top_p=0.9), Stopping(new), range(batch))
    return batch * new / (time.perf_counter() - t0)


@torch.no_grad()
def tps_gpt2(model, vocab: int, batch: int, prompt: int, new: int) -> float:
    ids = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        top_p=0.9,
        top_k=0,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=0,
    )
    return batch * new / (time.perf_counter() - t0)


def variants(base: Path, work: Path, data: str | None, pruned, recover: int) -> list[dict]:
    """Every variant of ``base``: name, checkpoint directory, precision, size file."""
    bf16, fp32 = work / "bf16", work / "fp32"
    loaded = load_pretrained(base)  # sizes of files written here (a shipped one may be fp16)
    save_pretrained(loaded.model, loaded.tokenizer, bf16, dtype=torch.bfloat16)
    save_pretrained(loaded.model, loaded.tokenizer, fp32, dtype=torch.float32)
    out = [
        {"variant": "fp32", "dir": base, "precision": "fp32", "size_dir": fp32},
        {"variant": "bf16", "dir": base, "precision": "bf16", "size_dir": bf16},
    ]
    int8 = export_int8(base, work / "int8")
    out.append({"variant": "int8", "dir": int8, "precision": None, "size_dir": int8})
    for kind, sparsity in pruned:
        name = f"pruned-{kind}-{sparsity:g}"
        steps = recover if data else 0
        d = work / name
        prune_checkpoint(base, d, sparsity, None if kind == "magnitude" else kind, data, steps)
        out.append({"variant": name, "dir": d, "precision": None, "size_dir": d})
        if kind != "magnitude":
            out.append({"variant": name + "+int8", "dir": d, "precision": "int8", "size_dir": None})
    return out


def measure(v: dict, args, windows, new: int) -> dict:
    pipe = Pipeline.from_pretrained(v["dir"], precision=v["precision"])
    model, vocab = pipe.model, pipe.config.vocab_size
    params = sum(p.numel() for p in model.parameters())
    params += sum(m.weight_int8.numel() for m in model.modules() if isinstance(m, Int8Linear))
    row = {"variant": v["variant"], "parameters": params}
    if v["size_dir"] is not None:
        row["size_mb"] = (Path(v["size_dir"]) / "model.safetensors").stat().st_size / 1e6
    tps_ours(model, vocab, 8, args.prompt, 4)  # warm-up: allocator, packed weights
    for batch in (1, 8):
        row[f"tps_b{batch}"] = tps_ours(model, vocab, batch, args.prompt, new)
    if windows is not None:
        row["nll"] = windows_nll(model, *windows)
    samples = pipe.generate(num_samples=args.samples, max_new_tokens=args.sample_tokens, seed=0)
    rates = [token_error_rate(pipe.tokenizer, r.prompt_ids, r.tokens) for r in samples]
    row["token_error_rate"] = sum(rates) / len(rates)
    print(json.dumps({k: round(x, 4) if isinstance(x, float) else x for k, x in row.items()}))
    return row


def bench_model(name: str, base: Path, args, work: Path) -> dict:
    loaded = load_pretrained(base)
    config = loaded.config
    windows = None
    if args.data and not name.endswith("(random init)"):
        seq_len = min(config.max_seq_len, 512)
        windows = corpus_windows(args.data, loaded.tokenizer, "test", seq_len, args.windows)
    new = args.new_tokens
    gpt2 = gpt2_like(config)
    reference = {
        f"gpt2_tps_b{b}": tps_gpt2(gpt2, config.vocab_size, b, args.prompt, new) for b in (1, 8)
    }
    print(name, json.dumps(reference))
    pruned = PRUNED_QUICK if args.quick else PRUNED_FULL
    data = args.data if windows is not None else None
    rows = [
        measure(v, args, windows, new) for v in variants(base, work, data, pruned, args.recover)
    ]
    for row in rows:
        for b in (1, 8):
            row[f"vs_gpt2_b{b}"] = row[f"tps_b{b}"] / reference[f"gpt2_tps_b{b}"]
    return {"model": name, "config": config.to_dict(), **reference, "rows": rows}


def speed_repeats(args) -> None:
    """fp32, int8 and GPT-2 timed in turn ``args.speed_repeats`` times: medians of the ratios
    (one timed run per variant, as in the full table, is noisy on a shared machine)."""
    loaded = load_pretrained(args.checkpoint)
    config, prompt, new = loaded.config, 64, 256
    gpt2 = gpt2_like(config)
    models = {p: Pipeline.from_pretrained(args.checkpoint, precision=p).model for p in FP_INT8}
    for model in models.values():
        tps_ours(model, config.vocab_size, 8, prompt, 4)  # warm-up
    ratios: dict[str, list[float]] = {}
    for _ in range(args.speed_repeats):
        for batch in (1, 8):
            reference = tps_gpt2(gpt2, config.vocab_size, batch, prompt, new)
            for precision, model in models.items():
                tps = tps_ours(model, config.vocab_size, batch, prompt, new)
                ratios.setdefault(f"{precision} b{batch}", []).append(tps / reference)
    print(f"{args.checkpoint.name}: × GPT-2 of the same shape, median of {args.speed_repeats}")
    for name, values in ratios.items():
        values.sort()
        print(
            f"  {name:9s} {values[len(values) // 2]:.2f}  (all: {', '.join(f'{v:.2f}' for v in values)})"
        )


def large_model(args, work: Path) -> tuple[str, Path]:
    if args.large:
        return f"{Path(args.large).name}", Path(args.large)
    shipped = load_pretrained(args.checkpoint)
    torch.manual_seed(0)
    config = preset("base", vocab_size=shipped.config.vocab_size, dropout=0.0)
    directory = save_pretrained(MusicTransformer(config), shipped.tokenizer, work / "base-random")
    return "base preset (random init)", directory


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in results["models"]:
        rows = [r for r in model["rows"] if "nll" in r]
        if not rows:
            continue
        ax.scatter([r["tps_b8"] for r in rows], [r["nll"] for r in rows], label=model["model"])
        for r in rows:
            ax.annotate(r["variant"], (r["tps_b8"], r["nll"]), fontsize=7)
    ax.set_xlabel("sampling tokens/s, batch 8")
    ax.set_ylabel("test NLL (nats/token)")
    ax.set_title("NLL vs speed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: dict) -> str:
    lines = [
        f"Run: {results['when']}, torch {results['torch']}, {results['threads']} thread(s)"
        + (", quick" if results["quick"] else "")
        + ".\n",
    ]
    for model in results["models"]:
        lines += [
            f"**{model['model']}** (GPT-2 of the same shape: "
            f"{model['gpt2_tps_b1']:.0f} tokens/s at batch 1, {model['gpt2_tps_b8']:.0f} at 8)\n",
            "| variant | params | size MB | tok/s b1 | × GPT-2 | tok/s b8 | × GPT-2 | test NLL "
            "| token errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in model["rows"]:
            size = f"{r['size_mb']:.2f}" if "size_mb" in r else "—"
            nll = f"{r['nll']:.4f}" if "nll" in r else "—"
            lines.append(
                f"| {r['variant']} | {r['parameters'] / 1e6:.2f}M | {size} | {r['tps_b1']:.0f} "
                f"| {r['vs_gpt2_b1']:.2f} | {r['tps_b8']:.0f} | {r['vs_gpt2_b8']:.2f} | {nll} "
                f"| {r['token_error_rate']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_doc(json_path: Path) -> None:
    results = json.loads(json_path.read_text())
    text = DOC.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")
    print(f"wrote the table of {DOC} from {json_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    parser.add_argument("--large", type=Path, default=None, help="a trained larger checkpoint")
    parser.add_argument("--data", default=None, help="prepared corpus (the model's tokenizer)")
    parser.add_argument("--quick", action="store_true", help="few tokens, one pruned variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--recover", type=int, default=200, help="recovery steps after pruning")
    parser.add_argument("--write-doc", action="store_true", help="fill docs/deploy.md, then stop")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--speed-repeats", type=int, default=0, help="only time fp32/int8 vs GPT-2, N times"
    )
    args = parser.parse_args()
    suffix = "_quick" if args.quick else ""
    json_path = args.json or RESULTS / f"deploy{suffix}.json"
    if args.write_doc:
        write_doc(json_path)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.checkpoint = args.checkpoint or default_checkpoint()
    if args.speed_repeats:
        speed_repeats(args)
        return
    args.prompt, args.new_tokens = (32, 16) if args.quick else (64, 256)
    args.samples, args.sample_tokens = (2, 64) if args.quick else (100, 256)
    args.windows = 8 if args.quick else 128
    if args.quick:
        args.recover = min(args.recover, 5)
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "data": args.data,
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        work = Path(tmp)
        shipped = ("shipped: " + args.checkpoint.name, args.checkpoint)
        models = [shipped] if args.quick else [shipped, large_model(args, work)]
        for i, (name, directory) in enumerate(models):
            (work / str(i)).mkdir()
            results["models"].append(bench_model(name, directory, args, work / str(i)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, json_path.with_suffix(".png"))
    print(table(results))
    print(f"wrote {json_path} and {json_path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
