"""Every registered attention kind, side by side on the same music corpus (issue 15).

    python benchmarks/bench_attention_family.py --data data/prepared_mix --quick   # minutes
    python benchmarks/bench_attention_family.py --data data/prepared_mix --kinds relative,local \
        --resume          # the hours-long full run, a few kinds per sitting, one results.json
    python benchmarks/bench_attention_family.py --write-doc benchmarks/results/attention_family/results.json
    python benchmarks/bench_attention_family.py --data data/prepared_mix --kinds linformer \
        --budget-s 3600 --threads 1 --no-scaling --out runs/long/linformer   # one of a pair run
    python benchmarks/bench_attention_family.py --merge OUT runs/long/*/results.json   # together

Per kind, at the same model shape, the same training windows (same seed) and the same
wall-clock training budget: validation NLL at the budget (and its curve against training time),
training tokens/s, generation tokens/s at batch 1 (KV cache, top-p 0.9), time and peak memory
per token for one forward + backward at batch 1 and L = 1k, 4k, 16k (each in a fresh process,
under a memory cap and a time limit: a length that does not fit is skipped with the reason),
and the token-error rate of N grammar-constrained samples (miditok's error ratio); for
adaptive_span, universal and entmax also what the mechanism learned (spans per head, the mean
depth of a token, the share of exactly-zero weights). Writes
``results.json``, ``nll_vs_time.png`` and ``memory_vs_length.png`` into ``--out``; with
``--write-doc`` the table in ``docs/attention.md`` is rewritten from a results file, keeping
the rows of kinds it lacks. The default ``--out`` is committed: sittings span sessions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import numpy as np
import torch

from musegen.config import preset
from musegen.data.dataset import PreparedDataset, WindowSampler, iter_eval_windows
from musegen.evaluate import token_error_rate
from musegen.generation.rules import grammar_for
from musegen.generation.sampling import Stopping, build_processors, sample
from musegen.metrics import evaluate_windows, token_loss
from musegen.model.attention import kind_names
from musegen.model.attention.adaptive_span import learned_spans
from musegen.model.attention.entmax import attention_sparsity
from musegen.model.transformer import MusicTransformer
from musegen.model.universal import average_depth
from musegen.tokenizer import load_tokenizer, special_id

DOC = Path(__file__).resolve().parents[1] / "docs" / "attention.md"
BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
RESULTS = Path(__file__).resolve().parent / "results" / "attention_family"

MODES = {
    # shape, training budget (s per kind), windows, scaling lengths, samples
    "full": dict(
        shape=dict(d_model=256, n_layers=6, n_heads=8, d_ff=1024, dropout=0.1),
        seq_len=512,
        batch=8,
        budget_s=1200,
        evals=8,
        val_windows=64,
        lengths=(1024, 4096, 16384),
        scale_timeout_s=900,
        samples=100,
        sample_tokens=256,
        gen_tokens=256,
    ),
    "quick": dict(
        shape=dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, dropout=0.0),
        seq_len=128,
        batch=8,
        budget_s=20,
        evals=3,
        val_windows=16,
        lengths=(256, 512, 1024),
        scale_timeout_s=240,  # includes starting a spawned python + torch import
        samples=4,
        sample_tokens=64,
        gen_tokens=64,
    ),
}
MEMORY_CAP_GIB = 24


def model_config(kind: str, mode: dict, vocab: int, max_len: int):
    """The shared shape; kind options scaled to the context (documented in docs/attention.md)."""
    L = mode["seq_len"]
    return preset(
        "small",
        vocab_size=vocab,
        attention=kind,
        max_seq_len=max_len,
        max_relative_distance=max(max_len, L),
        window=L // 4,
        sparse_stride=L // 8,
        linformer_block=min(64, L // 4),
        linformer_rank=8,
        adaptive_span_max=L // 2,
        **mode["shape"],
    )


# --- training at a fixed wall-clock budget ----------------------------------------------------
def train_kind(kind: str, data: PreparedDataset, mode: dict, pad: int, vocab: int) -> dict:
    torch.manual_seed(0)
    model = MusicTransformer(model_config(kind, mode, vocab, mode["seq_len"]))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1, betas=(0.9, 0.95))
    sampler = WindowSampler(data.split("train"), mode["seq_len"], seed=0, pad_id=pad)
    val = np.stack(
        list(iter_eval_windows(data.split("val"), mode["seq_len"], pad, mode["val_windows"]))
    )
    curve, trained, tokens, steps = [], 0.0, 0, 0
    next_eval = 0.0
    while True:
        if trained >= next_eval:
            sums = evaluate_windows(model, val, pad, 8, nullcontext)
            curve.append((trained, float(sums[0] / sums[2])))
            next_eval += mode["budget_s"] / mode["evals"]
            if trained >= mode["budget_s"]:
                break
        t0 = time.perf_counter()
        model.train()
        x = torch.from_numpy(sampler.next_batch(mode["batch"]))
        logits = model(x[:, :-1])
        real = max(1, int((x[:, 1:] != pad).sum()))
        loss = token_loss(logits, x[:, 1:], pad) / real
        aux = model.auxiliary_loss()
        (loss if aux is None else loss + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        trained += time.perf_counter() - t0
        tokens += real
        steps += 1
    return dict(
        model=model,
        mechanism=mechanism_report(kind, model, val),
        val_nll=curve[-1][1],
        curve=curve,
        steps=steps,
        train_tok_s=tokens / max(trained, 1e-9),
        params=model.num_parameters(),
    )


# What a trained mechanism does, on a few validation windows ``ids`` (the kinds not named have
# nothing of their own to report): the learned span of each head, the mean depth a token takes,
# the share of exactly-zero attention weights.
REPORTS = {
    "adaptive_span": lambda model, ids: dict(
        spans=[[round(z, 1) for z in layer] for layer in learned_spans(model)]
    ),
    "universal": lambda model, ids: dict(
        average_depth=average_depth(model, ids), max_depth=model.config.n_layers
    ),
    "entmax": lambda model, ids: dict(zero_share=attention_sparsity(model, ids)),
}


def mechanism_report(kind: str, model, val: np.ndarray) -> dict:
    """:data:`REPORTS` for ``kind`` on 4 validation windows ({} for the other kinds)."""
    if kind not in REPORTS:
        return {}
    model.eval()
    return REPORTS[kind](model, torch.from_numpy(val[:4, :-1]))


def report_line(kind: str, report: dict) -> str | None:
    """One line of the doc for a mechanism report."""
    if "spans" in report:
        layers = ", ".join(
            f"{min(layer):.0f}–{max(layer):.0f} (mean {np.mean(layer):.0f})"
            for layer in report["spans"]
        )
        return f"- {kind}: learned spans in tokens per layer, heads' min–max: {layers}"
    if "average_depth" in report:
        return (
            f"- {kind}: a token takes {report['average_depth']:.2f} of "
            f"{report['max_depth']} steps on average"
        )
    if "zero_share" in report:
        shares = ", ".join(f"{z:.1%}" for z in report["zero_share"])
        return f"- {kind}: exact zeros among the weights a query may give, per layer: {shares}"
    return None


def generation(model, tokenizer, mode: dict) -> dict:
    """Tokens/s at batch 1 (unconstrained), then the error rate of constrained samples."""
    model.eval()
    bos, eos = special_id(tokenizer, "BOS_None"), special_id(tokenizer, "EOS_None")
    pad = special_id(tokenizer, "PAD_None")
    t0 = time.perf_counter()
    out = sample(model, [[bos]], build_processors(top_p=0.9), Stopping(mode["gen_tokens"]), [0])
    gen_tok_s = len(out[0]) / (time.perf_counter() - t0)
    grammar = grammar_for(tokenizer)
    errors = []
    for seed in range(mode["samples"]):
        procs = build_processors(top_p=0.9, grammar=grammar)
        stop = Stopping(mode["sample_tokens"], eos_id=eos, grammar=grammar)
        new = sample(model, [[bos]], procs, stop, [seed], pad_id=pad)[0]
        errors.append(token_error_rate(tokenizer, [bos], new))
    return dict(gen_tok_s=gen_tok_s, token_error_rate=float(np.mean(errors)))


# --- time and memory per token at long lengths, each in a fresh process ----------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _scale_child(kind: str, L: int, mode: dict, vocab: int, queue) -> None:
    try:
        cap = MEMORY_CAP_GIB << 30
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        torch.set_num_threads(torch.get_num_threads())
        model = MusicTransformer(model_config(kind, mode, vocab, L)).train()
        ids = torch.randint(0, vocab, (1, L))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM restarts from the current RSS
        base = _status_kb("VmRSS")
        t0 = time.perf_counter()
        loss = model(ids).float().logsumexp(-1).mean()
        loss.backward()
        seconds = time.perf_counter() - t0
        queue.put(dict(s_per_tok=seconds / L, kib_per_tok=(_status_kb("VmHWM") - base) / L))
    except (MemoryError, RuntimeError) as exc:
        queue.put(dict(skipped=f"does not fit under {MEMORY_CAP_GIB} GiB ({type(exc).__name__})"))
    except ValueError as exc:
        queue.put(dict(skipped=str(exc)[:120]))


def scaling(kind: str, mode: dict, vocab: int) -> dict:
    out = {}
    ctx = mp.get_context("spawn")
    for L in mode["lengths"]:
        queue = ctx.Queue()
        proc = ctx.Process(target=_scale_child, args=(kind, L, mode, vocab, queue))
        proc.start()
        proc.join(mode["scale_timeout_s"])
        if proc.is_alive():
            proc.kill()
            proc.join()
            out[L] = dict(skipped=f"over {mode['scale_timeout_s']} s")
        elif not queue.empty():
            out[L] = queue.get()
        elif proc.exitcode == -9:  # SIGKILL before torch saw a failed allocation
            out[L] = dict(skipped="killed by the kernel: out of memory")
        else:
            out[L] = dict(skipped=f"exit {proc.exitcode}")
    return out


# --- report ---------------------------------------------------------------------------------
def header(lengths: list[int]) -> str:
    """The table's header row: its columns depend on the measured lengths."""
    head = ["kind", "val NLL", "train tok/s", "gen tok/s", "token err"]
    head += [f"ms/tok @{L}" for L in lengths] + [f"KiB/tok @{L}" for L in lengths]
    return "| " + " | ".join(head) + " |"


