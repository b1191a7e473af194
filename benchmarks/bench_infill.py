"""Does infilling use the right side? Held-out pieces, bars 9–12 regenerated, same checkpoint.

    python benchmarks/bench_infill.py --data data/prepared_mix [--pieces 12] [--groups full_band,pop_piano]

1. NLL of the span's tokens (the fill-in-the-middle target) given both sides vs given the left
   side only (the same layout with an empty suffix): lower with both sides means the model
   reads the music after the gap.
2. Seam statistics against the real bars 9–12: pitch-class histogram distance and note-density
   ratio of (a) the infilled bars and (b) a left-only continuation of the same 4 bars, averaged
   over ``--samples`` seeds per piece (one sample's density scatters too widely to compare).
3. With ``--training-layout N``: the same NLL comparison on N validation windows rearranged
   exactly as in training (random span, suffix within the training budget): if the suffix does
   not help even there, the model did not learn to read it (a training matter, not a layout
   mismatch between training and ``Pipeline.infill``). Then again with the left side cut to
   0–32 tokens: whether the model reads the right side at all when the left tells little.
4. With ``--suffix-tokens 32,64,…``: the span's NLL with right sides of those lengths, each
   also against the left side alone *seen as far back as with that suffix*. A model with a
   bounded reach (local attention) loses as much of the left side as the suffix takes, so the
   plain left-only figure mixes "reads the right side" with "sees more of the left"; the
   same-view figure isolates the first, and the sweep shows which budget ``Pipeline.infill``
   should keep (tune with ``--split val``, report on test).
5. With ``--guidance 0.5,1,…``: the span's NLL under right-side guidance at those scales
   (logits ``both + g * (both - left only)``): whether amplifying what the right side changes
   fits the real bars better than the plain both-sides prediction (g = 0).
6. With ``--candidates K``: the seam statistics again for the best of K infills per sample,
   chosen as ``Pipeline.infill(candidates=K)`` chooses (:mod:`musegen.generation.seam`: the
   closest in key and density to the 4 bars on each side); the K draws also count as plain
   samples, so one run gives both. The control: K left-only continuations per sample, the
   best by the 4 bars *before* the span alone, shows how much of the gain is the choice
   itself and how much the right side.
Prints per piece and the medians; writes --json if given (``--summarize JSON`` prints the
summary of saved rows again, e.g. after a change to what it reports).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musegen import metrics
from musegen.data.dataset import PreparedDataset, WindowSampler
from musegen.data.infill import (
    InfillRearranger,
    InfillVocab,
    layout,
    split_span,
    suffix_budget,
)
from musegen.generation.seam import SeamJudge, best_of
from musegen.generation.settings import (
    BY_NAME,
    DEFAULT_TOP_P,
    GUIDANCE,
    add_guidance_overrides,
    guidance_overrides,
)
from musegen.model.attention import reach_of
from musegen.pipeline import Pipeline
from musegen.tokenizer import decode

SPAN = (9, 12)  # 1-based, inclusive


def target_logits(model, prompt: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """The logits that predict each ``target`` token after ``prompt``: (len(target), vocab)."""
    ids = torch.as_tensor(np.concatenate([prompt, target]), dtype=torch.long)[None]
    with torch.no_grad():
        out = model(ids[:, :-1])
        logits = out[0] if isinstance(out, tuple) else out
    return logits[0, len(prompt) - 1 :].float()


def token_losses(model, prompt: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The NLL of each ``target`` token after ``prompt``."""
    logits = target_logits(model, prompt, target)
    return F.cross_entropy(logits, torch.as_tensor(target), reduction="none").numpy()


def logits_nll(logits: torch.Tensor, target: np.ndarray) -> float:
    """The mean NLL of ``target`` under ``logits`` (one row per target token)."""
    return float(F.cross_entropy(logits, torch.as_tensor(target)))