def table(results: dict, earlier: dict | None = None) -> str:
    """The doc's block: settings line, one row per kind, notes. ``earlier``: rows kept from the
    doc for kinds this results file lacks (see :func:`earlier_sitting`)."""
    earlier = earlier or {"sittings": {}, "kinds": {}, "notes": []}
    lengths = results["lengths"]
    head = header(lengths)
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for kind, r in results["kinds"].items():
        cells = [kind, f"{r['val_nll']:.3f}", f"{r['train_tok_s']:.0f}", f"{r['gen_tok_s']:.1f}"]
        cells.append(f"{r['token_error_rate']:.3f}")
        for key, scale in (("s_per_tok", 1e3), ("kib_per_tok", 1.0)):
            for L in lengths:
                m = r["scaling"].get(str(L), {})  # {}: lengths still pending
                cells.append(f"{m[key] * scale:.2f}" if key in m else "skip")
        rows.append("| " + " | ".join(cells) + " |")
    rows += earlier["kinds"].values()
    notes = [
        f"- {kind} @{L}: {m['skipped']}"
        for kind, r in results["kinds"].items()
        for L, m in r["scaling"].items()
        if "skipped" in m
    ]
    notes += [
        f"- {kind}: lengths not measured yet (`--resume --kinds {kind}` measures them)"
        for kind, r in results["kinds"].items()
        if r.get("lengths_pending")
    ]
    meta = (
        f"Mode `{results['mode']}`, {', '.join(results.get('dates', [results['date']]))}, "
        f"{results['machine']}, torch "
        f"{results['torch']}, {results['threads']} threads; budget {results['budget_s']} s of "
        f"training per kind at seq_len {results['seq_len']}, data `{results['data']}`."
    )
    notes += [
        line
        for kind, r in results["kinds"].items()
        if (line := report_line(kind, r.get("mechanism", {})))
    ]
    notes += earlier["notes"]
    left = [k for k in kind_names() if k not in results["kinds"] and k not in earlier["kinds"]]
    if left:  # a run in sittings, written before its last one
        notes.append(f"- not measured yet: {', '.join(left)}")
    for then, kinds in earlier["sittings"].items():
        meta += f" Rows of {', '.join(kinds)}: an earlier sitting. {then}"
    return "\n".join([meta, "", *rows, "", *notes])


def row_cells(row: str) -> list[str]:
    """The cells of one table row, stripped (the first is the kind)."""
    return [c.strip() for c in row.strip().strip("|").split("|")]


def table_memory(rows: dict[str, str], lengths: list[int]) -> dict[str, list[tuple[int, float]]]:
    """The KiB/tok cells of the doc's rows kept from an earlier sitting, per kind: the memory
    plot shows every kind even when that sitting's results file (and its curves) are gone."""
    out = {}
    for kind, row in rows.items():
        kib = row_cells(row)[5 + len(lengths) : 5 + 2 * len(lengths)]
        out[kind] = [(L, float(c)) for L, c in zip(lengths, kib, strict=True) if c != "skip"]
    return out


def memory_points(results: dict, earlier: dict | None) -> dict[str, list[tuple[int, float]]]:
    """Peak KiB/tok per length and kind: measured in ``results``, else from ``earlier``'s rows."""
    points = {
        kind: [(int(L), m["kib_per_tok"]) for L, m in r["scaling"].items() if "kib_per_tok" in m]
        for kind, r in results["kinds"].items()
    }
    if earlier and earlier["kinds"]:
        points.update(table_memory(earlier["kinds"], results["lengths"]))
    return points


# 11 kinds: matplotlib's default cycle has 10 colours, so two kinds would share one
COLORS = [*"bgrcmyk", "tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:olive"]