def guided_nll(both: torch.Tensor, left: torch.Tensor, target: np.ndarray, scale: float) -> float:
    """The span's NLL under right-side guidance: logits ``both + scale * (both - left)``, as
    classifier-free guidance amplifies a condition (here the right side) by contrast with the
    unconditioned stream. Scale 0 is the plain both-sides NLL."""
    return logits_nll(both + scale * (both - left), target)


def target_nll(model, prompt: np.ndarray, target: np.ndarray) -> float:
    return logits_nll(target_logits(model, prompt, target), target)


def suffix_sweep(
    model, reach, prefix, given, suffix, target, vocab, budgets, pinned: bool = False
) -> dict:
    """Per right-side budget: the span's NLL with that much suffix, and with no suffix but the
    left side cut to what the target's first token sees with it (same left view; the pinned
    layout keeps the whole left side in view)."""
    out = {}
    for b in budgets:
        right = suffix[:b]
        prompt = layout(prefix, given, right, vocab, pinned)
        both = target_nll(model, prompt, target)
        between = len(prompt) - len(prefix)  # sentinels, given and suffix: before the target
        seen = len(prefix) if reach is None or pinned else max(0, reach - between)
        view = prefix[len(prefix) - min(seen, len(prefix)) :]
        same = target_nll(model, layout(view, given, suffix[:0], vocab, pinned), target)
        out[str(b)] = {"both_sides": both, "left_same_view": same}
    return out


HEAD = 64  # target tokens counted as the span's head: those that see the most of the suffix


def training_layout(pipe, dataset: PreparedDataset, windows: int, prefix_drop: float = 0) -> dict:
    """Target NLL with and without the suffix on validation windows rearranged as in training,
    also per token type (Pitch, Duration, …: which part of the music the right side informs)
    and for the target's first :data:`HEAD` tokens. ``prefix_drop=1`` cuts every example's
    left side to 0–32 tokens (``--infill-prefix-drop``): does the model read the right side
    at all when the left tells little?"""
    tok = pipe.tokenizer
    kind = {i: name.split("_")[0] for name, i in tok.vocab.items()}
    pad = tok.vocab["PAD_None"]
    budget = suffix_budget(reach_of(pipe.config))
    pinned = pipe.config.pin_tokens is not None
    rearranger = InfillRearranger(
        tok, 1.0, suffix_tokens=budget, prefix_drop=prefix_drop, pinned=pinned
    )
    v = rearranger.vocab
    sampler = WindowSampler(dataset.split("val"), pipe.config.max_seq_len, seed=1, pad_id=pad)
    rng = np.random.default_rng(0)
    both, left, by_type, head_both, head_left = [], [], {}, [], []
    while len(both) < windows:
        window = sampler.next_batch(1)[0]
        example = rearranger.apply(window[window != pad], rng)
        if v.fill not in example:
            continue  # too few bars to rearrange
        s, f = (int(np.flatnonzero(example == t)[0]) for t in (v.suffix, v.fill))
        prompt, target = example[: f + 1], example[f + 1 :]
        close = int(np.flatnonzero(example == v.end)[0]) if pinned else f  # ends the suffix
        with_suffix = token_losses(pipe.model, prompt, target)
        without = token_losses(
            pipe.model, np.concatenate([prompt[: s + 1], prompt[close:]]), target
        )
        both.append(float(with_suffix.mean()))
        left.append(float(without.mean()))
        head_both.append(float(with_suffix[:HEAD].mean()))
        head_left.append(float(without[:HEAD].mean()))
        for token, a, b in zip(target.tolist(), with_suffix, without, strict=True):
            sums = by_type.setdefault(kind.get(token, "?"), [0, 0.0, 0.0])
            sums[0], sums[1], sums[2] = sums[0] + 1, sums[1] + float(a), sums[2] + float(b)
    med = statistics.median
    return {
        "windows": windows,
        "prefix_drop": prefix_drop,
        "nll_both_sides": med(both),
        "nll_left_only": med(left),
        "both_lower_share": float(np.mean(np.array(both) < np.array(left))),
        "head_nll_both_sides": med(head_both),
        "head_nll_left_only": med(head_left),
        "by_token_type": {
            name: {"tokens": n, "nll_both_sides": a / n, "nll_left_only": b / n}
            for name, (n, a, b) in sorted(by_type.items(), key=lambda item: -item[1][0])
        },
    }


def real_bars(score, a: int, b: int):
    ticks = metrics.bar_length(score)
    return score.clip((a - 1) * ticks, b * ticks, clip_end=False).shift_time(-(a - 1) * ticks)


def seam(samples: list, real) -> dict:
    """Mean pitch-class distance and mean density error (|log ratio|) of samples to the real bars."""
    hist_real = metrics.pitch_class_histogram(real)
    dists = [
        metrics.histogram_distance(metrics.pitch_class_histogram(s), hist_real) for s in samples
    ]
    ratios = [s.note_num() / max(real.note_num(), 1) for s in samples]
    return {
        "pc_distance": float(np.mean(dists)),
        "density_err": float(np.mean([abs(np.log(max(r, 1e-3))) for r in ratios])),
        "density_ratios": ratios,
    }


def summarize(rows: list[dict], split: str, right: int, budgets: list[int]) -> dict:
    """Medians over pieces, and how often the right side lowers the NLL."""
    if not rows:  # --pieces 0: the training-layout checks only
        return {"split": split, "pieces": 0, "suffix_tokens": right}
    med = statistics.median
    summary = {
        "split": split,
        "pieces": len(rows),
        "suffix_tokens": right,
        "nll_both_sides": med(r["nll_both_sides"] for r in rows),
        "nll_left_only": med(r["nll_left_only"] for r in rows),
        "both_lower_share": sum(r["nll_both_sides"] < r["nll_left_only"] for r in rows) / len(rows),
    }
    if budgets:
        summary["by_suffix_budget"] = {}
        left = np.array([r["nll_left_only"] for r in rows])
        for b in map(str, budgets):
            both = np.array([r["by_suffix_budget"][b]["both_sides"] for r in rows])
            same = np.array([r["by_suffix_budget"][b]["left_same_view"] for r in rows])
            summary["by_suffix_budget"][b] = {
                "nll_both_sides": float(np.median(both)),
                "nll_left_same_view": float(np.median(same)),
                "lower_than_same_view_share": float(np.mean(both < same)),
                "lower_than_left_only_share": float(np.mean(both < left)),
            }
    if "guided" in rows[0]:
        summary["guided"] = {
            g: {
                "nll": med(r["guided"][g] for r in rows),
                "lower_than_both_share": float(
                    np.mean([r["guided"][g] < r["nll_both_sides"] for r in rows])
                ),
            }
            for g in rows[0]["guided"]
        }
    for kind, against in (
        ("infill", "left_only"),
        ("infill_best", "left_only"),
        ("infill_best", "left_only_best"),
    ):
        if kind in rows[0]:
            summary.update(seam_summary(rows, kind, against))
    return summary