def plots(results: dict, out: Path, earlier: dict | None = None) -> None:
    """NLL against training time (kinds with curves) and peak memory against length (also the
    ``earlier`` rows of :func:`earlier_sitting`, from their table cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=COLORS)
    for kind, r in results["kinds"].items():
        t, nll = zip(*r["curve"], strict=True)
        ax.plot(t, nll, marker="o", label=kind)
    ax.set(xlabel="training wall-clock (s)", ylabel="validation NLL", title="NLL vs time")
    # The untrained first point would flatten the rest: the axis starts at the second ones.
    curves = [r["curve"] for r in results["kinds"].values()]
    if curves and all(len(c) > 2 for c in curves):
        ax.set_ylim(top=max(c[1][1] for c in curves) + 0.1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "nll_vs_time.png", dpi=120)
    points = memory_points(results, earlier)
    if not any(points.values()):  # a run without the lengths (--no-scaling)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=COLORS)
    for kind, pts in points.items():
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=kind)
    # log y: feedback's 5 MiB per token would flatten every other kind
    ax.set(xscale="log", yscale="log", xlabel="sequence length")
    ax.set(ylabel="peak KiB per token (fwd+bwd)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "memory_vs_length.png", dpi=120)


def earlier_sitting(block: str, results: dict) -> dict:
    """The doc's rows and notes of kinds that ``results`` lacks, with their sittings' settings.

    A sitting's ``results.json`` can be lost (a fresh checkout); its figures in the doc stay,
    marked as such, if it ran with the same settings (mode, budget, sequence length, lengths).
    The settings line reads ``META_NOW Rows of k1, k2: an earlier sitting. META_THEN …``: each
    kept row keeps the settings of the sitting that measured it.
    """
    lines = block.strip().splitlines()
    line = next((line for line in lines if line.startswith("Mode ")), "")
    first, *older = line.split(" Rows of ")
    sitting_of: dict[str, str] = {}
    for part in older:
        kinds, _, meta = part.partition(": an earlier sitting. ")
        sitting_of.update(dict.fromkeys(kinds.split(", "), meta))
    rows = {
        row_cells(line)[0]: line
        for line in lines
        if line.startswith("| ") and not line.startswith("| kind ")
    }
    kept = {k: row for k, row in rows.items() if k not in results["kinds"]}
    sittings: dict[str, list[str]] = {}
    for kind in kept:
        sittings.setdefault(sitting_of.get(kind, first), []).append(kind)
    same_lengths = header(results["lengths"]) in lines
    budget = f"budget {results['budget_s']} s of training per kind at seq_len {results['seq_len']}"
    for meta in sittings:
        same = [meta.startswith(f"Mode `{results['mode']}`"), budget in meta, same_lengths]
        if not all(same):
            raise SystemExit(f"the doc's table is of another run ({meta[:60]}…): not merged")
    notes = [
        line
        for line in lines
        if line.startswith("- ") and line[2:].split(" ")[0].rstrip(":") in kept
    ]
    return {"sittings": sittings, "kinds": kept, "notes": notes}


def write_doc(results_path: Path) -> None:
    """Rewrite the doc's table from ``results_path``, keeping earlier sittings' rows."""
    results = json.loads(Path(results_path).read_text())
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    earlier = earlier_sitting(text[start:end], results)
    block = table(results, earlier)
    DOC.write_text(text[:start] + "\n" + block + "\n" + text[end:])
    plots(results, Path(results_path).parent, earlier)
    print(f"rewrote the table in {DOC} and the plots beside {results_path}")


SAME_RUN = ("mode", "machine", "torch", "threads", "budget_s", "seq_len", "data", "lengths")


def differing(other: dict, results: dict) -> list[str]:
    """The :data:`SAME_RUN` settings in which ``other`` differs from ``results``."""
    return [k for k in SAME_RUN if other.get(k) != results[k]]


def kept_kinds(path: Path, results: dict) -> dict:
    """The kinds an earlier sitting of the same run measured (nothing if the run differs)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    differs = differing(earlier, results)
    if differs:
        raise SystemExit(
            f"--resume: {path} is another run ({', '.join(differs)} differ); "
            "choose another --out or run without --resume"
        )
    results["dates"] = sorted({*earlier.get("dates", [earlier["date"]]), results["date"]})
    return earlier["kinds"]