def seam_summary(rows: list[dict], kind: str, against: str) -> dict:
    """Medians of the seam statistics of ``kind`` and ``against`` (infill, infill_best,
    left_only, left_only_best), and how often ``kind`` is the closer of the two."""
    med = statistics.median
    out = {}
    groups = np.array([r["group"] for r in rows])
    for stat in ("pc_distance", "density_err"):
        mine = np.array([r[kind][stat] for r in rows])
        other = np.array([r[against][stat] for r in rows])
        out[f"{stat}_{kind}"] = float(np.median(mine))
        out[f"{stat}_{against}"] = float(np.median(other))
        out[f"{stat}_{kind}_mean"] = float(mine.mean())
        out[f"{stat}_{against}_mean"] = float(other.mean())
        out[f"{stat}_{kind}_closer_than_{against}"] = float(np.mean(mine < other))
        out[f"{stat}_{kind}_closer_than_{against}_by_group"] = {
            g: float(np.mean(mine[groups == g] < other[groups == g])) for g in sorted(set(groups))
        }
    for name in (kind, against):
        out[f"density_ratio_{name}"] = med(x for r in rows for x in r[name]["density_ratios"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="the prepared dataset (musegen prepare)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument(
        "--pieces", type=int, default=12, help="per group (0: only the --training-layout checks)"
    )
    ap.add_argument("--groups", default="full_band,pop_piano,classical,folk")
    ap.add_argument("--context", type=int, default=700, help="most tokens of each side")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument(
        "--suffix-tokens",
        default="",
        metavar="N,N,…",
        help="right-side budgets to compare by NLL (see 4. above)",
    )
    ap.add_argument(
        "--nll-only", action="store_true", help="skip the sampled seam statistics (faster)"
    )
    ap.add_argument(
        "--guidance",
        default="",
        metavar="G,G,…",
        help="right-side guidance scales to compare by NLL (see 5. above)",
    )
    ap.add_argument(
        "--samples", type=int, default=1, help="seeds per piece for the seam statistics"
    )
    ap.add_argument(
        "--candidates",
        type=int,
        default=1,
        metavar="K",
        help="also the seam statistics of the best of K infills per sample, chosen as "
        "Pipeline.infill(candidates=K) does (the K draws are scored as plain samples too)",
    )
    add_guidance_overrides(ap)  # of the sampled infills and continuations
    ap.add_argument(
        "--top-p", type=float, default=DEFAULT_TOP_P, help="of the sampled infills and "
        "continuations (default: the app's, %(default)s)",
    )  # fmt: skip
    ap.add_argument(
        "--training-layout",
        type=int,
        default=0,
        metavar="N",
        help="also compare on N validation windows rearranged as in training",
    )
    ap.add_argument(
        "--summarize",
        type=Path,
        default=None,
        metavar="JSON",
        help="only print the summary of the rows a --json run saved (after a change to it)",
    )
    args = ap.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        old = saved["summary"]
        budgets = [int(b) for b in old.get("by_suffix_budget", {})]
        print(
            json.dumps(
                summarize(saved["rows"], old["split"], old["suffix_tokens"], budgets), indent=1
            )
        )
        return
    if args.data is None:
        ap.error("--data is required (except with --summarize)")
    if args.samples < 1:
        ap.error(f"--samples must be at least 1, got {args.samples}")
    if args.candidates < 1:
        ap.error(f"--candidates must be at least 1, got {args.candidates}")
    pipe = Pipeline.from_pretrained(args.checkpoint)
    model, tok = pipe.model, pipe.tokenizer
    vocab = InfillVocab.from_tokenizer(tok)
    # The right side as training and Pipeline.infill keep it (bounded by the attention's reach).
    reach = reach_of(pipe.config)
    right = min(args.context, suffix_budget(reach) or args.context)
    pinned = pipe.config.pin_tokens is not None  # the pinned layout (data/infill.py)
    budgets = [int(b) for b in args.suffix_tokens.split(",") if b.strip()]
    scales = [float(g) for g in args.guidance.split(",") if g.strip()]
    dataset = PreparedDataset.open(args.data)
    split = dataset.split(args.split)
    rows = []
    for group, docs in dataset.documents_by_group(args.split).items():
        if group not in args.groups.split(","):
            continue
        taken = 0
        for d in docs:
            doc = np.asarray(split.document(d), np.int64)[1:-1]  # no BOS/EOS
            bars = np.flatnonzero(doc == vocab.bar)
            if len(bars) < SPAN[1] + 4 or taken >= args.pieces:
                continue
            start, stop = int(bars[SPAN[0] - 1]), int(bars[SPAN[1]])
            given, target = split_span(doc[start:stop], vocab, None)
            prefix, suffix = doc[:start][-args.context :], doc[stop:][:right]
            logits_both = target_logits(model, layout(prefix, given, suffix, vocab, pinned), target)
            logits_left = target_logits(
                model, layout(prefix, given, suffix[:0], vocab, pinned), target
            )
            both, left = logits_nll(logits_both, target), logits_nll(logits_left, target)
            row = {"group": group, "doc": int(d), "nll_both_sides": both, "nll_left_only": left}
            line = f"{group} doc {d}: NLL both {both:.3f} left {left:.3f}"
            if scales:
                row["guided"] = {
                    str(g): guided_nll(logits_both, logits_left, target, g) for g in scales
                }
                line += " | guided " + " ".join(f"@{g} {v:.3f}" for g, v in row["guided"].items())
            if budgets:
                sweep = suffix_sweep(
                    model, reach, prefix, given, doc[stop:], target, vocab, budgets, pinned
                )
                row["by_suffix_budget"] = sweep
                line += " | " + " ".join(
                    f"@{b} {v['both_sides']:.3f}/{v['left_same_view']:.3f}"
                    for b, v in sweep.items()
                )
            if not args.nll_only:
                score = decode(tok, doc[: int(bars[min(len(bars) - 1, SPAN[1] + 4)])].tolist())
                real = real_bars(score, *SPAN)
                seed, n = taken * args.samples, args.samples
                k = args.candidates
                guide = {**guidance_overrides(args), "top_p": args.top_p}
                # The draws Pipeline.infill(candidates=k) makes (seeds seed + j*k + i), each
                # kept as a plain sample too, and the best of each k as it chooses them.
                drawn = pipe.infill(
                    score, bars=SPAN, seed=seed * k, num_samples=n * k, candidates=1, **guide
                )
                prompt8 = score.clip(0, int(drawn[0].prompt_end_tick), clip_end=False)
                conts = pipe.continue_midi(
                    prompt8, bars=SPAN[1] - SPAN[0] + 1, seed=seed * k, num_samples=n * k, **guide
                )
                plain = [c.continuation for c in conts[::k]]  # one left-only sample per j
                row["infill"] = seam([f.continuation for f in drawn], real)
                row["left_only"] = seam(plain, real)
                line += (
                    f" | pc dist infill {row['infill']['pc_distance']:.3f} left "
                    f"{row['left_only']['pc_distance']:.3f} | density err infill "
                    f"{row['infill']['density_err']:.2f} left {row['left_only']['density_err']:.2f}"
                )
                if k > 1:
                    both = SeamJudge(score, SPAN, None)
                    pick = best_of([both.distance(f.continuation) for f in drawn], k)
                    row["infill_best"] = seam([drawn[i].continuation for i in pick], real)
                    # The control: left-only continuations, best of k by the bars before alone.
                    left = SeamJudge(score, SPAN, None, right=False)
                    pick = best_of([left.distance(c.continuation) for c in conts], k)
                    row["left_only_best"] = seam([conts[i].continuation for i in pick], real)
                    line += (
                        f" | best of {k}: infill pc {row['infill_best']['pc_distance']:.3f} "
                        f"density {row['infill_best']['density_err']:.2f}, left-only pc "
                        f"{row['left_only_best']['pc_distance']:.3f} density "
                        f"{row['left_only_best']['density_err']:.2f}"
                    )
            rows.append(row)
            taken += 1
            print(line, flush=True)
    summary = summarize(rows, args.split, right, budgets)
    summary.update({name: BY_NAME[name].default for name in GUIDANCE}, **guidance_overrides(args))
    summary["top_p"] = args.top_p
    if args.training_layout:
        summary["training_layout"] = training_layout(pipe, dataset, args.training_layout)
        summary["training_layout_no_left"] = training_layout(
            pipe, dataset, args.training_layout, prefix_drop=1.0
        )
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