def merge(out: Path, paths: list[Path]) -> dict:
    """One results file (and its plots) from sittings of the same run made in parallel, e.g. two
    kinds trained side by side with one thread each for the longer comparison."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(parts[0], kinds={})
    for path, part in zip(paths, parts, strict=True):
        differs = differing(part, merged)
        if differs:
            raise SystemExit(f"--merge: {path} is another run ({', '.join(differs)} differ)")
        merged["kinds"].update(part["kinds"])
    merged["dates"] = sorted({d for part in parts for d in part.get("dates", [part["date"]])})
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
    plots(merged, out)
    return merged


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a prepared dataset (musegen prepare)")
    ap.add_argument(
        "--out",
        type=Path,
        help="folder for results.json and plots (default: benchmarks/results/attention_family, "
        "committed; with --quick: attention_family_quick beside it, ignored by git)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny shape and budget (minutes)")
    ap.add_argument("--kinds", help="comma-separated subset (default: every registered kind)")
    ap.add_argument("--budget-s", type=float, help="override the training budget per kind")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--write-doc", metavar="RESULTS", help="rewrite docs/attention.md's table")
    ap.add_argument(
        "--no-scaling",
        action="store_true",
        help="skip the forward+backward lengths (for the longer training comparison)",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar=("OUT", "RESULTS"),
        help="write OUT/results.json and its plots from results files of the same run",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the kinds already in OUT/results.json (same mode, budget, data and lengths) "
        "and run the others: the full run takes hours, so it may span several sittings",
    )
    args = ap.parse_args(argv)
    if args.write_doc:
        return write_doc(Path(args.write_doc))
    if args.merge:
        if len(args.merge) < 2:
            ap.error("--merge needs OUT and at least one results file")
        return print(table(merge(args.merge[0], args.merge[1:])))
    if not args.data:
        ap.error("--data is required (or --write-doc RESULTS)")
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = dict(MODES["quick" if args.quick else "full"])
    if args.budget_s:
        mode["budget_s"] = args.budget_s
    if args.no_scaling:
        mode["lengths"] = ()
    data = PreparedDataset.open(args.data)
    tokenizer = load_tokenizer(data.tokenizer_path)
    pad, vocab = special_id(tokenizer, "PAD_None"), len(tokenizer)
    kinds = args.kinds.split(",") if args.kinds else list(kind_names())
    out = args.out or (RESULTS.with_name("attention_family_quick") if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(
        mode="quick" if args.quick else "full",
        date=date.today().isoformat(),
        machine=f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        budget_s=mode["budget_s"],
        seq_len=mode["seq_len"],
        data=str(args.data),
        lengths=list(mode["lengths"]),
        kinds={},
    )
    results["kinds"] = kept_kinds(out / "results.json", results) if args.resume else {}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    for kind in kinds:
        done = results["kinds"].get(kind)
        if done and done.get("lengths_pending"):
            print(f"[{kind}] training kept from the earlier sitting", file=sys.stderr, flush=True)
            r = done
        elif done and (kind not in REPORTS or "mechanism" in done):
            print(f"[{kind}] kept from the earlier sitting", file=sys.stderr, flush=True)
            continue
        else:
            if done:  # measured before the bench reported what the mechanism learned
                print(f"[{kind}] has no mechanism report yet: measured again", file=sys.stderr)
            print(f"[{kind}] training for {mode['budget_s']} s", file=sys.stderr, flush=True)
            r = train_kind(kind, data, mode, pad, vocab)
            r.update(generation(r.pop("model"), tokenizer, mode))
            # Saved before the lengths (the slow part): a sitting killed there keeps the rest.
            r["scaling"] = {}
            if mode["lengths"]:
                r["lengths_pending"] = True
            results["kinds"][kind] = r
            save()
            print(f"[{kind}] val NLL {r['val_nll']:.3f}", file=sys.stderr, flush=True)
        if r.pop("lengths_pending", False):
            r["scaling"] = {str(L): m for L, m in scaling(kind, mode, vocab).items()}
            save()
    plots(results, out)
    print(table(results))


if __name__ == "__main__":
    main()
